"""CSV -> SpeechBrain datasets for speech separation, generic in the speakers.

Every dataset's preparation (``recipes/<dataset>/prepare.py``) writes the
same CSV schema (DEVELOPING.md): ``ID, duration, mix_wav, s1_wav .. sS_wav``
and, for noisy corpora, ``noise_wav``. This module turns such a CSV into a
``speechbrain.dataio.dataset.DynamicItemDataset`` whose items are

* ``mix_sig``: the mixture [T];
* ``targets``: the sources stacked on the last axis [T, S];
* ``noise_sig``: the noise [T] (only when the CSV has ``noise_wav``; the Brain
  re-adds it after speed perturbation).

Training items are random crops of ``segment_seconds``; the mixture, every
source and the noise are cut at the **same** offset, so they stay aligned.
Utterances shorter than the crop are kept whole (the batch pads them).
Files whose rate differs from ``sample_rate`` are resampled on the fly with
``torchaudio.functional.resample`` (a warning is logged once per rate pair).

**Dynamic mixing** (Subakan et al., "Attention is all you need in speech
separation", ICASSP 2021, which reports +2 dB on WSJ0-2mix) builds a new
mixture for every item from ``train_sources.csv`` (``ID, duration, wav,
spk_id``), as SpeechBrain's WSJ0Mix recipe does:

1. draw S **different** speakers, each with probability proportional to its
   number of utterances, then one utterance of each, uniformly;
2. cut every utterance (and the noise) to the shortest of them and of the
   training crop, each at its own random offset;
3. set the levels, measured as mean absolute amplitude in dB full scale
   (SpeechBrain's ``rescale(..., amp_type="avg", scale="dB")`` convention):
   the first speaker at L₁ ~ N(-27.43, 2.57²) dB, every other speaker at
   L₁ + N(-2.51, 2.66²) dB, all clipped to [-45, 0] dB (the statistics
   SpeechBrain measured on WSJ0-2mix); noise, when the dataset has some, at
   the loudest speaker's level minus an SNR ~ U(-6, +3) dB (WHAM!'s range);
4. sum, and scale everything down together only if a peak would exceed 0.9
   (SpeechBrain rescales every mixture to a 0.9 peak; keeping the drawn levels
   keeps the distribution above true).

Shape legend: T = samples, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

import csv
import math
import os

import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

#: dynamic mixing: level of the first speaker, dB (mean, std), SB's WSJ0 stats
FIRST_LEVEL_DB = (-27.43, 2.57)
#: dynamic mixing: level of every other speaker relative to the first, dB
RELATIVE_LEVEL_DB = (-2.51, 2.66)
#: dynamic mixing: levels are clipped to this range, dB full scale
LEVEL_RANGE_DB = (-45.0, 0.0)
#: dynamic mixing: SNR of the loudest speaker over the noise, dB (uniform)
NOISE_SNR_DB = (-6.0, 3.0)
#: dynamic mixing: largest allowed peak of the mixture and sources
MAX_PEAK = 0.9

_warned_rates = set()


def audio_length(path, sample_rate: int) -> int:
    """Number of samples ``path`` has once resampled to ``sample_rate``.

    Arguments
    ---------
    path : str
        An audio file soundfile can read.
    sample_rate : int
        The rate the samples are counted at, Hz.

    Returns
    -------
    int

    Example
    -------
    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "a.wav")
    ...     sf.write(path, np.zeros(16000), 16000)
    ...     audio_length(path, 8000)
    8000
    """
    info = sf.info(path)
    return int(info.frames * sample_rate // info.samplerate)


def read_segment(
    path, sample_rate: int, offset: int = 0, num_samples: int = None
) -> torch.Tensor:
    """Read ``num_samples`` samples of a mono file from ``offset``, at a rate.

    ``offset`` and ``num_samples`` count samples at ``sample_rate``; a file
    stored at another rate is read over the matching span (plus a few
    samples of context) and resampled.

    Arguments
    ---------
    path : str
        A mono audio file.
    sample_rate : int
        The rate wanted, Hz.
    offset : int
        First sample to return.
    num_samples : int, optional
        How many samples to return; by default up to the end of the file.

    Returns
    -------
    torch.Tensor
        float32 samples [T] (fewer than ``num_samples`` at the file's end).

    Example
    -------
    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "a.wav")
    ...     sf.write(path, np.random.randn(8000) * 0.1, 8000)
    ...     read_segment(path, 8000, offset=100, num_samples=400).shape
    torch.Size([400])
    """
    info = sf.info(path)
    if info.channels != 1:
        raise ValueError(
            f"{path} has {info.channels} channels; separation data must be "
            "mono. Downmix it (e.g. `sox in.wav out.wav remix -`) or fix the "
            "dataset preparation."
        )
    file_rate = info.samplerate
    if file_rate == sample_rate:
        stop = None if num_samples is None else offset + num_samples
        audio, _ = sf.read(
            path, start=offset, stop=stop, dtype="float32", always_2d=True
        )
        return torch.from_numpy(audio[:, 0].copy())  # [T]

    if (file_rate, sample_rate) not in _warned_rates:
        _warned_rates.add((file_rate, sample_rate))
        logger.warning(
            f"{path} is at {file_rate} Hz, the recipe at {sample_rate} Hz: "
            "resampling on the fly (prepare the data at the recipe's rate to "
            "avoid the cost)"
        )
    # the span at the file's rate, with a little context for the filter
    context = 64
    start = max(0, math.floor(offset * file_rate / sample_rate) - context)
    stop = None
    if num_samples is not None:
        stop = math.ceil((offset + num_samples) * file_rate / sample_rate)
        stop += context
    audio, _ = sf.read(
        path, start=start, stop=stop, dtype="float32", always_2d=True
    )
    resampled = torchaudio.functional.resample(
        torch.from_numpy(audio[:, 0].copy()), file_rate, sample_rate
    )  # [T']
    skip = offset - round(start * sample_rate / file_rate)
    end = None if num_samples is None else skip + num_samples
    return resampled[skip:end].contiguous()  # [T]


def csv_columns(csv_path) -> list:
    """The header of a CSV file.

    Arguments
    ---------
    csv_path : str
        A CSV file.

    Returns
    -------
    list of str
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"{csv_path} does not exist; run the dataset preparation first "
            "(train.py does it unless skip_prep is set)"
        )
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def source_columns(csv_path, num_spks: int) -> list:
    """``["s1_wav", ..., "sS_wav"]``, checked against the CSV's header.

    Arguments
    ---------
    csv_path : str
        A separation CSV.
    num_spks : int
        S.

    Returns
    -------
    list of str
    """
    header = csv_columns(csv_path)
    needed = ["mix_wav"] + [f"s{k}_wav" for k in range(1, num_spks + 1)]
    missing = [name for name in needed if name not in header]
    if missing:
        raise ValueError(
            f"{csv_path} lacks the column(s) {', '.join(missing)} needed for "
            f"num_spks={num_spks}; its columns are {', '.join(header)}. Set "
            "num_spks to the dataset's number of speakers or re-run the "
            "preparation."
        )
    return needed[1:]


