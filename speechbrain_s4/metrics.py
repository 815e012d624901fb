"""Separation metrics: SI-SNR(i), SDR(i) and the per-utterance results CSV.

* **SI-SNR** (scale-invariant signal-to-noise ratio; Le Roux et al., "SDR -
  half-baked or well done?", ICASSP 2019, where it is called SI-SDR) is
  SpeechBrain's definition (MODELS.md §1.2): both signals made zero-mean,
  s_t = <ŝ, s> s / (||s||² + ε), e = ŝ - s_t,
  SI-SNR = 10 log10(||s_t||² / (||e||² + ε) + ε), ε = 1e-8, averaged over
  the speakers of the best permutation (PIT; Yu et al., ICASSP 2017).
* **SI-SNRi** = SI-SNR(estimates) - SI-SNR(mixture, repeated per speaker).
* **SDR** is BSS Eval v3 (Vincent et al., IEEE TASLP 2006): a 512-tap
  time-invariant distortion filter, permutation chosen by mean SIR, exactly
  ``mir_eval.separation.bss_eval_sources``; it is computed with
  ``fast_bss_eval`` (Scheibler, ICASSP 2022), which solves the same systems
  faster. Its ``bss_eval_sources(ref, est)`` takes the **reference first**.
  **SDRi** = mean SDR(estimates) - mean SDR(mixture repeated S times).
* **PESQ** (ITU-T P.862; ``pesq`` package, narrow-band at 8 kHz, wide-band at
  16 kHz) and **STOI** (Taal et al., IEEE TASLP 2011; ``pystoi``) are added as
  ``pesq`` / ``stoi`` columns when those packages are importable (and, for
  PESQ, the rate is 8 or 16 kHz); the columns are absent otherwise. Each
  estimate is scored against the reference the SI-SNR permutation pairs it
  with, then averaged over speakers.

The results CSV has the columns of SpeechBrain's ``test_results.csv``
(``snt_id, sdr, sdr_i, si-snr, si-snr_i``), any optional columns after them,
and a last ``avg`` row holding the column means.

Shape legend: B = batch, T = samples, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

import csv
import importlib.util
import itertools
import os

import fast_bss_eval
import numpy as np
import torch
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

#: the columns every results CSV has, in order (SpeechBrain's names)
RESULT_COLUMNS = ("snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i")

#: optional perceptual columns, in the order they are appended
OPTIONAL_COLUMNS = ("pesq", "stoi")

#: BSS Eval v3 distortion filter length (taps), as in mir_eval
SDR_FILTER_LENGTH = 512

#: PESQ modes by sampling rate (P.862 is defined for these two rates only)
PESQ_MODES = {8000: "nb", 16000: "wb"}


def si_snr(targets: torch.Tensor, estimates: torch.Tensor) -> torch.Tensor:
    """Permutation-invariant SI-SNR in dB, per utterance (higher is better).

    SpeechBrain's ``get_si_snr_with_pitwrapper`` (its training loss, negated).
    That function scales its estimate argument in place, so it gets clones.
    Padding counts: pass whole, unpadded utterances for exact values.

    Arguments
    ---------
    targets : torch.Tensor
        Reference sources [B, T, S].
    estimates : torch.Tensor
        Estimated sources [B, T, S].

    Returns
    -------
    torch.Tensor
        SI-SNR [B], mean over the speakers of the best permutation.

    Example
    -------
    >>> targets = torch.randn(2, 800, 2)
    >>> si_snr(targets, targets.flip(-1) + 0.1 * torch.randn(2, 800, 2)).shape
    torch.Size([2])
    """
    if targets.shape != estimates.shape or targets.dim() != 3:
        raise ValueError(
            f"targets {tuple(targets.shape)} and estimates "
            f"{tuple(estimates.shape)} must both be [B, T, S]"
        )
    return -get_si_snr_with_pitwrapper(targets.clone(), estimates.clone())


def si_snr_improvement(
    mixture: torch.Tensor, targets: torch.Tensor, estimates: torch.Tensor
) -> tuple:
    """SI-SNR of the estimates and its improvement over the mixture, in dB.

    Arguments
    ---------
    mixture : torch.Tensor
        The input mixture [B, T].
    targets : torch.Tensor
        Reference sources [B, T, S].
    estimates : torch.Tensor
        Estimated sources [B, T, S].

    Returns
    -------
    si_snr : torch.Tensor
        [B] SI-SNR of the estimates.
    si_snr_i : torch.Tensor
        [B] SI-SNR(estimates) - SI-SNR(mixture repeated per speaker).

    Example
    -------
    >>> targets = torch.randn(1, 800, 2)
    >>> value, gain = si_snr_improvement(targets.sum(-1), targets, targets)
    >>> gain.shape
    torch.Size([1])
    """
    baseline = mixture.unsqueeze(-1).expand_as(targets)  # [B, T, S]
    value = si_snr(targets, estimates)  # [B]
    return value, value - si_snr(targets, baseline)


def sdr_improvement(
    mixture: torch.Tensor, targets: torch.Tensor, estimates: torch.Tensor
) -> tuple:
    """BSS Eval v3 SDR of one utterance and its improvement over the mixture.

    Computed in float64 with ``fast_bss_eval.bss_eval_sources(reference,
    estimate, filter_length=512)`` (exact solver), which matches
    ``mir_eval.separation.bss_eval_sources`` to round-off.

    Arguments
    ---------
    mixture : torch.Tensor
        The input mixture [T].
    targets : torch.Tensor
        Reference sources [T, S].
    estimates : torch.Tensor
        Estimated sources [T, S].

    Returns
    -------
    sdr : float
        Mean SDR of the estimates over speakers (best permutation by SIR).
    sdr_i : float
        ``sdr`` minus the mean SDR of the mixture used as every estimate.

    Example
    -------
    >>> targets = torch.randn(2000, 2)
    >>> estimates = targets + 0.1 * torch.randn(2000, 2)
    >>> sdr, sdr_i = sdr_improvement(targets.sum(-1), targets, estimates)
    >>> sdr > sdr_i > 0
    True
    """
    reference = _to_numpy(targets).T  # [S, T]
    estimated = _to_numpy(estimates).T  # [S, T]
    baseline = np.broadcast_to(_to_numpy(mixture), reference.shape)  # [S, T]
    # an estimate lying exactly in the references' span (e.g. a scaled
    # mixture) has an infinite SAR: fine for the SDR, not worth a warning
    with np.errstate(divide="ignore"):
        sdr, _, _, _ = fast_bss_eval.bss_eval_sources(
            reference, estimated, filter_length=SDR_FILTER_LENGTH
        )
    # every "estimate" is the same mixture, so no permutation search is
    # needed, and SDR alone avoids the SAR of a mixture lying exactly in the
    # references' span (infinite, and a log10(0) warning)
    sdr_mix = fast_bss_eval.sdr(
        reference,
        np.ascontiguousarray(baseline),
        filter_length=SDR_FILTER_LENGTH,
    )
    return float(sdr.mean()), float(sdr.mean() - sdr_mix.mean())


def best_permutation(targets: torch.Tensor, estimates: torch.Tensor) -> tuple:
    """The speaker pairing that maximises mean SI-SNR (float64, one utterance).

    Arguments
    ---------
    targets : torch.Tensor
        Reference sources [T, S].
    estimates : torch.Tensor
        Estimated sources [T, S].

    Returns
    -------
    tuple of int
        ``perm`` such that ``estimates[:, perm[k]]`` estimates
        ``targets[:, k]``.

    Example
    -------
    >>> targets = torch.randn(800, 3)
    >>> best_permutation(targets, targets[:, [2, 0, 1]])
    (1, 2, 0)
    """
    reference = _to_numpy(targets)
    estimated = _to_numpy(estimates)
    reference = reference - reference.mean(axis=0)
    estimated = estimated - estimated.mean(axis=0)
    num_spks = reference.shape[1]
    # pairwise[k, j] = SI-SNR of estimate j against reference k
    pairwise = np.empty((num_spks, num_spks))
    for k, j in itertools.product(range(num_spks), repeat=2):
        pairwise[k, j] = _si_snr_numpy(reference[:, k], estimated[:, j])
    return max(
        itertools.permutations(range(num_spks)),
        key=lambda perm: pairwise[range(num_spks), perm].mean(),
    )


def available_optional_metrics(sample_rate: int) -> tuple:
    """Names of the optional columns computable here at ``sample_rate``.

    Arguments
    ---------
    sample_rate : int
        Sampling rate of the audio in Hz.

    Returns
    -------
    tuple of str
        A subset of ``OPTIONAL_COLUMNS``, in that order.

    Example
    -------
    >>> set(available_optional_metrics(8000)) <= set(OPTIONAL_COLUMNS)
    True
    """
    names = []
    if importlib.util.find_spec("pesq") and sample_rate in PESQ_MODES:
        names.append("pesq")
    if importlib.util.find_spec("pystoi"):
        names.append("stoi")
    return tuple(names)


def perceptual_metrics(
    targets: torch.Tensor,
    estimates: torch.Tensor,
    sample_rate: int,
    names: tuple = None,
) -> dict:
    """PESQ and/or STOI of one utterance, averaged over paired speakers.

    Arguments
    ---------
    targets : torch.Tensor
        Reference sources [T, S].
    estimates : torch.Tensor
        Estimated sources [T, S].
    sample_rate : int
        Sampling rate in Hz.
    names : tuple of str, optional
        Which of ``OPTIONAL_COLUMNS`` to compute; by default every one that
        :func:`available_optional_metrics` reports.

    Returns
    -------
    dict
        ``{"pesq": float, "stoi": float}``, restricted to ``names``.

    Example
    -------
    >>> perceptual_metrics(torch.randn(800, 2), torch.randn(800, 2), 8000, ())
    {}
    """
    if names is None:
        names = available_optional_metrics(sample_rate)
    if not names:
        return {}
    perm = best_permutation(targets, estimates)
    reference = _to_numpy(targets)
    estimated = _to_numpy(estimates)[:, list(perm)]  # paired with reference
    pairs = [(reference[:, k], estimated[:, k]) for k in range(len(perm))]
    scores = {}
    if "pesq" in names:
        from pesq import pesq

        mode = PESQ_MODES[sample_rate]
        scores["pesq"] = float(
            np.mean([pesq(sample_rate, ref, est, mode) for ref, est in pairs])
        )
    if "stoi" in names:
        from pystoi import stoi

        scores["stoi"] = float(
            np.mean([stoi(ref, est, sample_rate) for ref, est in pairs])
        )
    return scores


def utterance_metrics(
    snt_id: str,
    mixture: torch.Tensor,
    targets: torch.Tensor,
    estimates: torch.Tensor,
    sample_rate: int,
) -> dict:
    """Every results-CSV column for one utterance.

    Arguments
    ---------
    snt_id : str
        Utterance identifier (the CSV ``ID``).
    mixture : torch.Tensor
        The input mixture [T] (unpadded).
    targets : torch.Tensor
        Reference sources [T, S].
    estimates : torch.Tensor
        Estimated sources [T, S].
    sample_rate : int
        Sampling rate in Hz (for the optional perceptual metrics).

    Returns
    -------
    dict
        ``snt_id``, ``sdr``, ``sdr_i``, ``si-snr``, ``si-snr_i`` (dB), plus
        ``pesq`` / ``stoi`` when available.

    Example
    -------
    >>> targets = torch.randn(2000, 2)
    >>> row = utterance_metrics(
    ...     "utt1", targets.sum(-1), targets, targets.flip(-1) + 0.1, 8000
    ... )
    >>> list(row)[:5]
    ['snt_id', 'sdr', 'sdr_i', 'si-snr', 'si-snr_i']
    """
    estimates = estimates.detach().float()
    targets = targets.detach().float()
    mixture = mixture.detach().float()
    value, gain = si_snr_improvement(
        mixture[None], targets[None], estimates[None]
    )
    sdr, sdr_i = sdr_improvement(mixture, targets, estimates)
    row = {
        "snt_id": snt_id,
        "sdr": sdr,
        "sdr_i": sdr_i,
        "si-snr": float(value),
        "si-snr_i": float(gain),
    }
    row.update(perceptual_metrics(targets, estimates, sample_rate))
    return row


def write_results_csv(rows: list, path) -> dict:
    """Write per-utterance rows plus an ``avg`` row; return the averages.

    Arguments
    ---------
    rows : list of dict
        Rows from :func:`utterance_metrics`.
    path : str or os.PathLike
        Where to write the CSV (parent folders are created).

    Returns
    -------
    dict
        The ``avg`` row: the mean of each numeric column.

    Example
    -------
    >>> import tempfile
    >>> columns = ["sdr", "sdr_i", "si-snr", "si-snr_i"]
    >>> rows = [
    ...     {"snt_id": "a", **dict(zip(columns, [1.0, 2.0, 3.0, 4.0]))},
    ...     {"snt_id": "b", **dict(zip(columns, [3.0, 4.0, 5.0, 6.0]))},
    ... ]
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_results_csv(rows, os.path.join(folder, "r.csv"))["sdr"]
    2.0
    """
    if not rows:
        raise ValueError(
            f"no utterances to write to {path}: the test set is empty"
        )
    columns = list(RESULT_COLUMNS) + [
        name for name in OPTIONAL_COLUMNS if name in rows[0]
    ]
    average = {"snt_id": "avg"}
    for name in columns[1:]:
        average[name] = float(np.mean([row[name] for row in rows]))
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow(average)
    return average


def _si_snr_numpy(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SI-SNR (dB) of zero-mean float64 vectors, MODELS.md §1.2 steps 2-3."""
    eps = 1e-8
    target = np.dot(estimate, reference) / (np.dot(reference, reference) + eps)
    target = target * reference
    noise = estimate - target
    ratio = np.dot(target, target) / (np.dot(noise, noise) + eps)
    return float(10 * np.log10(ratio + eps))


def _to_numpy(signal) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if isinstance(signal, torch.Tensor):
        signal = signal.detach().cpu().double().numpy()
    return np.asarray(signal, dtype=np.float64)
