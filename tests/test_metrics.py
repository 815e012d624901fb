"""Metrics: SDR against mir_eval, SI-SNR against a float64 formula, PIT, CSV."""

import csv
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from speechbrain_s4 import metrics
from speechbrain_s4.metrics import (
    best_permutation,
    sdr_improvement,
    si_snr,
    si_snr_improvement,
    utterance_metrics,
    write_results_csv,
)
from speechbrain_s4.voices import (
    apt_install_command,
    find_voices,
    load_clip,
    trim_silence,
)

TWO_VOICES = ("en_US_f_Allison", "fr_CA_f_June")


def mir_eval_sdr(targets, estimates, mixture):
    """SDR and SDRi with mir_eval (reference first), as SB's recipe does."""
    from mir_eval.separation import bss_eval_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval 0.8 deprecation notice
        sdr, _, _, _ = bss_eval_sources(targets.T, estimates.T)
        baseline = np.stack([mixture] * targets.shape[1])
        sdr_mix, _, _, _ = bss_eval_sources(targets.T, baseline)
    return sdr.mean(), sdr.mean() - sdr_mix.mean()


def distorted_estimates(sources, rng):
    """Swapped, leaky, filtered and noisy estimates of ``sources`` [T, S]."""
    num_samples, num_spks = sources.shape
    estimates = []
    for k in range(num_spks):
        other = sources[:, (k + 1) % num_spks]
        filtered = np.convolve(sources[:, k], [1.0, 0.4, -0.2], mode="same")
        noise = 0.02 * rng.standard_normal(num_samples)
        estimates.append(filtered + (0.15 + 0.1 * k) * other + noise)
    return np.stack(estimates[::-1], axis=1)  # reversed: PIT must undo it


def real_speech_sources(num_samples=8000):
    """Two Debian voices (8 kHz telephone prompts), one second of each."""
    voices = find_voices(8000)
    clips = []
    for voice in TWO_VOICES:
        for path in voices.get(voice, []):
            audio = trim_silence(load_clip(path, 8000), 8000)
            if audio.shape[0] >= num_samples:
                clips.append(audio[:num_samples].astype(np.float64))
                break
    if len(clips) < 2:
        return None
    return np.stack([clips[0], 0.6 * clips[1]], axis=1)


@pytest.mark.skipif(
    not set(TWO_VOICES) <= set(find_voices(8000)),
    reason="needs two Debian voices: "
    + apt_install_command(
        ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-fr-wav"]
    ),
)
def test_sdr_matches_mir_eval_on_real_speech():
    sources = real_speech_sources()
    assert sources is not None, "no prompt of these voices lasts 1 s"
    estimates = distorted_estimates(sources, np.random.default_rng(0))
    mixture = sources.sum(axis=1)
    sdr, sdr_i = sdr_improvement(
        torch.from_numpy(mixture),
        torch.from_numpy(sources),
        torch.from_numpy(estimates),
    )
    ref_sdr, ref_sdr_i = mir_eval_sdr(sources, estimates, mixture)
    assert abs(sdr - ref_sdr) < 0.01
    assert abs(sdr_i - ref_sdr_i) < 0.01
    assert 5 < sdr < 40  # a real, finite operating point


@pytest.mark.parametrize("num_spks", [2, 3])
def test_sdr_matches_mir_eval_on_synthetic_signals(num_spks):
    rng = np.random.default_rng(num_spks)
    t = np.arange(4000) / 8000
    # harmonic "voices" with different pitches and envelopes, plus noise
    sources = np.stack(
        [
            np.sin(2 * np.pi * (110 + 70 * k) * t * (1 + 0.05 * np.sin(t * 3)))
            * (0.5 + 0.5 * np.sin(2 * np.pi * (1 + k) * t))
            + 0.05 * rng.standard_normal(t.size)
            for k in range(num_spks)
        ],
        axis=1,
    )
    estimates = distorted_estimates(sources, rng)
    mixture = sources.sum(axis=1)
    sdr, sdr_i = sdr_improvement(
        torch.from_numpy(mixture),
        torch.from_numpy(sources).float(),  # float32 in, float64 inside
        torch.from_numpy(estimates).float(),
    )
    ref_sdr, ref_sdr_i = mir_eval_sdr(
        sources.astype(np.float32).astype(np.float64),
        estimates.astype(np.float32).astype(np.float64),
        mixture,
    )
    assert abs(sdr - ref_sdr) < 0.01
    assert abs(sdr_i - ref_sdr_i) < 0.01


def si_snr_float64(reference, estimate):
    """MODELS.md §1.2 written out in float64 for one pair of signals."""
    eps = 1e-8
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    target = (estimate @ reference) / (reference @ reference + eps) * reference
    noise = estimate - target
    return 10 * np.log10((target @ target) / (noise @ noise + eps) + eps)


def test_si_snr_matches_float64_formula():
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((3, 4000, 2)) + 0.3  # non-zero mean
    estimates = targets + rng.standard_normal((3, 4000, 2)) * [0.3, 0.6]
    estimates = estimates * 2.5 - 0.1  # scale and offset are ignored
    values = si_snr(torch.from_numpy(targets), torch.from_numpy(estimates))
    expected = [
        np.mean(
            [
                si_snr_float64(targets[b, :, k], estimates[b, :, k])
                for k in range(2)
            ]
        )
        for b in range(3)
    ]
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-6)
    # float32 (what the Brain uses) stays within 1e-3 dB of float64
    values32 = si_snr(
        torch.from_numpy(targets).float(), torch.from_numpy(estimates).float()
    )
    np.testing.assert_allclose(values32.numpy(), expected, atol=1e-3)