def random_offset(length: int, num_samples: int) -> int:
    """A uniform offset such that ``num_samples`` fit in ``length``.

    Arguments
    ---------
    length : int
        Available samples.
    num_samples : int
        Samples wanted (at most ``length``).

    Returns
    -------
    int

    Example
    -------
    >>> 0 <= random_offset(100, 30) <= 70
    True
    """
    return int(torch.randint(0, length - num_samples + 1, ()).item())


def separation_dataset(
    csv_path,
    num_spks: int,
    sample_rate: int,
    segment_seconds: float = None,
) -> DynamicItemDataset:
    """A dataset of (mixture, sources[, noise]) read from a separation CSV.

    Arguments
    ---------
    csv_path : str
        ``train.csv``, ``valid.csv`` or ``test.csv`` from a preparation.
    num_spks : int
        S, the number of ``sK_wav`` columns used.
    sample_rate : int
        Rate of the returned signals, Hz.
    segment_seconds : float, optional
        Random crop length (training); whole utterances when None.

    Returns
    -------
    DynamicItemDataset
        Items ``id``, ``mix_sig`` [T], ``targets`` [T, S] and, when the CSV
        has ``noise_wav``, ``noise_sig`` [T].

    Example
    -------
    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("mix", "s1", "s2"):
    ...     sf.write(f"{folder}/{name}.wav", np.random.randn(4000) * .1, 8000)
    >>> with open(f"{folder}/train.csv", "w") as handle:
    ...     _ = handle.write("ID,duration,mix_wav,s1_wav,s2_wav\\n")
    ...     _ = handle.write(f"a,0.5,{folder}/mix.wav,{folder}/s1.wav,"
    ...                      f"{folder}/s2.wav\\n")
    >>> dataset = separation_dataset(f"{folder}/train.csv", 2, 8000, 0.25)
    >>> dataset[0]["targets"].shape
    torch.Size([2000, 2])
    """
    sources = source_columns(csv_path, num_spks)
    has_noise = "noise_wav" in csv_columns(csv_path)
    inputs = ["mix_wav", *sources] + (["noise_wav"] if has_noise else [])
    outputs = ["mix_sig", "targets"] + (["noise_sig"] if has_noise else [])
    segment = _segment_samples(segment_seconds, sample_rate)

    @takes(*inputs)
    @provides(*outputs)
    def read_item(*paths):
        # one offset for every file, so mixture, sources and noise stay aligned
        length = min(audio_length(path, sample_rate) for path in paths)
        num_samples = crop_length(length, segment, sample_rate)
        offset = random_offset(length, num_samples)
        signals = [
            read_segment(path, sample_rate, offset, num_samples)
            for path in paths
        ]
        num_samples = min(signal.shape[0] for signal in signals)
        signals = [signal[:num_samples] for signal in signals]
        yield signals[0]  # mix_sig [T]
        yield torch.stack(signals[1 : 1 + num_spks], dim=-1)  # targets [T, S]
        if has_noise:
            yield signals[-1]  # noise_sig [T]

    dataset = DynamicItemDataset.from_csv(csv_path)
    dataset.add_dynamic_item(read_item)
    dataset.set_output_keys(["id", *outputs])
    return dataset


