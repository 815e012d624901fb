"""Real speech shipped by Debian packages: discovery, decoding and clean-up.

The separation recipes need *some* real speech that a clean machine can
install without a download from outside the package registries. Debian ships
telephone prompts and game dialogue recorded by real voice actors:

======================================  =========  ==========================
package                                 audio      voices
======================================  =========  ==========================
asterisk-core-sounds-{en,fr,it,ru}-wav  8 kHz WAV  one per language
asterisk-core-sounds-{en,fr,it,ru}-g722 16 kHz     the same four voices,
                                        G.722      genuinely wide-band
asterisk-prompt-it-menardi-wav          8 kHz WAV  one Italian voice
fillets-ng-data-cs                      22.05 kHz  the game's two lead fish
                                        Ogg        (``m``, ``v``) and ~40
                                                   minor characters (Czech)
======================================  =========  ==========================

This module knows where each package puts its files, lists the prompts of
every voice that exists at a given sample rate (:func:`find_voices`), decodes
WAV, Ogg Vorbis and raw G.722 (:func:`read_audio`, PyAV only for G.722),
resamples down (never up: 8 kHz prompts are not 16 kHz speech), trims
leading and trailing silence, and flags clipped clips. When packages are
missing, :func:`require_voices` raises a ``FileNotFoundError`` holding the
exact ``apt-get`` line that installs them (:func:`apt_install_command`).
Licences and credits are in ``DATA_NOTE.md``.

Voice identifiers: the Asterisk folder names (``en_US_f_Allison``,
``fr_CA_f_June``, ``it_IT_m_Carlo``, ``ru_RU_f_IvrvoiceRU``,
``it_IT_f_Menardi``), ``fillets_m`` (small fish) and ``fillets_v`` (big fish)
for the game's leads, and ``fillets_<level>_<code>`` for a minor character
(level name without its trailing digits, so ``viking1`` and ``viking2`` share
their Vikings).

Shape legend: T = samples of one mono clip.

Authors
 * speechbrain_s4 contributors
"""

import os
import re
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

#: Where the asterisk packages install their prompts (one folder per voice).
ASTERISK_ROOT = "/usr/share/asterisk/sounds"
#: Where fillets-ng-data-cs installs the dialogue (``<level>/cs/*.ogg``).
FILLETS_ROOT = "/usr/share/games/fillets-ng/sound"

#: Asterisk prompts that are tones or animal noises rather than speech.
NON_SPEECH_PROMPTS = frozenset(
    {"beep", "beeperr", "ascending-2tone", "descending-2tone", "tt-monkeys"}
)
#: Asterisk sub-folders without speech.
NON_SPEECH_FOLDERS = frozenset({"silence"})

#: The two lead characters of Fish Fillets (small fish, big fish).
FILLETS_LEADS = ("m", "v")


@dataclass(frozen=True)
class VoicePackage:
    """One Debian package of recorded speech.

    Arguments
    ---------
    name : str
        Debian package name.
    voices : tuple of str
        Voice identifiers it provides (empty for fillets, whose voices are
        discovered from the file names).
    extension : str
        Extension of its audio files (``.wav``, ``.g722``, ``.ogg``).
    native_rate : int
        Lowest sample rate of its files, in Hz.
    """

    name: str
    voices: tuple
    extension: str
    native_rate: int


@dataclass(frozen=True)
class VoiceInfo:
    """What is known about one Asterisk voice.

    Arguments
    ---------
    language : str
        BCP 47 tag of the language spoken.
    gender : str
        ``"female"`` or ``"male"``, as the package names the voice.
    speaker : str
        Who recorded it, as the package's copyright file credits.
    licence : str
        SPDX-like licence name from the copyright file.
    """

    language: str
    gender: str
    speaker: str
    licence: str


#: Language code of the asterisk-core-sounds packages -> their one voice.
ASTERISK_CORE_VOICES = {
    "en": "en_US_f_Allison",
    "fr": "fr_CA_f_June",
    "it": "it_IT_m_Carlo",
    "ru": "ru_RU_f_IvrvoiceRU",
}

#: Every package this module reads, in the order ``apt-get`` is told.
PACKAGES = (
    *(
        VoicePackage(f"asterisk-core-sounds-{code}-wav", (voice,), ".wav", 8000)
        for code, voice in ASTERISK_CORE_VOICES.items()
    ),
    VoicePackage(
        "asterisk-prompt-it-menardi-wav", ("it_IT_f_Menardi",), ".wav", 8000
    ),
    *(
        VoicePackage(
            f"asterisk-core-sounds-{code}-g722", (voice,), ".g722", 16000
        )
        for code, voice in ASTERISK_CORE_VOICES.items()
    ),
    VoicePackage("fillets-ng-data-cs", (), ".ogg", 22050),
)

