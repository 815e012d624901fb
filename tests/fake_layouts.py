"""Fake dataset folders of every layout, for tests.

``make_fake_layout(name, root)`` writes a miniature copy of a dataset's
folder tree (MODELS.md §6): a few short 16-bit WAVs per folder, identical
names across sibling folders, the magic path parts SpeechBrain's recipes
look for (``wsj`` + ``2speakers``, ``Libri2Mix``, ``wham_original``,
``whamr``) and the ``wav8k/min`` levels, and returns the folder a user
would pass as ``data_folder``. The signals are consistent, so a tiny
training run sees real separation targets:

* sources are harmonic tones with a slow amplitude envelope (different
  pitch per utterance), noise is low-level white noise;
* files are written as 16-bit integers and mixtures are integer sums, so
  ``mix == s1 + s2 (+ noise)`` holds exactly in the files;
* WSJ0-2mix-style "min" mixtures truncate both utterances to the shorter,
  and each utterance appears in two mixtures with different lengths (for
  the de-duplication of ``train_sources.csv``);
* utterance k lasts ``seconds + 0.125 * k``, so mixture durations vary and
  a test can check that they come from the headers.

Example
-------
>>> import tempfile
>>> folder = make_fake_layout("wsj0mix", tempfile.mkdtemp())
>>> folder.name, len(list((folder / "wav8k/min/tr/mix").iterdir()))
('2speakers', 3)
"""

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbrain_s4.minimix import write_pcm16

#: Every layout name (the ``recipes/<name>/prepare.py`` modules).
LAYOUTS = (
    "wsj0mix",
    "librimix",
    "wham",
    "whamr",
    "lrs2mix",
    "echo2mix",
    "minimix",
)

_WSJ_SPLITS = ("tr", "cv", "tt")
_RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}


def _source(num_samples, sample_rate, f0, rng):
    """A harmonic tone with a slow envelope, as int32 16-bit values."""
    t = np.arange(num_samples) / sample_rate
    tone = sum(
        np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k
        for k in (1, 2, 3)
    )
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t) ** 2
    return np.round(3000 * tone * envelope).astype(np.int32)


def _noise(num_samples, rng):
    return np.round(rng.normal(0, 300, num_samples)).astype(np.int32)


def _reverberate(signal, sample_rate, rng):
    """Convolve with a short exponentially decaying random RIR, same length."""
    taps = int(0.05 * sample_rate)
    rir = rng.normal(0, 1, taps) * np.exp(
        -np.arange(taps) / (0.01 * sample_rate)
    )
    rir[0] = 1.0
    wet = np.convolve(signal, rir / np.sum(np.abs(rir)))[: len(signal)]
    return np.round(wet).astype(np.int32)


