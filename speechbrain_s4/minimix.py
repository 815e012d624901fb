"""minimix: a small real-speech two-speaker separation set from Debian voices.

WSJ0-2mix (Hershey et al., "Deep clustering: discriminative embeddings for
segmentation and separation", ICASSP 2016) cannot be redistributed, and
nothing may be downloaded at run time here; Debian, however, ships real
recorded voices (:mod:`speechbrain_s4.voices`). minimix rebuilds the
WSJ0-2mix recipe from them, with a noisy variant in the spirit of
LRS2-2Mix, so that a model can be trained and tested end to end on a clean
machine.

Recipe
------
1. **Prompts -> phrases.** Each voice's prompts are shuffled (seeded per
   voice), clipped clips are dropped (> 0.1 % of samples at full scale, at
   the native rate), the rest resampled *down* to the target rate and cut at
   pauses of >= 300 ms into phrases with their leading/trailing silence
   removed (:func:`speechbrain_s4.voices.split_on_pauses`). Phrases shorter
   than 0.2 s or quieter than -50 dBFS are dropped; phrases longer than the
   longest utterance are cut at their quietest 10 ms frame.
2. **Phrases -> utterances.** Many prompts last 1-3 s, so phrases of the
   SAME voice are concatenated with pauses drawn from ``pause_seconds``
   (0.1-0.4 s) until a length drawn from ``utterance_seconds`` (2-6 s) is
   reached. Each utterance is scaled to -28 dBFS RMS (less if its peak
   would exceed 0.99) and written as a source file for dynamic mixing.
3. **Mixtures** (WSJ0-2mix "min"): utterance 1 uniformly from the split,
   utterance 2 uniformly from the split's utterances of a DIFFERENT voice;
   both are cut to the shorter one; ``s1`` is ``level_db`` ~ U(0, 5) dB
   louder than ``s2`` (RMS over the mixture), ``mix_clean = s1 + s2``.
4. **Noise.** Babble of ``babble_talkers`` (3-5) talkers, each a stream of
   phrases of a *babble-only* voice (never a target in any split), summed at
   equal RMS, plus pink (1/f) or brown (1/f^2) noise at ``colour_db`` ~
   U(-10, 0) dB relative to the babble; the sum is scaled so that
   ``10 log10(P(mix_clean) / P(noise)) = noise_snr_db`` ~ U(0, 10) dB, a
   moderately noisy condition (WHAM! is harder, -6..3 dB against the
   louder speaker). ``mix_both = mix_clean + noise``.
5. **Files.** If any signal would peak above 0.9, all four are scaled by the
   same factor. Signals are written as 16-bit PCM: rounding ``s1``, ``s2``
   and ``noise`` to integers first and adding integers makes
   ``mix_clean == s1 + s2`` and ``mix_both == mix_clean + noise`` hold
   *exactly* in the files (float WAVs would round each sum separately), at
   half the disk of float32; the quantisation noise (-101 dBFS) is far
   below any separation error.

Voices (speaker-disjoint splits)
--------------------------------
========  ==========================================  =======================
split     8 kHz                                       16 kHz
========  ==========================================  =======================
train     en_US_f_Allison (f), ru_RU_f_IvrvoiceRU (f), en_US_f_Allison (f),
          fillets_m (f), fillets_v (m)                fillets_m, fillets_v
valid     it_IT_f_Menardi (f)                         ru_RU_f_IvrvoiceRU (f)
test      it_IT_m_Carlo (m), fr_CA_f_June (f)         same as 8 kHz
========  ==========================================  =======================

Menardi exists at 8 kHz only, so at 16 kHz IvrvoiceRU moves from train to
valid. The test voices (Italian male, Canadian-French female) are held out
at both rates. Minor fillets characters with >= 20 s of audio are targets
too, assigned by decreasing duration in the cycle train, valid, train,
test, train (with fillets-ng-data-cs 1.0.1: 13 train, 5 valid, 4 test
voices); those with less are babble-only voices, assigned in the cycle
train, valid, test. The game does not credit its minor characters to
actors, so one actor may voice characters in two splits; the Asterisk
voices and the two leads are certainly distinct people. The exact lists are
in the metadata.

Output
------
``<out>/wav8k/`` (and/or ``wav16k``)::

    {train,valid,test}/{mix_clean,mix_both,s1,s2,noise}/<ID>.wav
    sources/{train,valid,test}/<voice>/<voice>-<n>.wav
    metadata.json   seed, options, voices per split, counts, and per
                    mixture its utterances, level, gains, SNR and noise

``ID`` is ``<index>_<utterance 1>_<utterance 2>``. The set is a pure
function of the seed, the options and the installed packages. With the
default sizes (2000/200/300 mixtures, about 3.6 s each) a rate takes about
0.9 GB (8 kHz) or 1.8 GB (16 kHz) of disk and 20 s (8 kHz) or 31 s
(16 kHz) of CPU time on one core.

Authors
 * speechbrain_s4 contributors
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import wave
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

from speechbrain_s4.voices import (
    ASTERISK_ROOT,
    FILLETS_ROOT,
    describe_voice,
    is_clipped,
    packages_for_rate,
    read_audio,
    require_voices,
    resample,
    split_on_pauses,
)

logger = get_logger(__name__)

SPLITS = ("train", "valid", "test")
#: Mixtures per split when no size is given.
DEFAULT_SIZES = {"train": 2000, "valid": 200, "test": 300}
#: Sample rate -> output folder.
RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}
#: Signal folders of every split.
SIGNALS = ("mix_clean", "mix_both", "s1", "s2", "noise")
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1

#: Major voices per split and rate (see the module docstring).
MAJOR_VOICES = {
    8000: {
        "train": (
            "en_US_f_Allison",
            "ru_RU_f_IvrvoiceRU",
            "fillets_m",
            "fillets_v",
        ),
        "valid": ("it_IT_f_Menardi",),
        "test": ("it_IT_m_Carlo", "fr_CA_f_June"),
    },
    16000: {
        "train": ("en_US_f_Allison", "fillets_m", "fillets_v"),
        "valid": ("ru_RU_f_IvrvoiceRU",),
        "test": ("it_IT_m_Carlo", "fr_CA_f_June"),
    },
}
#: Minor voices with at least this much audio (s) are separation targets.
MIN_TARGET_SECONDS = 20.0
#: Split of the k-th minor target voice by decreasing duration (k mod 5).
MINOR_TARGET_CYCLE = ("train", "valid", "train", "test", "train")
#: Split of the k-th babble-only voice by decreasing duration (k mod 3).
BABBLE_CYCLE = ("train", "valid", "test")

#: Utterance level before mixing (-28 dBFS RMS).
REFERENCE_RMS = 10 ** (-28 / 20)
#: Largest peak written; leaves headroom for the integer sums.
PEAK_LIMIT = 0.9
#: Coloured noise name -> spectral exponent (power ~ 1 / f^exponent).
NOISE_COLOURS = {"pink": 1.0, "brown": 2.0}
#: Phrases shorter than this (s) or quieter than this (RMS) are dropped.
MIN_PHRASE_SECONDS = 0.2
MIN_PHRASE_RMS = 10 ** (-50 / 20)
#: 16-bit full scale.
INT16_SCALE = 32768.0


def _rng(seed: int, *keys) -> np.random.Generator:
    """A random stream for ``(seed, *keys)``.

    Keys are hashed (crc32) so that, e.g., the utterances of one voice do not
    change when another voice is added or removed.
    """
    return np.random.default_rng(
        [seed] + [zlib.crc32(str(key).encode()) for key in keys]
    )


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def voice_seconds(paths) -> float:
    """Total duration of a voice's files, from their headers (no decoding).

    Arguments
    ---------
    paths : list of str
        WAV or Ogg files.

    Returns
    -------
    float
    """
    return sum(sf.info(str(path)).duration for path in paths)


def assign_voices(voice_paths: dict, sample_rate: int) -> dict:
    """Assign every voice to one split, as target or babble-only voice.

    Arguments
    ---------
    voice_paths : dict
        ``{voice: [paths]}`` from :func:`speechbrain_s4.voices.find_voices`.
    sample_rate : int
        8000 or 16000 (selects the major-voice table).

    Returns
    -------
    dict
        ``{"targets": {split: [voices]}, "babble": {split: [voices]},
        "seconds": {minor voice: seconds of its files}}``.

    Example
    -------
    >>> paths = {}
    >>> assign_voices(paths, 8000)
    Traceback (most recent call last):
    ...
    ValueError: minimix needs the voices ... at 8000 Hz; found none of ...
    """
    majors = MAJOR_VOICES[sample_rate]
    all_majors = [voice for split in SPLITS for voice in majors[split]]
    missing = [voice for voice in all_majors if voice not in voice_paths]
    if missing:
        raise ValueError(
            f"minimix needs the voices {', '.join(all_majors)} at "
            f"{sample_rate} Hz; found none of {', '.join(missing)}"
        )
    minors = [voice for voice in voice_paths if voice not in all_majors]
    seconds = {voice: voice_seconds(voice_paths[voice]) for voice in minors}
    ranked = sorted(minors, key=lambda voice: (-seconds[voice], voice))
    targets = {split: list(majors[split]) for split in SPLITS}
    babble = {split: [] for split in SPLITS}
    big = [voice for voice in ranked if seconds[voice] >= MIN_TARGET_SECONDS]
    small = [voice for voice in ranked if seconds[voice] < MIN_TARGET_SECONDS]
    for rank, voice in enumerate(big):
        targets[MINOR_TARGET_CYCLE[rank % len(MINOR_TARGET_CYCLE)]].append(
            voice
        )
    for rank, voice in enumerate(small):
        babble[BABBLE_CYCLE[rank % len(BABBLE_CYCLE)]].append(voice)
    for split in SPLITS:
        if not babble[split]:
            raise ValueError(
                f"no babble-only voice left for the {split} split at "
                f"{sample_rate} Hz (voices with < {MIN_TARGET_SECONDS} s of "
                "audio); is fillets-ng-data-cs complete?"
            )
    return {"targets": targets, "babble": babble, "seconds": seconds}


def _cut_long(phrase, sample_rate, min_seconds, max_seconds) -> list:
    """Cut a phrase longer than ``max_seconds`` at its quietest frames.

    Each cut falls on the quietest 10 ms frame between ``min_seconds`` and
    ``max_seconds`` from the current start, so pieces stay in range.
    """
    frame = sample_rate // 100
    pieces = []
    while len(phrase) > max_seconds * sample_rate:
        lo, hi = int(min_seconds * 100), int(max_seconds * 100)
        frames = phrase[: hi * frame].reshape(hi, frame)[lo:]  # [F, W]
        cut = (lo + int(np.argmin(np.mean(frames**2, axis=1)))) * frame
        pieces.append(phrase[:cut])
        phrase = phrase[cut:]
    return pieces + [phrase]


def load_phrases(
    paths,
    sample_rate: int,
    rng: np.random.Generator,
    max_seconds: float,
    min_seconds: float,
    limit: int | None = None,
) -> list:
    """Decode, clean and cut one voice's prompts into phrases.

    Arguments
    ---------
    paths : list of str
        The voice's prompt files.
    sample_rate : int
        Target rate in Hz.
    rng : np.random.Generator
        Shuffles the prompts (the order feeds the utterance packing).
    max_seconds, min_seconds : float
        Utterance length range; longer phrases are cut inside it.
    limit : int, optional
        Use only the first ``limit`` shuffled prompts (tiny builds).

    Returns
    -------
    list of (np.ndarray, str)
        Phrases ``[T]`` float32 with the prompt they come from.
    """
    order = rng.permutation(len(paths))[:limit]
    phrases = []
    for index in order:
        audio, rate = read_audio(paths[index])
        if is_clipped(audio):
            continue
        audio = resample(audio, rate, sample_rate)
        for phrase in split_on_pauses(audio, sample_rate):
            if (
                len(phrase) < MIN_PHRASE_SECONDS * sample_rate
                or _rms(phrase) < MIN_PHRASE_RMS
            ):
                continue
            for piece in _cut_long(
                phrase, sample_rate, min_seconds, max_seconds
            ):
                phrases.append((piece, paths[index]))
    return phrases


def pack_utterances(
    phrases: list,
    sample_rate: int,
    rng: np.random.Generator,
    utterance_seconds: tuple,
    pause_seconds: tuple,
) -> list:
    """Concatenate phrases of one voice into utterances of a useful length.

    Phrases are taken in order; each utterance aims at a length drawn from
    ``utterance_seconds`` and never exceeds its upper bound. A phrase that
    would overflow an utterance already long enough starts the next one;
    leftovers shorter than the lower bound are dropped.

    Arguments
    ---------
    phrases : list of (np.ndarray, str)
        From :func:`load_phrases`.
    sample_rate : int
        Their rate in Hz.
    rng : np.random.Generator
        Draws target lengths and pauses.
    utterance_seconds : (float, float)
        Length range.
    pause_seconds : (float, float)
        Silence inserted between phrases.

    Returns
    -------
    list of (np.ndarray, list of str)
        Utterances ``[T]`` at :data:`REFERENCE_RMS` and their prompts.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> phrases = [(np.ones(8000, dtype=np.float32), "p")] * 12
    >>> utts = pack_utterances(phrases, 8000, rng, (2.0, 6.0), (0.1, 0.4))
    >>> [audio.shape for audio, prompts in utts]
    [(36488,), (39698,), (18857,), (17221,)]
    """
    low, high = (int(s * sample_rate) for s in utterance_seconds)
    utterances = []

    def close(parts, prompts):
        audio = np.concatenate(parts).astype(np.float32)  # [T]
        gain = min(REFERENCE_RMS / _rms(audio), 0.99 / np.max(np.abs(audio)))
        utterances.append((audio * np.float32(gain), sorted(set(prompts))))

    parts, prompts, length = [], [], 0
    target = rng.uniform(*utterance_seconds) * sample_rate
    for phrase, prompt in phrases:
        pause = np.zeros(
            int(rng.uniform(*pause_seconds) * sample_rate), np.float32
        )
        if parts and length + len(pause) + len(phrase) > high:
            if length < low:
                # The current utterance is too short to close; a phrase this
                # long (>= high - low) is an utterance on its own.
                close([phrase], [prompt])
                continue
            close(parts, prompts)
            parts, prompts, length = [], [], 0
            target = rng.uniform(*utterance_seconds) * sample_rate
        if parts:
            parts.append(pause)
            length += len(pause)
        parts.append(phrase)
        prompts.append(prompt)
        length += len(phrase)
        if length >= target:
            close(parts, prompts)
            parts, prompts, length = [], [], 0
            target = rng.uniform(*utterance_seconds) * sample_rate
    if parts and length >= low:
        close(parts, prompts)
    return utterances


def coloured_noise(
    num_samples: int, exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f^exponent, unit RMS.

    Arguments
    ---------
    num_samples : int
    exponent : float
        1 for pink, 2 for brown (red) noise.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray
        ``[num_samples]`` float64 with zero mean.

    Example
    -------
    >>> coloured_noise(8000, 1.0, np.random.default_rng(0)).shape
    (8000,)
    """
    # Shape a longer noise of FFT-friendly length, then crop: mixture
    # lengths are arbitrary (often prime), which makes FFTs slow.
    length = next_fast_len(num_samples, real=True)
    spectrum = rfft(rng.standard_normal(length))  # [L // 2 + 1]
    freqs = rfftfreq(length)
    freqs[0] = 1.0  # DC is zeroed below
    spectrum = spectrum / freqs ** (exponent / 2)  # amplitude ~ f^(-exponent/2)
    spectrum[0] = 0.0
    noise = irfft(spectrum, n=length)[:num_samples]
    noise = noise - noise.mean()
    return noise / _rms(noise)