#: Language, gender, speaker and licence of each Asterisk voice.
ASTERISK_VOICES = {
    "en_US_f_Allison": VoiceInfo(
        "en-US", "female", "Allison Smith", "CC-BY-SA-3.0"
    ),
    "fr_CA_f_June": VoiceInfo(
        "fr-CA", "female", "June Wallack", "CC-BY-SA-3.0"
    ),
    "it_IT_m_Carlo": VoiceInfo("it-IT", "male", "Carlo Flora", "CC-BY-3.0"),
    "ru_RU_f_IvrvoiceRU": VoiceInfo(
        "ru-RU", "female", "ivrvoice.ru (Maxim Topal)", "CC-BY-3.0"
    ),
    "it_IT_f_Menardi": VoiceInfo(
        "it-IT", "female", "Marco Menardi and Paola Dal Zot", "CC-BY-SA-3.0-IT"
    ),
}


#: The fillets-ng leads. Gender is not stated by the package; it is read off
#: the median F0 of their lines (autocorrelation tracker, 8 kHz): about
#: 275 Hz for the small fish and 130 Hz for the big fish.
FILLETS_LEAD_VOICES = {
    "fillets_m": VoiceInfo(
        "cs-CZ", "female", "small fish (fillets-ng cast)", "GPL-2.0"
    ),
    "fillets_v": VoiceInfo(
        "cs-CZ", "male", "big fish (fillets-ng cast)", "GPL-2.0"
    ),
}


def describe_voice(voice_id: str) -> dict:
    """Language, gender, speaker and licence of a voice, as a dict.

    Minor fillets characters have ``gender`` ``"unknown"``.

    Arguments
    ---------
    voice_id : str
        An identifier returned by :func:`find_voices`.

    Returns
    -------
    dict

    Example
    -------
    >>> describe_voice("it_IT_m_Carlo")["gender"]
    'male'
    """
    info = ASTERISK_VOICES.get(voice_id) or FILLETS_LEAD_VOICES.get(voice_id)
    if info is None:
        if not voice_id.startswith("fillets_"):
            raise KeyError(f"unknown voice {voice_id!r}")
        info = VoiceInfo(
            "cs-CZ", "unknown", "fillets-ng minor character", "GPL-2.0"
        )
    return {
        "language": info.language,
        "gender": info.gender,
        "speaker": info.speaker,
        "licence": info.licence,
    }


def apt_install_command(packages=None) -> str:
    """Return the ``apt-get`` line installing ``packages`` (default: all).

    Arguments
    ---------
    packages : list of str, optional
        Debian package names; every package of :data:`PACKAGES` when omitted.

    Returns
    -------
    str
        A command line to run as root.

    Example
    -------
    >>> apt_install_command(["fillets-ng-data-cs"])
    'apt-get install -y --no-install-recommends fillets-ng-data-cs'
    """
    if packages is None:
        packages = [package.name for package in PACKAGES]
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def packages_for_rate(sample_rate: int) -> list:
    """Return the packages whose speech is used at ``sample_rate``.

    At 8 kHz the native 8 kHz WAV prompts are used; above 8 kHz only
    material recorded at that rate or better (G.722, fillets) qualifies.

    Arguments
    ---------
    sample_rate : int
        Target rate in Hz.

    Returns
    -------
    list of VoicePackage

    Example
    -------
    >>> [p.name for p in packages_for_rate(16000)][-1]
    'fillets-ng-data-cs'
    """
    chosen = {}
    for package in sorted(PACKAGES, key=lambda p: p.native_rate):
        if package.native_rate < sample_rate:
            continue
        for voice in package.voices:
            chosen.setdefault(voice, package)
        if not package.voices:
            chosen[package.name] = package
    names = {package.name for package in chosen.values()}
    return [package for package in PACKAGES if package.name in names]


def _asterisk_prompts(voice_dir: Path, extension: str) -> list:
    """Sorted speech prompts of one Asterisk voice folder."""
    prompts = []
    for folder, subfolders, files in os.walk(voice_dir):
        subfolders[:] = sorted(
            d for d in subfolders if d not in NON_SPEECH_FOLDERS
        )
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext == extension and stem not in NON_SPEECH_PROMPTS:
                prompts.append(os.path.join(folder, name))
    return sorted(prompts)