def dynamic_mixing_dataset(
    csv_path,
    sources_csv,
    num_spks: int,
    sample_rate: int,
    segment_seconds: float = None,
    first_level_db: tuple = FIRST_LEVEL_DB,
    relative_level_db: tuple = RELATIVE_LEVEL_DB,
    noise_snr_db: tuple = NOISE_SNR_DB,
    epoch_size: int = None,
) -> DynamicItemDataset:
    """A training set whose every item is a freshly drawn mixture.

    The epoch has ``epoch_size`` items, or as many as ``csv_path`` has rows;
    each item ignores its row's files and mixes S different speakers from
    ``sources_csv`` (see the module docstring for the draws). When
    ``csv_path`` has a ``noise_wav`` column, a random row's noise is added.

    Arguments
    ---------
    csv_path : str
        The dataset's ``train.csv`` (sets the epoch size; noise files).
    sources_csv : str
        ``train_sources.csv``: ``ID, duration, wav, spk_id``.
    num_spks : int
        S, speakers per mixture.
    sample_rate : int
        Rate of the returned signals, Hz.
    segment_seconds : float, optional
        Longest mixture; the shortest drawn utterance when None or shorter.
    first_level_db : tuple of float
        (mean, std) of the first speaker's level, dB full scale.
    relative_level_db : tuple of float
        (mean, std) of the other speakers' levels relative to the first, dB.
    noise_snr_db : tuple of float
        (low, high) of the uniform SNR of the loudest speaker over the noise.
    epoch_size : int, optional
        Mixtures per epoch (validation and checkpoints come that often);
        by default the number of rows of ``csv_path``.

    Returns
    -------
    DynamicItemDataset
        Items ``id``, ``mix_sig`` [T], ``targets`` [T, S] (and ``noise_sig``
        [T] when the dataset has noise).
    """
    if sources_csv is None:
        raise ValueError(
            f"dynamic mixing needs single-speaker sources (train_sources.csv) "
            f"and the dataset of {csv_path} has none; set dynamic_mixing to "
            "False for it"
        )
    speakers = _speaker_table(sources_csv)
    if len(speakers) < num_spks:
        raise ValueError(
            f"{sources_csv} lists {len(speakers)} speaker(s); dynamic mixing "
            f"of {num_spks} different speakers needs at least {num_spks}. "
            "Turn dynamic_mixing off or prepare more training speakers."
        )
    speaker_ids = sorted(speakers)
    weights = torch.tensor(
        [float(len(speakers[spk])) for spk in speaker_ids]
    )  # utterances per speaker
    noise_files = []
    if "noise_wav" in csv_columns(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as handle:
            noise_files = [row["noise_wav"] for row in csv.DictReader(handle)]
    outputs = ["mix_sig", "targets"] + (["noise_sig"] if noise_files else [])
    segment = _segment_samples(segment_seconds, sample_rate)
    logger.info(
        f"dynamic mixing from {sources_csv}: {len(speakers)} speakers, "
        f"{int(weights.sum())} utterances"
        + (f", noise from {len(noise_files)} files" if noise_files else "")
    )

    @takes("id")
    @provides(*outputs)
    def mix_item(_unused_id):
        drawn = torch.multinomial(weights, num_spks, replacement=False)
        files = []
        for index in drawn.tolist():
            utterances = speakers[speaker_ids[index]]
            pick = torch.randint(len(utterances), ()).item()
            files.append(utterances[pick])
        if noise_files:
            pick = torch.randint(len(noise_files), ()).item()
            files.append(noise_files[pick])
        lengths = [audio_length(path, sample_rate) for path in files]
        num_samples = crop_length(min(lengths), segment, sample_rate)
        signals = [
            read_segment(
                path,
                sample_rate,
                random_offset(length, num_samples),
                num_samples,
            )
            for path, length in zip(files, lengths, strict=True)
        ]
        num_samples = min(signal.shape[0] for signal in signals)
        signals = [signal[:num_samples] for signal in signals]

        levels = _draw_levels(num_spks, first_level_db, relative_level_db)
        sources = torch.stack(
            [
                set_level(source, level)
                for source, level in zip(
                    signals[:num_spks], levels, strict=True
                )
            ],
            dim=-1,
        )  # [T, S]
        mixture = sources.sum(dim=-1)  # [T]
        noise = None
        if noise_files:
            snr = torch.empty(()).uniform_(*noise_snr_db).item()
            noise = set_level(signals[-1], max(levels) - snr)  # [T]
            mixture = mixture + noise
        peak = max(mixture.abs().max().item(), sources.abs().max().item())
        if peak > MAX_PEAK:
            scale = MAX_PEAK / peak
            mixture, sources = mixture * scale, sources * scale
            noise = None if noise is None else noise * scale
        yield mixture  # mix_sig [T]
        yield sources  # targets [T, S]
        if noise is not None:
            yield noise  # noise_sig [T]

    if epoch_size is None:
        dataset = DynamicItemDataset.from_csv(csv_path)
    else:
        if epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        dataset = DynamicItemDataset(
            {f"dm_{index:07d}": {} for index in range(epoch_size)}
        )
    dataset.add_dynamic_item(mix_item)
    dataset.set_output_keys(["id", *outputs])
    return dataset


def level_db(signal: torch.Tensor) -> float:
    """Mean absolute amplitude in dB full scale (SpeechBrain's "avg" level).

    Arguments
    ---------
    signal : torch.Tensor
        Samples [T].

    Returns
    -------
    float

    Example
    -------
    >>> round(level_db(torch.full((100,), 0.1)), 3)
    -20.0
    """
    return 20 * math.log10(signal.abs().mean().item() + 1e-12)


def set_level(signal: torch.Tensor, target_db: float) -> torch.Tensor:
    """Scale ``signal`` so that :func:`level_db` equals ``target_db``.

    A silent signal is returned unchanged (no level to scale from).

    Arguments
    ---------
    signal : torch.Tensor
        Samples [T].
    target_db : float
        The level wanted, dB full scale.

    Returns
    -------
    torch.Tensor
        Scaled samples [T].

    Example
    -------
    >>> round(level_db(set_level(torch.randn(1000), -30.0)), 4)
    -30.0
    """
    current = signal.abs().mean()
    if current.item() < 1e-9:
        return signal
    return signal * (10 ** (target_db / 20) / current)


def _draw_levels(num_spks, first_level_db, relative_level_db) -> list:
    """Speaker levels (dB): the first ~ N, the others relative to it."""
    low, high = LEVEL_RANGE_DB
    first = torch.normal(*first_level_db, ()).item()
    levels = [min(max(first, low), high)]
    for _ in range(1, num_spks):
        level = levels[0] + torch.normal(*relative_level_db, ()).item()
        levels.append(min(max(level, low), high))
    return levels


def _speaker_table(sources_csv) -> dict:
    """``spk_id`` -> list of wav paths, from ``train_sources.csv``."""
    header = csv_columns(sources_csv)
    missing = [name for name in ("wav", "spk_id") if name not in header]
    if missing:
        raise ValueError(
            f"{sources_csv} lacks the column(s) {', '.join(missing)}; "
            "dynamic mixing needs ID, duration, wav, spk_id"
        )
    speakers = {}
    with open(sources_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            speakers.setdefault(row["spk_id"], []).append(row["wav"])
    return speakers


def crop_length(available: int, segment, sample_rate: int) -> int:
    """Samples of a training crop: ``segment``, or less when the audio is
    shorter, rounded down to a multiple of 1/8 s.

    The rounding keeps the number of distinct tensor shapes small: oneDNN
    caches a convolution primitive (with its buffers) per shape, and
    hundreds of crop lengths made a training process grow by gigabytes.

    Arguments
    ---------
    available : int
        Samples the files have.
    segment : int or None
        Longest crop in samples; None keeps whole utterances (no rounding).
    sample_rate : int
        Hz.

    Returns
    -------
    int

    Example
    -------
    >>> crop_length(19100, 24000, 8000), crop_length(900, 24000, 8000)
    (19000, 900)
    """
    if segment is None:
        return available
    num_samples = min(segment, available)
    quantum = max(sample_rate // 8, 1)
    if num_samples >= quantum:
        num_samples -= num_samples % quantum
    return num_samples


def _segment_samples(segment_seconds, sample_rate):
    """Crop length in samples, or None for whole utterances."""
    if segment_seconds is None:
        return None
    if segment_seconds <= 0:
        raise ValueError(
            f"segment_seconds={segment_seconds}: the training crop must be "
            "positive (or null for whole utterances)"
        )
    return int(round(segment_seconds * sample_rate))