def babble_talker(
    phrases: list,
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    pause_seconds: tuple,
) -> np.ndarray:
    """One babble talker: random phrases of one voice, back to back.

    Starts at a random offset within the first second so that talkers do
    not all begin with an onset. Returns ``[num_samples]`` at unit RMS.
    """
    offset = int(rng.integers(0, sample_rate))
    parts, length = [], 0
    while length < offset + num_samples:
        phrase = phrases[int(rng.integers(len(phrases)))][0]
        pause = np.zeros(int(rng.uniform(*pause_seconds) * sample_rate))
        parts += [phrase, pause]
        length += len(phrase) + len(pause)
    talker = np.concatenate(parts)[offset : offset + num_samples]
    return talker / max(_rms(talker), 1e-12)


def _quantise(signal: np.ndarray) -> np.ndarray:
    """Float in [-1, 1) -> int32 array holding 16-bit PCM values."""
    return np.round(signal * INT16_SCALE).astype(np.int32)


def mix_pair(
    first: np.ndarray,
    second: np.ndarray,
    babble_phrases: dict,
    sample_rate: int,
    rng: np.random.Generator,
    options: dict,
) -> tuple:
    """Build one mixture: sources, noise and both mixtures as 16-bit values.

    Arguments
    ---------
    first, second : np.ndarray
        Utterances ``[T1]``, ``[T2]`` of two different voices.
    babble_phrases : dict
        ``{voice: phrases}`` of the split's babble-only voices.
    sample_rate : int
    rng : np.random.Generator
    options : dict
        Build options (``level_db``, ``noise_snr_db``, ``colour_db``,
        ``babble_talkers``, ``pause_seconds``).

    Returns
    -------
    signals : dict
        ``{"s1", "s2", "noise", "mix_clean", "mix_both"}`` -> ``[T]`` int32
        values within 16-bit range, T = min(T1, T2).
    record : dict
        What was drawn: level, gains, SNR, scale, noise make-up.
    """
    num_samples = min(len(first), len(second))
    first, second = first[:num_samples], second[:num_samples]
    level_db = float(rng.uniform(*options["level_db"]))
    # s1 is level_db louder than s2 over the mixture: +/- level_db / 2 each.
    gain_1 = REFERENCE_RMS * 10 ** (level_db / 40) / _rms(first)
    gain_2 = REFERENCE_RMS * 10 ** (-level_db / 40) / _rms(second)
    s1 = first.astype(np.float64) * gain_1
    s2 = second.astype(np.float64) * gain_2

    voices = sorted(babble_phrases)
    low, high = options["babble_talkers"]
    num_talkers = min(int(rng.integers(low, high + 1)), len(voices))
    talkers = [
        voices[i] for i in rng.choice(len(voices), num_talkers, replace=False)
    ]
    babble = sum(
        babble_talker(
            babble_phrases[voice],
            num_samples,
            sample_rate,
            rng,
            options["pause_seconds"],
        )
        for voice in talkers
    )
    babble = babble / _rms(babble)
    colour = str(rng.choice(sorted(NOISE_COLOURS)))
    colour_db = float(rng.uniform(*options["colour_db"]))
    noise = babble + 10 ** (colour_db / 20) * coloured_noise(
        num_samples, NOISE_COLOURS[colour], rng
    )
    snr_db = float(rng.uniform(*options["noise_snr_db"]))
    clean_power = np.mean((s1 + s2) ** 2)
    noise = noise * np.sqrt(
        clean_power / (np.mean(noise**2) * 10 ** (snr_db / 10))
    )

    peak = max(
        np.max(np.abs(signal))
        for signal in (s1, s2, noise, s1 + s2, s1 + s2 + noise)
    )
    scale = min(1.0, PEAK_LIMIT / peak)
    signals = {
        "s1": _quantise(s1 * scale),
        "s2": _quantise(s2 * scale),
        "noise": _quantise(noise * scale),
    }
    # Integer sums: the files add up exactly.
    signals["mix_clean"] = signals["s1"] + signals["s2"]
    signals["mix_both"] = signals["mix_clean"] + signals["noise"]
    record = {
        "num_samples": num_samples,
        "level_db": level_db,
        "gain_s1": gain_1 * scale,
        "gain_s2": gain_2 * scale,
        "snr_db": snr_db,
        "scale": scale,
        "noise": {
            "babble_voices": talkers,
            "colour": colour,
            "colour_to_babble_db": colour_db,
        },
    }
    return signals, record