def fillets_voice_id(path) -> str | None:
    """Return the voice identifier of a fillets-ng dialogue file.

    The game names its files ``<level>-<speaker>-<line>.ogg`` in most
    levels, ``<speaker>-<line>.ogg`` in a few (``rush``, ``gods``) and
    ``<line>-<speaker>.ogg`` in ``fdto``; files without a speaker code
    (``briefcase/cs/help*.ogg``) return ``None``.

    Arguments
    ---------
    path : str or Path
        ``<root>/<level>/cs/<name>.ogg``.

    Returns
    -------
    str or None
        ``fillets_m``, ``fillets_v`` or ``fillets_<level>_<code>``.

    Example
    -------
    >>> fillets_voice_id("/x/viking2/cs/dr-4-erik.ogg")
    'fillets_viking_4'
    >>> fillets_voice_id("/x/fdto/cs/proc-m.ogg")
    'fillets_m'
    """
    path = Path(path)
    parts = path.stem.split("-")
    if len(parts) >= 3:
        code = parts[1]
    elif len(parts) == 2:
        # "<line>-<speaker>" (fdto) has a one-letter code after a word;
        # "<speaker>-<line>" has a short code first.
        first, last = parts
        code = last if len(last) == 1 and len(first) > 2 else first
    else:
        return None
    if code in FILLETS_LEADS:
        return f"fillets_{code}"
    level = re.sub(r"\d+$", "", path.parent.parent.name)
    return f"fillets_{level}_{code}"


def _package_present(package, asterisk_root, fillets_root) -> bool:
    """True when at least one audio file of ``package`` is installed."""
    if package.voices:
        folders = [Path(asterisk_root) / voice for voice in package.voices]
    else:
        folders = sorted(Path(fillets_root).glob("*/cs"))
    for folder in folders:
        if folder.is_dir() and any(
            name.endswith(package.extension) for name in os.listdir(folder)
        ):
            return True
    return False


def missing_packages(
    sample_rate: int, asterisk_root=ASTERISK_ROOT, fillets_root=FILLETS_ROOT
) -> list:
    """Return the names of the packages for ``sample_rate`` not installed.

    Arguments
    ---------
    sample_rate : int
        Target rate in Hz.
    asterisk_root, fillets_root : str or Path
        Install locations (defaults: Debian's).

    Returns
    -------
    list of str

    Example
    -------
    >>> missing_packages(22050, fillets_root="/nonexistent")
    ['fillets-ng-data-cs']
    """
    return [
        package.name
        for package in packages_for_rate(sample_rate)
        if not _package_present(package, asterisk_root, fillets_root)
    ]


def find_voices(
    sample_rate: int, asterisk_root=ASTERISK_ROOT, fillets_root=FILLETS_ROOT
) -> dict:
    """List the speech files of every voice available at ``sample_rate``.

    Each Asterisk voice comes from its lowest-rate package that is at least
    ``sample_rate`` (8 kHz -> WAV, 16 kHz -> G.722); fillets dialogue serves
    every rate up to 22.05 kHz. Tones, silences and files without a
    speaker are left out. Missing packages are skipped silently: use
    :func:`require_voices` to insist on all of them.

    Arguments
    ---------
    sample_rate : int
        Target rate in Hz.
    asterisk_root, fillets_root : str or Path
        Install locations (defaults: Debian's).

    Returns
    -------
    dict
        ``{voice_id: [sorted absolute paths]}``, sorted by voice id.

    Example
    -------
    >>> find_voices(8000, "/nonexistent", "/nonexistent")
    {}
    """
    voices = {}
    for package in packages_for_rate(sample_rate):
        for voice in package.voices:
            prompts = _asterisk_prompts(
                Path(asterisk_root) / voice, package.extension
            )
            if prompts and voice not in voices:
                voices[voice] = prompts
        if not package.voices:
            for path in sorted(Path(fillets_root).glob("*/cs/*.ogg")):
                voice = fillets_voice_id(path)
                if voice is not None:
                    voices.setdefault(voice, []).append(str(path))
    return {voice: sorted(voices[voice]) for voice in sorted(voices)}


