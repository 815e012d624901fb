"""Reading and writing the audio a user hands to the separator.

SpeechBrain's ``SepformerSeparation.separate_file`` (v1.1) downmixes a
multi-channel file only when it also resamples it (an un-resampled stereo
file becomes a batch of two "mixtures"), peak-normalises its outputs, and
passes NaN samples straight to the model (MODELS.md §8). This module fixes
what the inference interface (:mod:`speechbrain_s4.inference`) does instead:

* any format ``soundfile`` (libsndfile) reads: WAV, FLAC, OGG/Vorbis,
  OGG/Opus, MP3 with libsndfile >= 1.1, AIFF, ...; a missing, unreadable or
  empty file raises one error naming it;
* multi-channel audio is **always** averaged to mono, resampled or not;
* NaN or infinite samples raise a ``ValueError`` naming the file, the count
  and the time of the first one (a model would turn them into NaN outputs);
* resampling uses ``torchaudio.functional.resample`` (windowed sinc), to the
  model's rate on the way in and back to the file's rate on the way out;
* outputs are written as 32-bit float WAV, **without** normalisation: the
  estimates keep the level the model gives them and values beyond +-1 are
  not clipped (16-bit PCM would clip them).

Shape legend: B = batch, T = samples, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np  # noqa: F401  (used by the doctests)
import soundfile as sf
import torch
import torchaudio

__all__ = [
    "read_mixture",
    "resample",
    "write_estimates",
    "check_finite",
]


def check_finite(signal: torch.Tensor, name: str, sample_rate=None) -> None:
    """Raise ``ValueError`` if ``signal`` holds NaN or infinite samples.

    Arguments
    ---------
    signal : torch.Tensor
        Any shape; the last axis is time.
    name : str
        What the signal is (a file name), for the message.
    sample_rate : int, optional
        Rate in Hz, to say *when* the first bad sample occurs.

    Example
    -------
    >>> check_finite(torch.zeros(2, 80), "mixture")
    >>> check_finite(torch.tensor([0.0, float("nan")]), "x.wav", 8000)
    Traceback (most recent call last):
    ...
    ValueError: x.wav contains 1 NaN/infinite sample(s), the first at 0.000125 s...
    """
    bad = ~torch.isfinite(signal)
    if not bool(bad.any()):
        return
    first = int(bad.reshape(-1, signal.shape[-1]).any(0).nonzero()[0])
    where = f"{first / sample_rate:g} s" if sample_rate else f"sample {first}"
    raise ValueError(
        f"{name} contains {int(bad.sum())} NaN/infinite sample(s), the first "
        f"at {where}; repair or re-export the audio (a separator cannot "
        "process them)"
    )


def read_mixture(path) -> tuple[torch.Tensor, int]:
    """Read an audio file as one mono mixture at its own rate.

    Arguments
    ---------
    path : str or os.PathLike
        Any file ``soundfile`` reads.

    Returns
    -------
    mixture : torch.Tensor
        [T] float32 (integer PCM scaled to [-1, 1)); channels averaged.
    sample_rate : int
        The file's rate in Hz.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not readable as audio, no samples, or NaN/infinite samples.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "stereo.wav")
    >>> sf.write(path, np.ones((800, 2)) * [0.5, -0.25], 8000)
    >>> mixture, rate = read_mixture(path)
    >>> mixture.shape, rate, float(mixture[0])
    (torch.Size([800]), 8000, 0.125)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no audio file at {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give an audio file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"cannot read {path} as audio ({err}); give a file soundfile "
            "reads (WAV, FLAC, OGG, MP3, AIFF, ...)"
        ) from err
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"{path} holds no audio samples (empty file)")
    mixture = torch.from_numpy(audio).mean(dim=1)  # [T]
    check_finite(torch.from_numpy(audio).T, path, rate)
    return mixture, int(rate)


def resample(
    signal: torch.Tensor, orig_rate: int, target_rate: int
) -> torch.Tensor:
    """Resample along the last axis (identity when the rates agree).

    Arguments
    ---------
    signal : torch.Tensor
        [..., T].
    orig_rate, target_rate : int
        Rates in Hz.

    Returns
    -------
    torch.Tensor
        [..., ceil(T * target_rate / orig_rate)].

    Example
    -------
    >>> resample(torch.zeros(2, 16000), 16000, 8000).shape
    torch.Size([2, 8000])
    """
    if int(orig_rate) == int(target_rate):
        return signal
    return torchaudio.functional.resample(
        signal, int(orig_rate), int(target_rate)
    )


def write_estimates(
    estimates: torch.Tensor, sample_rate: int, out_dir, stem: str
) -> list[Path]:
    """Write each speaker's estimate to ``<out_dir>/<stem>_s<k>.wav``.

    Written as 32-bit float WAV at ``sample_rate``, unnormalised (see the
    module docstring).

    Arguments
    ---------
    estimates : torch.Tensor
        [T, S] waveforms.
    sample_rate : int
        Rate in Hz of the estimates.
    out_dir : str or os.PathLike
        Output folder (created if needed).
    stem : str
        File name prefix, usually the mixture's name without extension.

    Returns
    -------
    list of pathlib.Path
        The S files written, speaker 1 first.

    Example
    -------
    >>> import tempfile
    >>> paths = write_estimates(torch.zeros(80, 2), 8000, tempfile.mkdtemp(), "a")
    >>> [path.name for path in paths]
    ['a_s1.wav', 'a_s2.wav']
    """
    if estimates.dim() != 2:
        raise ValueError(
            f"estimates must be [T, S], got shape {tuple(estimates.shape)}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = estimates.detach().float().cpu().numpy()  # [T, S]
    paths = []
    for k in range(values.shape[1]):
        path = out_dir / f"{stem}_s{k + 1}.wav"
        sf.write(str(path), values[:, k], int(sample_rate), subtype="FLOAT")
        paths.append(path)
    return paths