def write_pcm16(path, values: np.ndarray, sample_rate: int) -> None:
    """Write integer 16-bit values as a mono PCM WAV.

    The standard library's writer is used because soundfile syncs every file
    to disk on close, which dominated the build time (~15k files).

    Arguments
    ---------
    path : str or Path
        Destination ``.wav``.
    values : np.ndarray
        ``[T]`` integers within the 16-bit range.
    sample_rate : int
        In Hz.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> write_pcm16(path, np.arange(-4, 4), 8000)
    >>> sf.read(path, dtype="int16")[0].shape
    (8,)
    """
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(values.astype("<i2").tobytes())


def _build_options(**options) -> dict:
    """Validate the build options and return them as a JSON-ready dict."""
    sizes = dict(
        DEFAULT_SIZES if options["sizes"] is None else options["sizes"]
    )
    if set(sizes) != set(SPLITS) or any(
        not isinstance(n, int) or n < 1 for n in sizes.values()
    ):
        raise ValueError(
            f"sizes={options['sizes']!r}; expected a positive number of "
            "mixtures for each of 'train', 'valid' and 'test'"
        )
    options["sizes"] = {split: sizes[split] for split in SPLITS}
    for name in (
        "level_db",
        "noise_snr_db",
        "colour_db",
        "utterance_seconds",
        "pause_seconds",
        "babble_talkers",
    ):
        low, high = options[name]
        if low > high:
            raise ValueError(f"{name}={options[name]!r}: the range is empty")
        options[name] = [low, high]
    low, high = options["utterance_seconds"]
    if low <= 0 or high < 2 * low + options["pause_seconds"][1]:
        raise ValueError(
            f"utterance_seconds={options['utterance_seconds']!r}: need "
            "0 < low and high >= 2 * low + the longest pause, so that two "
            "short phrases always fit one utterance"
        )
    if options["babble_talkers"][0] < 1:
        raise ValueError("babble_talkers must be at least 1")
    return options