def require_voices(
    sample_rate: int, asterisk_root=ASTERISK_ROOT, fillets_root=FILLETS_ROOT
) -> dict:
    """Like :func:`find_voices`, but every package for the rate must exist.

    Arguments
    ---------
    sample_rate : int
        Target rate in Hz.
    asterisk_root, fillets_root : str or Path
        Install locations (defaults: Debian's).

    Returns
    -------
    dict
        ``{voice_id: [paths]}``.

    Raises
    ------
    FileNotFoundError
        Naming the missing packages and the ``apt-get`` line installing them.

    Example
    -------
    >>> require_voices(22050, fillets_root="/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no speech of Debian package(s) fillets-ng-data-cs ...
    """
    missing = missing_packages(sample_rate, asterisk_root, fillets_root)
    if missing:
        raise FileNotFoundError(
            f"no speech of Debian package(s) {', '.join(missing)} under "
            f"{asterisk_root} / {fillets_root} (needed at {sample_rate} Hz); "
            f"install them as root with: {apt_install_command(missing)}"
        )
    return find_voices(sample_rate, asterisk_root, fillets_root)


def _decode_g722(path: str) -> np.ndarray:
    """Decode a raw G.722 bit stream (Asterisk ``.g722``) to int16 [T]."""
    try:
        import av
    except ImportError as err:
        raise ModuleNotFoundError(
            f"decoding the G.722 file {path} needs PyAV: pip install av "
            "(or pip install 'speechbrain_s4[data]')"
        ) from err
    with av.open(str(path), format="g722") as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
    if not frames:  # some prompts hold no complete G.722 frame
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(frames, axis=-1).reshape(-1)  # [T]