def _write(path, values, sample_rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pcm16(path, values, sample_rate)


class _Utterances:
    """Utterance ``k`` of a split: fixed pitch and length, drawn once."""

    def __init__(self, sample_rate, seconds, count, rng):
        self.signals = [
            _source(
                int((seconds + 0.125 * k) * sample_rate),
                sample_rate,
                110.0 * (k + 1),
                rng,
            )
            for k in range(count)
        ]

    def pair(self, index):
        """Utterances (index, index + 1): each utterance is in two mixtures."""
        first = self.signals[index % len(self.signals)]
        second = self.signals[(index + 1) % len(self.signals)]
        length = min(len(first), len(second))  # WSJ0-2mix "min"
        return first[:length], second[:length]


def _wsj_name(split, index, count):
    """``<utt1>_<snr1>_<utt2>_<snr2>`` with speaker = first 3 characters."""
    utts = [
        f"{100 * _WSJ_SPLITS.index(split) + k:03d}c020{k}" for k in range(count)
    ]
    snr = 0.5 + index / 10
    return f"{utts[index]}_{snr:.4f}_{utts[(index + 1) % count]}_{-snr:.4f}"


def _librispeech_name(split, index, count):
    """``<spk-chap-utt>_<spk-chap-utt>``; speakers unique per split."""
    offset = {"train-100": 100, "train-360": 200, "dev": 300, "test": 400}[
        split
    ]
    utts = [f"{offset + k}-{1000 + k}-{k:04d}" for k in range(count)]
    return f"{utts[index]}_{utts[(index + 1) % count]}"


def _wsj0mix_signals(s1, s2, noise, rng, sample_rate):
    return {"mix": s1 + s2, "s1": s1, "s2": s2}


def _wham_signals(s1, s2, noise, rng, sample_rate):
    """WHAM! folders; Libri2Mix has the same six."""
    return {
        "mix_clean": s1 + s2,
        "mix_single": s1 + noise,
        "mix_both": s1 + s2 + noise,
        "s1": s1,
        "s2": s2,
        "noise": noise,
    }


def _whamr_signals(s1, s2, noise, rng, sample_rate):
    r1 = _reverberate(s1, sample_rate, rng)
    r2 = _reverberate(s2, sample_rate, rng)
    return {
        "mix_single_anechoic": s1 + noise,
        "mix_clean_anechoic": s1 + s2,
        "mix_both_anechoic": s1 + s2 + noise,
        "mix_single_reverb": r1 + noise,
        "mix_clean_reverb": r1 + r2,
        "mix_both_reverb": r1 + r2 + noise,
        "s1_anechoic": s1,
        "s2_anechoic": s2,
        "s1_reverb": r1,
        "s2_reverb": r2,
        "noise": noise,
    }


#: ``<folder>/wavXk/min/<split>/<signal>/<name>.wav`` layouts:
#: name -> (data folder below root, split folders, file namer, signals).
_WSJ_STYLE = {
    "wsj0mix": ("wsj0-mix/2speakers", _WSJ_SPLITS, _wsj_name, _wsj0mix_signals),
    "librimix": (
        "Libri2Mix",
        ("train-100", "train-360", "dev", "test"),
        _librispeech_name,
        _wham_signals,
    ),
    "wham": ("wham_original", _WSJ_SPLITS, _wsj_name, _wham_signals),
    "whamr": ("whamr", _WSJ_SPLITS, _wsj_name, _whamr_signals),
}


def _wsj_style(name, root, sample_rate, num_files, seconds, rng):
    """Write a WSJ0-2mix-style layout (see :data:`_WSJ_STYLE`)."""
    folder_name, splits, name_of, signals = _WSJ_STYLE[name]
    folder = root / folder_name
    base = folder / _RATE_FOLDERS[sample_rate] / "min"
    for split in splits:
        utterances = _Utterances(sample_rate, seconds, num_files, rng)
        for index in range(num_files):
            s1, s2 = utterances.pair(index)
            noise = _noise(len(s1), rng)
            file_name = f"{name_of(split, index, num_files)}.wav"
            for sub, values in signals(s1, s2, noise, rng, sample_rate).items():
                _write(base / split / sub / file_name, values, sample_rate)
    return folder


def _lrs2mix(root, sample_rate, num_files, seconds, rng):
    folder = root / "lrs2mix"
    for split in _WSJ_SPLITS:
        utterances = _Utterances(sample_rate, seconds, num_files, rng)
        for index in range(num_files):
            s1, s2 = utterances.pair(index)
            name = (
                f"{6330311066473698535 + index}_00011_0.53_{index}_00010_-0.53"
            )
            for sub, values in {"mix": s1 + s2, "s1": s1, "s2": s2}.items():
                _write(
                    folder / split / sub / f"{name}.wav", values, sample_rate
                )
    return folder


def _echo2mix(root, sample_rate, num_files, seconds, rng):
    folder = root / "Echo2Mix"
    for split in ("train", "val", "test"):
        utterances = _Utterances(sample_rate, seconds, num_files, rng)
        for index in range(num_files):
            s1, s2 = utterances.pair(index)
            r1, r2 = (
                _reverberate(s1, sample_rate, rng),
                _reverberate(s2, sample_rate, rng),
            )
            item = folder / split / f"{1089 + index}_{2300 + index}"
            _write(item / "mix.wav", r1 + r2, sample_rate)
            _write(item / "spk1_reverb.wav", r1, sample_rate)
            _write(item / "spk2_reverb.wav", r2, sample_rate)
    return folder


def _minimix(root, sample_rate, num_files, seconds, rng):
    folder = root / "minimix"
    base = folder / _RATE_FOLDERS[sample_rate]
    voices = ("voice_a", "voice_b", "voice_c")
    for split in ("train", "valid", "test"):
        utterances = _Utterances(sample_rate, seconds, num_files, rng)
        utt_ids = [f"{voices[k % 3]}-{k:04d}" for k in range(num_files)]
        for k, signal in enumerate(utterances.signals):
            _write(
                base / "sources" / split / voices[k % 3] / f"{utt_ids[k]}.wav",
                signal,
                sample_rate,
            )
        for index in range(num_files):
            s1, s2 = utterances.pair(index)
            noise = _noise(len(s1), rng)
            name = f"{index:05d}_{utt_ids[index]}_{utt_ids[(index + 1) % num_files]}"
            signals = {
                "mix_clean": s1 + s2,
                "mix_both": s1 + s2 + noise,
                "s1": s1,
                "s2": s2,
                "noise": noise,
            }
            for sub, values in signals.items():
                _write(base / split / sub / f"{name}.wav", values, sample_rate)
    metadata = {"dataset": "minimix", "fake": True, "sample_rate": sample_rate}
    (base / "metadata.json").write_text(json.dumps(metadata))
    return folder


_BUILDERS = {
    **{
        name: lambda *args, name=name: _wsj_style(name, *args)
        for name in _WSJ_STYLE
    },
    "lrs2mix": _lrs2mix,
    "echo2mix": _echo2mix,
    "minimix": _minimix,
}


def make_fake_layout(
    name: str,
    root,
    sample_rate: int = 8000,
    num_files: int = 3,
    seconds: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a fake ``name`` dataset below ``root``; return its data folder.

    Arguments
    ---------
    name : str
        One of :data:`LAYOUTS`.
    root : str or Path
        Parent folder (e.g. pytest's ``tmp_path``).
    sample_rate : int
        8000 or 16000 for the ``wav8k``/``wav16k`` layouts; any rate for
        LRS2-2Mix and Echo2Mix (really 16 kHz datasets).
    num_files : int
        Mixtures per split folder (at least 2).
    seconds : float
        Length of the shortest utterance; utterance k lasts
        ``seconds + 0.125 * k``.
    seed : int
        Seed of the signals.

    Returns
    -------
    Path
        The folder to pass as ``data_folder`` to ``recipes.<name>.prepare``.
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown layout {name!r}; expected one of {', '.join(LAYOUTS)}"
        )
    if num_files < 2:
        raise ValueError(
            "num_files must be at least 2 (mixtures pair utterances)"
        )
    rng = np.random.default_rng(seed)
    return _BUILDERS[name](
        Path(root).absolute(), sample_rate, num_files, seconds, rng
    )


def make_echo2mix_json(data_folder, json_dir) -> Path:
    """Write SPMamba-style JSON lists for a fake Echo2Mix folder.

    ``<json_dir>/{train,val,test}/{mix,s1,s2}.json``, each a list of
    ``[absolute wav path, num_samples]`` aligned by index.

    Arguments
    ---------
    data_folder : str or Path
        From ``make_fake_layout("echo2mix", ...)``.
    json_dir : str or Path
        Where the lists go.

    Returns
    -------
    Path
        ``json_dir``.
    """
    files = {"mix": "mix.wav", "s1": "spk1_reverb.wav", "s2": "spk2_reverb.wav"}
    json_dir = Path(json_dir)
    for split in ("train", "val", "test"):
        items = sorted(
            p for p in (Path(data_folder) / split).iterdir() if p.is_dir()
        )
        (json_dir / split).mkdir(parents=True, exist_ok=True)
        for key, file_name in files.items():
            entries = [
                [str(item / file_name), sf.info(str(item / file_name)).frames]
                for item in items
            ]
            (json_dir / split / f"{key}.json").write_text(json.dumps(entries))
    return json_dir