def test_si_snr_does_not_modify_its_inputs():
    targets = torch.randn(2, 500, 2)
    estimates = torch.randn(2, 500, 2)
    before = (targets.clone(), estimates.clone())
    si_snr(targets, estimates)
    assert torch.equal(targets, before[0]) and torch.equal(estimates, before[1])


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 0, 2), (2, 1, 0)])
def test_pit_picks_the_right_permutation(perm):
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(1, 3000, 3, generator=generator)
    noise = 0.1 * torch.randn(1, 3000, 3, generator=generator)
    estimates = (targets + noise)[..., list(perm)]
    value = si_snr(targets, estimates)
    # the matched pairing, computed directly in float64
    inverse = [perm.index(k) for k in range(3)]
    expected = np.mean(
        [
            si_snr_float64(
                targets[0, :, k].double().numpy(),
                estimates[0, :, inverse[k]].double().numpy(),
            )
            for k in range(3)
        ]
    )
    assert abs(value.item() - expected) < 1e-3
    assert value.item() > 15  # far above any wrong pairing of independent noise
    assert best_permutation(targets[0], estimates[0]) == tuple(inverse)


def test_si_snr_improvement_is_relative_to_the_mixture():
    generator = torch.Generator().manual_seed(2)
    targets = torch.randn(2, 2000, 2, generator=generator)
    mixture = targets.sum(-1)
    estimates = targets + 0.2 * torch.randn(2, 2000, 2, generator=generator)
    value, gain = si_snr_improvement(mixture, targets, estimates)
    baseline = [
        np.mean(
            [
                si_snr_float64(
                    targets[b, :, k].double().numpy(),
                    mixture[b].double().numpy(),
                )
                for k in range(2)
            ]
        )
        for b in range(2)
    ]
    np.testing.assert_allclose((value - gain).numpy(), baseline, atol=1e-3)
    # the mixture as its own estimate improves nothing
    _, no_gain = si_snr_improvement(
        mixture, targets, mixture.unsqueeze(-1).repeat(1, 1, 2)
    )
    np.testing.assert_allclose(no_gain.numpy(), 0.0, atol=1e-4)


def test_results_csv_layout_and_avg_row(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "available_optional_metrics", lambda rate: ())
    generator = torch.Generator().manual_seed(3)
    rows = []
    for index in range(3):
        targets = torch.randn(2400, 2, generator=generator)
        estimates = targets + 0.3 * torch.randn(2400, 2, generator=generator)
        rows.append(
            utterance_metrics(
                f"utt{index}", targets.sum(-1), targets, estimates, 8000
            )
        )
    path = tmp_path / "out" / "test_results.csv"
    average = write_results_csv(rows, path)
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    assert [line[0] for line in table[1:]] == ["utt0", "utt1", "utt2", "avg"]
    values = np.array([[float(x) for x in line[1:]] for line in table[1:4]])
    np.testing.assert_allclose(
        [float(x) for x in table[4][1:]], values.mean(axis=0), rtol=1e-12
    )
    assert average["si-snr"] == pytest.approx(values[:, 2].mean())
    assert np.isfinite(values).all() and (values[:, 3] > 0).all()
    # each row agrees with the metric functions it came from
    assert rows[0]["sdr"] == pytest.approx(float(table[1][1]))


def test_results_csv_gets_optional_columns_when_available(
    tmp_path, monkeypatch
):
    """PESQ/STOI columns appear only when their packages import."""
    calls = []

    def fake_stoi(reference, estimate, rate):
        calls.append((reference.shape, rate))
        return float(np.corrcoef(reference, estimate)[0, 1])

    fake_package = types.SimpleNamespace(stoi=fake_stoi)
    monkeypatch.setitem(sys.modules, "pystoi", fake_package)
    monkeypatch.setattr(
        metrics, "available_optional_metrics", lambda rate: ("stoi",)
    )
    targets = torch.randn(1600, 2)
    estimates = targets.flip(-1) + 0.1 * torch.randn(1600, 2)
    row = utterance_metrics("u", targets.sum(-1), targets, estimates, 8000)
    # the permutation pairs estimate 1 with reference 0: correlation ~ 1
    assert row["stoi"] > 0.99
    assert calls == [((1600,), 8000)] * 2
    write_results_csv([row], tmp_path / "r.csv")
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header == "snt_id,sdr,sdr_i,si-snr,si-snr_i,stoi"


def test_optional_metrics_follow_installed_packages():
    import importlib.util

    names = metrics.available_optional_metrics(8000)
    assert ("pesq" in names) == bool(importlib.util.find_spec("pesq"))
    assert ("stoi" in names) == bool(importlib.util.find_spec("pystoi"))
    assert "pesq" not in metrics.available_optional_metrics(44100)


def test_results_csv_refuses_an_empty_test_set(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_results_csv([], tmp_path / "r.csv")