def read_audio(path) -> tuple:
    """Read a WAV, Ogg or G.722 file as float32 mono at its own rate.

    Arguments
    ---------
    path : str or Path
        The audio file; ``.g722`` is decoded by PyAV at 16 kHz.

    Returns
    -------
    audio : np.ndarray
        ``[T]`` float32 in [-1, 1]; multi-channel files are averaged.
    sample_rate : int
        The file's rate in Hz.

    Example
    -------
    >>> import tempfile, soundfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, np.zeros((800, 2)), 8000)
    >>> audio, rate = read_audio(path)
    >>> audio.shape, rate
    ((800,), 8000)
    """
    path = str(path)
    if path.endswith(".g722"):
        # G.722 is always 16 kHz; int16 full scale maps to 1.0 as in WAV.
        return _decode_g722(path).astype(np.float32) / 32768.0, 16000
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # [T, C]
    return audio.mean(axis=1), rate


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample down with a polyphase filter (scipy ``resample_poly``).

    Arguments
    ---------
    audio : np.ndarray
        ``[T]`` signal.
    orig_rate, target_rate : int
        Rates in Hz; ``target_rate`` may not exceed ``orig_rate``.

    Returns
    -------
    np.ndarray
        ``[T * target_rate / orig_rate]`` float32.

    Example
    -------
    >>> resample(np.zeros(22050, dtype=np.float32), 22050, 8000).shape
    (8000,)
    """
    if target_rate > orig_rate:
        raise ValueError(
            f"refusing to upsample {orig_rate} Hz audio to {target_rate} Hz: "
            "upsampled speech has no content above the original Nyquist "
            "frequency; use material recorded at the target rate or better"
        )
    if target_rate == orig_rate:
        return audio.astype(np.float32, copy=False)
    common = gcd(orig_rate, target_rate)
    out = resample_poly(audio, target_rate // common, orig_rate // common)
    return out.astype(np.float32)


def load_clip(path, sample_rate: int) -> np.ndarray:
    """Read one file and bring it to ``sample_rate`` (mono float32).

    Arguments
    ---------
    path : str or Path
        WAV, Ogg or G.722 file.
    sample_rate : int
        Target rate in Hz (not above the file's own rate).

    Returns
    -------
    np.ndarray
        ``[T]`` float32.

    Example
    -------
    >>> import tempfile, soundfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, np.zeros(1600), 16000)
    >>> load_clip(path, 8000).shape
    (800,)
    """
    audio, rate = read_audio(path)
    return resample(audio, rate, sample_rate)


def _active_frames(audio, sample_rate, threshold_db, frame_ms) -> tuple:
    """Frames whose energy is within ``threshold_db`` of the loudest one.

    Returns the indices of active frames ``[A]`` and the frame length.
    Relative thresholds suit prompts recorded at very different levels.
    """
    frame = max(1, int(sample_rate * frame_ms / 1000))
    num_frames = len(audio) // frame
    frames = audio[: num_frames * frame].reshape(num_frames, frame)  # [F, W]
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)  # [F]
    if num_frames == 0 or energy.max() == 0.0:
        return np.zeros(0, dtype=np.int64), frame
    threshold = energy.max() * 10 ** (threshold_db / 10)
    return np.flatnonzero(energy >= threshold), frame


def trim_silence(
    audio: np.ndarray,
    sample_rate: int,
    threshold_db: float = -40.0,
    frame_ms: float = 10.0,
    margin_ms: float = 40.0,
) -> np.ndarray:
    """Cut leading and trailing silence.

    A frame is active when its energy is within ``threshold_db`` of the
    loudest frame of the clip; everything before the first and after the
    last active frame, beyond ``margin_ms``, is cut.

    Arguments
    ---------
    audio : np.ndarray
        ``[T]`` signal.
    sample_rate : int
        Its rate in Hz.
    threshold_db : float
        Activity threshold relative to the loudest frame (negative dB).
    frame_ms : float
        Analysis frame length.
    margin_ms : float
        Audio kept on each side of the active region, so that soft onsets
        and releases survive.

    Returns
    -------
    np.ndarray
        ``[T']`` with T' <= T; empty when the clip is digital silence.

    Example
    -------
    >>> clip = np.concatenate([np.zeros(4000), np.ones(800), np.zeros(4000)])
    >>> trim_silence(clip, 8000).shape
    (1440,)
    """
    segments = split_on_pauses(
        audio, sample_rate, threshold_db, frame_ms, float("inf"), margin_ms
    )
    if not segments:
        return audio[:0]
    return segments[0]


def split_on_pauses(
    audio: np.ndarray,
    sample_rate: int,
    threshold_db: float = -40.0,
    frame_ms: float = 10.0,
    min_pause_ms: float = 300.0,
    margin_ms: float = 40.0,
) -> list:
    """Split a clip into phrases at pauses, dropping the silence around them.

    Active frames are found as in :func:`trim_silence`; a run of inactive
    frames of at least ``min_pause_ms`` separates two phrases. Long
    telephone prompts (menus of up to 70 s) thus become sentence-sized
    pieces.

    Arguments
    ---------
    audio : np.ndarray
        ``[T]`` signal.
    sample_rate : int
        Its rate in Hz.
    threshold_db : float
        Activity threshold relative to the loudest frame (negative dB).
    frame_ms : float
        Analysis frame length.
    min_pause_ms : float
        Shortest silence that splits (``inf``: only trim the ends).
    margin_ms : float
        Audio kept before and after each phrase.

    Returns
    -------
    list of np.ndarray
        Phrases ``[T_k]`` in order; empty for digital silence.

    Example
    -------
    >>> tone = np.ones(800)
    >>> clip = np.concatenate([tone, np.zeros(8000), tone])
    >>> [p.shape for p in split_on_pauses(clip, 8000)]
    [(1120,), (1120,)]
    """
    active, frame = _active_frames(audio, sample_rate, threshold_db, frame_ms)
    if len(active) == 0:
        return []
    # A gap of d frame indices between active frames is d - 1 silent frames.
    pause_frames = sample_rate * min_pause_ms / 1000 / frame
    gaps = np.flatnonzero(np.diff(active) - 1 >= pause_frames)
    starts = np.concatenate([[active[0]], active[gaps + 1]])  # [P] frames
    stops = np.concatenate([active[gaps], [active[-1]]]) + 1  # [P] frames
    margin = int(sample_rate * margin_ms / 1000)
    return [
        audio[
            max(0, start * frame - margin) : min(
                len(audio), stop * frame + margin
            )
        ]
        for start, stop in zip(starts, stops, strict=True)
    ]


def is_clipped(
    audio: np.ndarray, level: float = 0.999, max_fraction: float = 1e-3
) -> bool:
    """True when more than ``max_fraction`` of the samples sit at full scale.

    Check the clip at its native rate: resampling smooths the flat tops
    that give clipping away.

    Arguments
    ---------
    audio : np.ndarray
        ``[T]`` float signal in [-1, 1].
    level : float
        Magnitude counted as full scale.
    max_fraction : float
        Tolerated fraction of full-scale samples.

    Returns
    -------
    bool

    Example
    -------
    >>> is_clipped(np.clip(3 * np.sin(np.arange(800) / 5), -1, 1))
    True
    """
    if len(audio) == 0:
        return False
    return bool(np.mean(np.abs(audio) >= level) > max_fraction)