def _is_built(final: Path, options: dict, overwrite: bool) -> bool:
    """True when ``final`` holds a set built with ``options``.

    A set built with other options raises, or is removed when ``overwrite``;
    a folder without minimix metadata is never touched.
    """
    metadata_path = final / METADATA_FILE
    if metadata_path.is_file():
        built = json.loads(metadata_path.read_text())
        if built.get("options") == options:
            return True
        if not overwrite:
            raise FileExistsError(
                f"{final} holds a minimix set built with other options "
                f"({built.get('options')}); pass overwrite=True (--overwrite) "
                "to rebuild it, or choose another folder"
            )
        shutil.rmtree(final)
    elif final.exists():
        raise FileExistsError(
            f"{final} exists but holds no minimix {METADATA_FILE}; remove it "
            "or build into another folder"
        )
    return False


def _load_voices(voice_paths, plan, sample_rate, options, progress) -> tuple:
    """Steps 1-2: phrases of every voice, utterances of the target voices.

    Returns ``(phrases, utterances, role_of)``: ``{voice: phrases}``,
    ``{split: [utterance dicts]}`` and ``{voice: (role, split)}``.
    """
    low, high = options["utterance_seconds"]
    role_of = {
        voice: (role, split)
        for role in ("targets", "babble")
        for split in SPLITS
        for voice in plan[role][split]
    }
    phrases, utterances = {}, {split: [] for split in SPLITS}
    for voice in tqdm(
        sorted(role_of),
        desc=f"minimix {sample_rate} Hz voices",
        disable=not progress,
    ):
        rng = _rng(options["seed"], sample_rate, "voice", voice)
        phrases[voice] = load_phrases(
            voice_paths[voice],
            sample_rate,
            rng,
            high,
            low,
            options["prompts_per_voice"],
        )
        role, split = role_of[voice]
        if role == "babble":
            if not phrases[voice]:
                raise ValueError(f"babble voice {voice} has no usable phrase")
            continue
        packed = pack_utterances(
            phrases[voice],
            sample_rate,
            rng,
            options["utterance_seconds"],
            options["pause_seconds"],
        )
        for number, (audio, prompts) in enumerate(packed):
            utterances[split].append(
                {
                    "ID": f"{voice}-{number:04d}",
                    "voice": voice,
                    "audio": audio,
                    "prompts": prompts,
                }
            )
    for split in SPLITS:
        voices = {utt["voice"] for utt in utterances[split]}
        if len(voices) < 2:
            raise ValueError(
                f"the {split} split has usable utterances of {len(voices)} "
                "voice(s); two different voices are needed per mixture "
                "(raise prompts_per_voice?)"
            )
    return phrases, utterances, role_of


def _write_split(
    folder, split, utterances, babble_phrases, sample_rate, options, progress
) -> list:
    """Steps 3-5 for one split: write its sources and mixtures.

    Returns the mixture records of the metadata.
    """
    for utt in utterances:
        voice_folder = folder / "sources" / split / utt["voice"]
        voice_folder.mkdir(parents=True, exist_ok=True)
        write_pcm16(
            voice_folder / f"{utt['ID']}.wav",
            _quantise(utt["audio"]),
            sample_rate,
        )
    for signal in SIGNALS:
        (folder / split / signal).mkdir(parents=True)
    rng = _rng(options["seed"], sample_rate, "mix", split)
    records = []
    for index in tqdm(
        range(options["sizes"][split]),
        desc=f"minimix {sample_rate} Hz {split}",
        disable=not progress,
    ):
        first = utterances[int(rng.integers(len(utterances)))]
        second = first
        while second["voice"] == first["voice"]:
            second = utterances[int(rng.integers(len(utterances)))]
        signals, record = mix_pair(
            first["audio"],
            second["audio"],
            babble_phrases,
            sample_rate,
            rng,
            options,
        )
        mixture_id = f"{index:05d}_{first['ID']}_{second['ID']}"
        for signal in SIGNALS:
            write_pcm16(
                folder / split / signal / f"{mixture_id}.wav",
                signals[signal],
                sample_rate,
            )
        records.append(
            {
                "ID": mixture_id,
                "s1": first["ID"],
                "s2": second["ID"],
                "s1_voice": first["voice"],
                "s2_voice": second["voice"],
                **record,
            }
        )
    return records


def _build_rate(
    out_dir, sample_rate, options, overwrite, progress, roots
) -> Path:
    """Build (or keep) ``<out_dir>/wav8k|wav16k`` and return its metadata."""
    final = Path(out_dir).absolute() / RATE_FOLDERS[sample_rate]
    if _is_built(final, options, overwrite):
        logger.info("%s is up to date", final)
        return final / METADATA_FILE
    start_time = time.time()
    voice_paths = require_voices(sample_rate, *roots)
    plan = assign_voices(voice_paths, sample_rate)
    phrases, utterances, role_of = _load_voices(
        voice_paths, plan, sample_rate, options, progress
    )
    metadata = {
        "dataset": "minimix",
        "format_version": FORMAT_VERSION,
        "sample_rate": sample_rate,
        "seed": options["seed"],
        "options": options,
        "subtype": "PCM_16",
        "packages": [
            package.name for package in packages_for_rate(sample_rate)
        ],
        "voices": plan["targets"],
        "babble_voices": plan["babble"],
        "voice_info": {
            voice: dict(
                describe_voice(voice),
                split=split,
                role="target" if role == "targets" else "babble",
                files=len(voice_paths[voice]),
                phrase_seconds=round(
                    sum(len(p) for p, _ in phrases[voice]) / sample_rate, 2
                ),
            )
            for voice, (role, split) in sorted(role_of.items())
        },
        "counts": {},
        "utterances": {},
        "mixtures": {},
    }
    # A private staging folder, renamed into place once complete: readers
    # never see half a set, and concurrent builds do not mix their files.
    staging = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent)
    )
    staging.chmod(0o755)  # mkdtemp's 0o700 would hide the set from others
    try:
        for split in SPLITS:
            pool = utterances[split]
            records = _write_split(
                staging,
                split,
                pool,
                {voice: phrases[voice] for voice in plan["babble"][split]},
                sample_rate,
                options,
                progress,
            )
            metadata["mixtures"][split] = records
            metadata["utterances"][split] = [
                {
                    "ID": utt["ID"],
                    "voice": utt["voice"],
                    "num_samples": len(utt["audio"]),
                    "prompts": utt["prompts"],
                }
                for utt in pool
            ]
            metadata["counts"][split] = {
                "mixtures": len(records),
                "utterances": len(pool),
                "voices": len({utt["voice"] for utt in pool}),
                "mixture_seconds": round(
                    sum(r["num_samples"] for r in records) / sample_rate, 2
                ),
                "source_seconds": round(
                    sum(len(u["audio"]) for u in pool) / sample_rate, 2
                ),
            }
        metadata["build_seconds"] = round(time.time() - start_time, 2)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        if _is_built(final, options, overwrite=False):
            shutil.rmtree(staging)  # an identical build finished first
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "built %s in %.1f s: %s",
        final,
        metadata["build_seconds"],
        {split: metadata["counts"][split]["mixtures"] for split in SPLITS},
    )
    return final / METADATA_FILE


def build_minimix(
    out_dir,
    sample_rates=(8000,),
    sizes: dict | None = None,
    seed: int = 1234,
    level_db=(0.0, 5.0),
    noise_snr_db=(0.0, 10.0),
    colour_db=(-10.0, 0.0),
    utterance_seconds=(2.0, 6.0),
    pause_seconds=(0.1, 0.4),
    babble_talkers=(3, 5),
    prompts_per_voice: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    asterisk_root=ASTERISK_ROOT,
    fillets_root=FILLETS_ROOT,
) -> dict:
    """Build the minimix set (see the module docstring for the recipe).

    A rate whose folder already holds a set built with the same options is
    kept as it is; the set is built in a private staging folder
    (``.wav8k.partial-*``) renamed into place when complete, so readers
    never see half a set (a killed build may leave its staging folder
    behind: delete it).

    Arguments
    ---------
    out_dir : str or Path
        Output folder; ``wav8k``/``wav16k`` are created inside.
    sample_rates : sequence of int
        Any of 8000 and 16000.
    sizes : dict, optional
        Mixtures per split, e.g. ``{"train": 2000, "valid": 200,
        "test": 300}`` (the default).
    seed : int
        Seed of every random draw.
    level_db : (float, float)
        Range of the level of s1 over s2, in dB (uniform).
    noise_snr_db : (float, float)
        Range of the clean-mixture-to-noise ratio, in dB (uniform).
    colour_db : (float, float)
        Range of the coloured-noise-to-babble ratio, in dB (uniform).
    utterance_seconds : (float, float)
        Length range of the single-speaker utterances.
    pause_seconds : (float, float)
        Pauses inserted between the phrases of an utterance.
    babble_talkers : (int, int)
        Number of babble talkers per mixture (inclusive range).
    prompts_per_voice : int, optional
        Use at most this many prompts per voice (for quick tiny builds).
    overwrite : bool
        Rebuild a folder built with other options.
    progress : bool
        Show tqdm progress bars.
    asterisk_root, fillets_root : str or Path
        Where the Debian packages put their files.

    Returns
    -------
    dict
        ``{sample_rate: metadata.json path}``.

    Raises
    ------
    FileNotFoundError
        Voice packages are missing (the message holds the apt-get line).

    Example
    -------
    >>> build_minimix("/tmp/unused", sample_rates=(44100,))
    Traceback (most recent call last):
    ...
    ValueError: minimix has no layout for 44100 Hz; expected 8000 or 16000
    """
    for rate in sample_rates:
        if rate not in RATE_FOLDERS:
            raise ValueError(
                f"minimix has no layout for {rate} Hz; expected 8000 or 16000"
            )
    options = _build_options(
        sizes=sizes,
        seed=int(seed),
        level_db=level_db,
        noise_snr_db=noise_snr_db,
        colour_db=colour_db,
        utterance_seconds=utterance_seconds,
        pause_seconds=pause_seconds,
        babble_talkers=babble_talkers,
        prompts_per_voice=prompts_per_voice,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {
        rate: str(
            _build_rate(
                out_dir,
                rate,
                options,
                overwrite,
                progress,
                (asterisk_root, fillets_root),
            )
        )
        for rate in sample_rates
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the build options to ``parser`` (used by :func:`main`).

    Arguments
    ---------
    parser : argparse.ArgumentParser
    """
    parser.add_argument(
        "out_dir", help="output folder (wav8k/, wav16k/ inside)"
    )
    parser.add_argument(
        "--sample-rates",
        type=int,
        nargs="+",
        default=[8000],
        choices=sorted(RATE_FOLDERS),
        help="rates to build (default: 8000)",
    )
    for split in SPLITS:
        parser.add_argument(
            f"--{split}",
            type=int,
            default=DEFAULT_SIZES[split],
            help=f"mixtures in {split} (default: {DEFAULT_SIZES[split]})",
        )
    parser.add_argument("--seed", type=int, default=1234, help="random seed")
    parser.add_argument(
        "--noise-snr-db",
        type=float,
        nargs=2,
        default=[0.0, 10.0],
        metavar=("LOW", "HIGH"),
        help="clean-mixture-to-noise ratio range in dB (default: 0 10)",
    )
    parser.add_argument(
        "--prompts-per-voice",
        type=int,
        default=None,
        help="use at most this many prompts per voice (quick tiny builds)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild a folder that was built with other options",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars"
    )


def build_from_args(args: argparse.Namespace) -> dict:
    """Call :func:`build_minimix` with parsed :func:`add_arguments` options."""
    return build_minimix(
        args.out_dir,
        sample_rates=tuple(args.sample_rates),
        sizes={split: getattr(args, split) for split in SPLITS},
        seed=args.seed,
        noise_snr_db=tuple(args.noise_snr_db),
        prompts_per_voice=args.prompts_per_voice,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv=None) -> int:
    """``python -m speechbrain_s4.minimix OUT_DIR [options]``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments without the program name.

    Returns
    -------
    int
        0 on success, 2 when the input is wrong (message on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_s4.minimix",
        description="Build the minimix real-speech 2-speaker set from "
        "Debian voice packages.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = build_from_args(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"minimix: error: {err}", file=sys.stderr)
        return 2
    for rate, path in paths.items():
        logger.info("%d Hz: %s", rate, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
