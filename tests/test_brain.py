"""The Separation brain and the data pipelines, in process (no train.py).

Optimiser groups from ``_optim`` hints, clipping over every group, skipped
non-finite updates, the loss threshold, speed perturbation, precision, and
the datasets (aligned crops, resampling, dynamic mixing).
"""

import csv
import math

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.augment.time_domain import SpeedPerturb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils.epoch_loop import EpochCounter
from speechbrain.utils.train_logger import FileTrainLogger

from speechbrain_s4.brain import (
    Separation,
    flatten_hparams,
    optimizer_param_groups,
)
from speechbrain_s4.dataio import (
    dynamic_mixing_dataset,
    level_db,
    separation_dataset,
)
from speechbrain_s4.models.masking import MaskingSeparator
from speechbrain_s4.ssm import S4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (no contention on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------
# helpers


def tiny_sepformer(num_spks=2):
    def block():
        return SBTransformerBlock(
            num_layers=1, d_model=8, nhead=2, d_ffn=16, dropout=0
        )

    return MaskingSeparator(
        Encoder(kernel_size=16, out_channels=8),
        Dual_Path_Model(
            num_spks=num_spks,
            in_channels=8,
            out_channels=8,
            num_layers=1,
            K=10,
            intra_model=block(),
            inter_model=block(),
        ),
        Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8),
        num_spks=num_spks,
        sample_rate=8000,
    )


class Gains(torch.nn.Module):
    """estimates[..., k] = gain_k * mix: a separator with 2 known parameters."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
        self.other = torch.nn.Parameter(torch.tensor([0.3]))
        self.sample_rate, self.num_spks = 8000, 2

    def forward(self, mix, lengths=None):
        return mix.unsqueeze(-1) * self.gain + 0 * self.other


def make_brain(tmp_path, separator, opt_class=None, run_opts=None, **hparams):
    values = {
        "sample_rate": 8000,
        "loss": get_si_snr_with_pitwrapper,
        "threshold_byloss": True,
        "threshold": -30,
        "use_speedperturb": False,
        "lr_scheduler": ReduceLROnPlateau(),
        "epoch_counter": EpochCounter(1),
        "train_logger": FileTrainLogger(str(tmp_path / "train_log.txt")),
        "output_folder": str(tmp_path),
    }
    values.update(hparams)
    options = {"device": "cpu", "noprogressbar": True}
    options.update(run_opts or {})
    return Separation(
        modules={"separator": separator},
        opt_class=opt_class
        or (lambda params: torch.optim.Adam(params, lr=1e-3)),
        hparams=values,
        run_opts=options,
    )


def batch_of(mixtures, targets, noise=None):
    items = []
    for index, (mix, target) in enumerate(zip(mixtures, targets, strict=True)):
        item = {"id": f"u{index}", "mix_sig": mix, "targets": target}
        if noise is not None:
            item["noise_sig"] = noise[index]
        items.append(item)
    return PaddedBatch(items)


def voice(frequency, num_samples, rate=8000, seed=0):
    """A harmonic tone with a slow envelope: a stand-in for one talker."""
    t = np.arange(num_samples) / rate
    rng = np.random.default_rng(seed)
    signal = sum(
        np.sin(2 * np.pi * frequency * h * t + rng.uniform(0, 6)) / h
        for h in (1, 2, 3)
    )
    return (0.2 * signal * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))).astype(
        np.float32
    )


# --------------------------------------------------------------------------
# optimiser


def test_param_groups_follow_optim_hints(tmp_path):
    separator = tiny_sepformer()
    encoder_weight = separator.encoder.conv1d.weight
    decoder_weight = separator.decoder.weight
    encoder_weight._optim = {"weight_decay": 0.0, "lr": 1e-4}
    decoder_weight._optim = {"weight_decay": 0.0}
    brain = make_brain(
        tmp_path,
        separator,
        opt_class=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    )
    brain.init_optimizers()
    groups = brain.optimizer.param_groups
    assert len(groups) == 3
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(encoder_weight)]["lr"] == 1e-4
    assert by_param[id(encoder_weight)]["weight_decay"] == 0.0
    assert by_param[id(decoder_weight)]["lr"] == 1e-3
    assert by_param[id(decoder_weight)]["weight_decay"] == 0.0
    untagged = [
        p
        for p in separator.parameters()
        if p is not encoder_weight and p is not decoder_weight
    ]
    assert groups[0]["params"] == untagged
    assert groups[0]["weight_decay"] == 0.01 and groups[0]["lr"] == 1e-3
    # every trainable parameter is optimised exactly once
    assert sorted(by_param) == sorted(id(p) for p in separator.parameters())


def test_param_groups_can_spare_vectors_from_decay():
    layer = torch.nn.Linear(4, 3)
    groups = optimizer_param_groups(layer, no_decay_vectors=True)
    assert groups[0]["params"] == [layer.weight]
    assert groups[1] == {"params": [layer.bias], "weight_decay": 0.0}


def test_s4_parameters_get_their_own_group(tmp_path):
    layer = S4(8, d_state=4, bidirectional=True)
    tagged = [p for p in layer.parameters() if hasattr(p, "_optim")]
    assert tagged, "the S4 kernel should tag its SSM parameters"
    groups = optimizer_param_groups(layer)
    assert len(groups) == 2
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tagged}
    assert groups[1]["weight_decay"] == 0.0


def test_clipping_covers_every_parameter_group(tmp_path):
    # SpeechBrain 1.1 clips param_groups[0] only; here the total norm is
    separator = Gains()
    separator.gain._optim = {"weight_decay": 0.0}
    brain = make_brain(
        tmp_path,
        separator,
        opt_class=lambda p: torch.optim.SGD(p, lr=1.0),
        run_opts={"max_grad_norm": 1.0},
    )
    brain.init_optimizers()
    assert len(brain.optimizer.param_groups) == 2
    before = [p.detach().clone() for p in separator.parameters()]
    separator.gain.grad = torch.tensor([30.0, 40.0])  # group 1, norm 50
    separator.other.grad = torch.tensor([120.0])  # group 0, norm 120
    brain.optimizers_step()
    steps = [
        b - p.detach()
        for b, p in zip(before, separator.parameters(), strict=True)
    ]
    total = math.sqrt(sum(float((s**2).sum()) for s in steps))
    assert total == pytest.approx(1.0, rel=1e-5)  # = clipped gradient norm
    # the direction is kept: every group scaled by the same factor 1/130
    torch.testing.assert_close(steps[0], torch.tensor([30.0, 40.0]) / 130)
    torch.testing.assert_close(steps[1], torch.tensor([120.0]) / 130)
    assert brain.optimizer_step == 1


def test_gradient_accumulation_steps_once_with_the_mean_gradient(tmp_path):
    # SpeechBrain's fit_batch scales each loss by 1/factor and steps every
    # factor batches; the overridden optimizers_step must keep that
    separator = Gains()
    brain = make_brain(
        tmp_path,
        separator,
        opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
        run_opts={"grad_accumulation_factor": 2, "max_grad_norm": 1e9},
        threshold_byloss=False,
    )
    brain.init_optimizers()
    generator = torch.Generator().manual_seed(5)
    batches, reference = [], Gains()
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for _ in range(2):
        targets = torch.randn(1, 600, 2, generator=generator)
        mix = targets.sum(-1)
        batches.append(batch_of(list(mix), list(targets)))
        loss = get_si_snr_with_pitwrapper(targets, reference(mix)).mean()
        grads = torch.autograd.grad(loss / 2, list(reference.parameters()))
        expected = [e + g for e, g in zip(expected, grads, strict=True)]
    start = [p.detach().clone() for p in separator.parameters()]
    brain.step = 1
    brain.fit_batch(batches[0])  # accumulate
    assert brain.optimizer_step == 0
    assert all(
        torch.equal(p, s)
        for p, s in zip(separator.parameters(), start, strict=True)
    )
    brain.step = 2
    brain.fit_batch(batches[1])  # step
    assert brain.optimizer_step == 1
    for param, begin, grad in zip(
        separator.parameters(), start, expected, strict=True
    ):
        torch.testing.assert_close(param.detach(), begin - 0.1 * grad)


# --------------------------------------------------------------------------
# loss


def test_nonfinite_loss_skips_the_update_and_training_goes_on(tmp_path):
    separator = Gains()
    brain = make_brain(tmp_path, separator)
    brain.init_optimizers()
    brain.nonfinite_count = 0
    targets = torch.randn(1, 800, 2)
    good = batch_of([targets[0].sum(-1)], [targets[0]])
    bad_mix = targets[0].sum(-1).clone()
    bad_mix[10] = float("nan")
    bad = batch_of([bad_mix], [targets[0]])
    before = [p.detach().clone() for p in separator.parameters()]
    for _ in range(brain.nonfinite_patience + 2):  # SpeechBrain would raise
        loss = brain.fit_batch(bad)
        assert not torch.isfinite(loss)
    for param, old in zip(separator.parameters(), before, strict=True):
        assert torch.equal(param.detach(), old)  # untouched
    assert brain.skipped_steps == brain.nonfinite_patience + 2
    assert brain.nonfinite_count == brain.nonfinite_patience + 2
    assert all(p.grad is None for p in separator.parameters())
    # a finite batch afterwards trains normally
    loss = brain.fit_batch(good)
    assert torch.isfinite(loss)
    assert not torch.equal(separator.gain.detach(), before[0])
    assert brain.optimizer_step == 1


def test_threshold_drops_items_above_30_db(tmp_path):
    brain = make_brain(tmp_path, Gains())
    targets = torch.randn(2, 1000, 2)
    estimates = targets.clone()
    estimates[1] += 0.5 * torch.randn(1000, 2)  # item 1: about 6 dB
    estimates[0] += 1e-3 * torch.randn(1000, 2)  # item 0: about 60 dB
    per_item = get_si_snr_with_pitwrapper(targets.clone(), estimates.clone())
    assert per_item[0] < -30 < per_item[1]
    predictions = (estimates, targets, targets.sum(-1), torch.ones(2))
    batch = batch_of(list(targets.sum(-1)), list(targets))
    loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
    torch.testing.assert_close(loss, per_item[1])
    valid = brain.compute_objectives(predictions, batch, sb.Stage.VALID)
    torch.testing.assert_close(valid, per_item.mean())
    # every item easy: a zero loss with zero gradients, no update direction
    easy = (targets + 1e-4, targets, targets.sum(-1), torch.ones(2))
    zero = brain.compute_objectives(easy, batch, sb.Stage.TRAIN)
    assert zero.item() == 0.0


def test_test_stage_scores_each_utterance_without_padding(tmp_path):
    brain = make_brain(tmp_path, Gains())
    brain.on_stage_start(sb.Stage.TEST)
    generator = torch.Generator().manual_seed(0)
    long = torch.randn(1600, 2, generator=generator)
    short = torch.randn(1200, 2, generator=generator)
    batch = batch_of([long.sum(-1), short.sum(-1)], [long, short])
    predictions = brain.compute_forward(batch, sb.Stage.TEST)
    brain.compute_objectives(predictions, batch, sb.Stage.TEST)
    assert [row["snt_id"] for row in brain.test_rows] == ["u0", "u1"]
    # the short item is scored on its 1200 samples, as if alone
    from speechbrain_s4.metrics import utterance_metrics

    alone = utterance_metrics(
        "u1", short.sum(-1), short, Gains()(short.sum(-1)[None])[0], 8000
    )
    assert brain.test_rows[1]["si-snr"] == pytest.approx(alone["si-snr"])
    assert brain.test_rows[1]["sdr"] == pytest.approx(alone["sdr"], abs=1e-4)
    brain.on_stage_end(sb.Stage.TEST, 0.0)
    lines = (tmp_path / "test_results.csv").read_text().splitlines()
    assert lines[0] == "snt_id,sdr,sdr_i,si-snr,si-snr_i"
    assert [line.split(",")[0] for line in lines[1:]] == ["u0", "u1", "avg"]


# --------------------------------------------------------------------------
# augmentation and precision


def test_speed_perturbation_rebuilds_the_mixture_with_noise(tmp_path):
    brain = make_brain(
        tmp_path,
        Gains(),
        use_speedperturb=True,
        speed_perturb=SpeedPerturb(orig_freq=8000, speeds=[95]),
    )
    targets = torch.randn(2, 1900, 2)
    noise = 0.1 * torch.randn(2, 1900)
    mix, perturbed = brain.speed_perturb(targets)
    assert perturbed.shape == (2, 2000, 2)  # 95 % speed: 100/95 longer
    torch.testing.assert_close(mix, perturbed.sum(-1))
    # each source resampled on its own, exactly as SpeedPerturb does it
    reference = SpeedPerturb(orig_freq=8000, speeds=[95])
    torch.testing.assert_close(perturbed[..., 1], reference(targets[..., 1]))
    # the noise is not perturbed: everything is cut to the shortest signal
    mix, perturbed = brain.speed_perturb(targets, noise)
    assert perturbed.shape == (2, 1900, 2)
    torch.testing.assert_close(mix, perturbed.sum(-1) + noise)

    # through compute_forward: only in training, and noise is re-added
    batch = batch_of(list(targets.sum(-1) + noise), list(targets), list(noise))
    estimates, new_targets, new_mix, _ = brain.compute_forward(
        batch, sb.Stage.TRAIN
    )
    assert new_targets.shape == (2, 1900, 2)
    torch.testing.assert_close(
        new_mix, new_targets.sum(-1) + noise, atol=1e-6, rtol=0
    )
    assert estimates.shape == (2, 1900, 2)
    _, same_targets, same_mix, _ = brain.compute_forward(batch, sb.Stage.VALID)
    assert torch.equal(same_targets, targets)


def test_speed_perturbation_draws_a_speed_per_source(tmp_path):
    perturb = SpeedPerturb(orig_freq=8000, speeds=[90, 110])
    brain = make_brain(
        tmp_path, Gains(), use_speedperturb=True, speed_perturb=perturb
    )
    torch.manual_seed(3)
    lengths = set()
    for _ in range(12):
        _, perturbed = brain.speed_perturb(torch.randn(1, 990, 2))
        lengths.add(perturbed.shape[1])
    # 90 % -> 1100 samples, 110 % -> 900; mixed draws give the shortest (900)
    assert lengths == {900, 1100}


def test_bf16_precision_trains_one_step_on_cpu(tmp_path):
    separator = tiny_sepformer()
    brain = make_brain(tmp_path, separator, run_opts={"precision": "bf16"})
    brain.init_optimizers()
    targets = torch.randn(2, 800, 2)
    batch = batch_of(list(targets.sum(-1)), list(targets))
    before = separator.encoder.conv1d.weight.detach().clone()
    with brain.training_ctx:
        estimates = separator(targets.sum(-1))
    assert estimates.dtype == torch.bfloat16  # autocast is really on
    loss = brain.fit_batch(batch)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert not torch.equal(separator.encoder.conv1d.weight, before)
    assert brain.optimizer_step == 1 and brain.skipped_steps == 0


def test_fp16_precision_is_refused_on_cpu(tmp_path):
    # SpeechBrain 1.1 does not support fp16 autocast on CPU: --precision=fp16
    # is for CUDA; CPU users take bf16 (see the test above)
    with pytest.raises(ValueError, match="bf16"):
        make_brain(tmp_path, Gains(), run_opts={"precision": "fp16"})


# --------------------------------------------------------------------------
# hyperparameters


def test_flatten_hparams_lifts_sections_and_rejects_conflicts():
    optimizer = object()
    flat = flatten_hparams(
        {
            "output_folder": "out",
            "dataset": {"sample_rate": 8000, "num_spks": 2},
            "training": {"optimizer": optimizer, "output_folder": "out"},
        }
    )
    assert flat["sample_rate"] == 8000 and flat["optimizer"] is optimizer
    with pytest.raises(ValueError, match="'lr'"):
        flatten_hparams({"lr": 1.0, "training": {"lr": 0.001}})
    with pytest.raises(ValueError, match="'sample_rate'"):
        flatten_hparams(
            {
                "dataset": {"sample_rate": 8000},
                "training": {"sample_rate": 16000},
            }
        )


def test_brain_names_missing_hyperparameters(tmp_path):
    with pytest.raises(ValueError, match="speed_perturb"):
        make_brain(tmp_path, Gains(), use_speedperturb=True)


# --------------------------------------------------------------------------
# data


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.mark.parametrize("file_rate", [8000, 16000])
def test_separation_dataset_crops_every_signal_at_one_offset(
    tmp_path, file_rate
):
    rows = []
    for index in range(2):
        s1 = voice(200 + 30 * index, 2 * file_rate, file_rate, seed=index)
        s2 = voice(330, 2 * file_rate, file_rate, seed=10 + index)
        noise = 0.05 * np.random.default_rng(index).standard_normal(
            2 * file_rate
        ).astype(np.float32)
        paths = []
        for name, signal in (
            ("mix", s1 + s2 + noise),
            ("s1", s1),
            ("s2", s2),
            ("noise", noise),
        ):
            path = tmp_path / f"{name}_{index}.wav"
            sf.write(path, signal, file_rate, subtype="FLOAT")
            paths.append(str(path))
        rows.append([f"utt{index}", 2.0, *paths])
    header = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    csv_path = write_csv(tmp_path / "train.csv", header, rows)
    dataset = separation_dataset(csv_path, 2, 8000, segment_seconds=0.5)
    offsets = set()
    for _ in range(3):
        item = dataset[0]
        assert item["mix_sig"].shape == (4000,)
        assert item["targets"].shape == (4000, 2)
        assert item["noise_sig"].shape == (4000,)
        # aligned: the crop of the mixture is the sum of the crops
        rebuilt = item["targets"].sum(-1) + item["noise_sig"]
        torch.testing.assert_close(item["mix_sig"], rebuilt, atol=1e-5, rtol=0)
        offsets.add(float(item["targets"][0, 0]))
    assert len(offsets) > 1  # the offset is random
    whole = separation_dataset(csv_path, 2, 8000)[1]
    assert whole["mix_sig"].shape == (16000,)  # 2 s at 8 kHz, resampled or not


def test_separation_dataset_names_missing_source_columns(tmp_path):
    csv_path = write_csv(
        tmp_path / "t.csv", ["ID", "duration", "mix_wav", "s1_wav"], []
    )
    with pytest.raises(ValueError, match="s2_wav"):
        separation_dataset(csv_path, 2, 8000)
    with pytest.raises(FileNotFoundError, match="preparation"):
        separation_dataset(tmp_path / "missing.csv", 2, 8000)


def speaker_sources(tmp_path, num_speakers=4, per_speaker=2):
    """train_sources.csv whose speaker k talks at its own pitch."""
    rows = []
    for spk in range(num_speakers):
        for utt in range(per_speaker):
            length = 8000 + 1600 * utt
            path = tmp_path / f"spk{spk}_{utt}.wav"
            sf.write(path, voice(150 + 100 * spk, length, seed=spk), 8000)
            rows.append([f"spk{spk}_{utt}", length / 8000, str(path), spk])
    header = ["ID", "duration", "wav", "spk_id"]
    return write_csv(tmp_path / "train_sources.csv", header, rows)


def dominant_speaker(signal):
    """Which speaker (pitch 150 + 100 k Hz) a source is, from its spectrum."""
    spectrum = np.abs(np.fft.rfft(signal.numpy()))
    frequencies = np.fft.rfftfreq(signal.shape[0], 1 / 8000)
    peak = frequencies[np.argmax(spectrum * (frequencies < 500))]
    return int(round((peak - 150) / 100))


def test_dynamic_mixing_draws_different_speakers_and_levels(tmp_path):
    sources_csv = speaker_sources(tmp_path)
    train_csv = write_csv(
        tmp_path / "train.csv",
        ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"],
        [[f"m{i}", 1.0, "unused", "unused", "unused"] for i in range(40)],
    )
    torch.manual_seed(0)
    dataset = dynamic_mixing_dataset(train_csv, sources_csv, 2, 8000, 0.75)
    assert len(dataset) == 40
    relative, pairs = [], set()
    for index in range(40):
        item = dataset[index]
        targets = item["targets"]
        assert targets.shape == (6000, 2)  # the 0.75 s crop
        torch.testing.assert_close(item["mix_sig"], targets.sum(-1))
        assert item["mix_sig"].abs().max() <= 0.9 + 1e-6
        speakers = [dominant_speaker(targets[:, k]) for k in range(2)]
        assert speakers[0] != speakers[1]  # two different speakers
        pairs.add(tuple(speakers))
        relative.append(level_db(targets[:, 1]) - level_db(targets[:, 0]))
    assert len(pairs) >= 6  # many speaker pairs get drawn
    # second speaker: N(-2.51, 2.66) dB relative to the first
    assert np.mean(relative) == pytest.approx(-2.51, abs=1.3)
    assert 1.5 < np.std(relative) < 4.0


def test_dynamic_mixing_epoch_size_sets_the_number_of_mixtures(tmp_path):
    sources_csv = speaker_sources(tmp_path)
    train_csv = write_csv(
        tmp_path / "train.csv",
        ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"],
        [[f"m{i}", 1.0, "unused", "unused", "unused"] for i in range(40)],
    )
    dataset = dynamic_mixing_dataset(
        train_csv, sources_csv, 2, 8000, 0.5, epoch_size=7
    )
    assert len(dataset) == 7
    item = dataset[6]
    torch.testing.assert_close(item["mix_sig"], item["targets"].sum(-1))
    with pytest.raises(ValueError, match="epoch_size"):
        dynamic_mixing_dataset(train_csv, sources_csv, 2, 8000, 0.5, epoch_size=0)


def test_dynamic_mixing_adds_noise_when_the_dataset_has_some(tmp_path):
    sources_csv = speaker_sources(tmp_path, num_speakers=3, per_speaker=1)
    noise_path = tmp_path / "noise.wav"
    sf.write(
        noise_path,
        0.1 * np.random.default_rng(0).standard_normal(12000),
        8000,
    )
    train_csv = write_csv(
        tmp_path / "train.csv",
        ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"],
        [[f"m{i}", 1.0, "x", "x", "x", str(noise_path)] for i in range(20)],
    )
    dataset = dynamic_mixing_dataset(train_csv, sources_csv, 2, 8000, None)
    for index in range(20):
        item = dataset[index]
        assert item["mix_sig"].shape[0] == 8000  # shortest utterance: 1 s
        rebuilt = item["targets"].sum(-1) + item["noise_sig"]
        torch.testing.assert_close(item["mix_sig"], rebuilt)
        loudest = max(level_db(item["targets"][:, k]) for k in range(2))
        snr = loudest - level_db(item["noise_sig"])
        assert -6 - 1e-3 <= snr <= 3 + 1e-3


def test_dynamic_mixing_needs_enough_speakers(tmp_path):
    sources_csv = speaker_sources(tmp_path, num_speakers=2, per_speaker=1)
    train_csv = write_csv(
        tmp_path / "train.csv", ["ID", "duration", "mix_wav"], [["a", 1, "x"]]
    )
    with pytest.raises(ValueError, match="at least 3"):
        dynamic_mixing_dataset(train_csv, sources_csv, 3, 8000)
    with pytest.raises(ValueError, match="dynamic_mixing"):
        dynamic_mixing_dataset(train_csv, None, 2, 8000)


# --------------------------------------------------------------------------
# which checkpoint evaluation loads


def checkpointed_brain(tmp_path, gains):
    from speechbrain.utils.checkpoints import Checkpointer

    separator = Gains()
    brain = make_brain(tmp_path, separator)
    brain.checkpointer = Checkpointer(
        tmp_path / "save", recoverables={"separator": separator}
    )
    return brain, separator


def test_evaluation_loads_the_best_validated_checkpoint(tmp_path):
    brain, separator = checkpointed_brain(tmp_path, Gains())
    for gain, loss in ((2.0, -5.0), (3.0, -1.0)):  # the first is the best
        separator.gain.data.fill_(gain)
        brain.checkpointer.save_checkpoint(meta={"si-snr": loss})
    separator.gain.data.fill_(9.0)
    brain.on_evaluate_start(min_key="si-snr")
    assert separator.gain.tolist() == [2.0, 2.0]


def test_evaluation_without_validated_checkpoints_loads_the_latest(
    tmp_path, caplog
):
    # a run stopped before its first validation: intra-epoch checkpoints only
    brain, separator = checkpointed_brain(tmp_path, Gains())
    for gain in (2.0, 3.0):
        separator.gain.data.fill_(gain)
        brain.checkpointer.save_checkpoint(meta={"end-of-epoch": False})
    separator.gain.data.fill_(9.0)  # what --test_only would otherwise score
    with caplog.at_level("WARNING"):
        brain.on_evaluate_start(min_key="si-snr")
    assert separator.gain.tolist() == [3.0, 3.0]
    assert "carries 'si-snr'" in caplog.text


def test_evaluation_without_any_checkpoint_keeps_the_weights(tmp_path, caplog):
    brain, separator = checkpointed_brain(tmp_path, Gains())
    with caplog.at_level("WARNING"):
        brain.on_evaluate_start(min_key="si-snr")
    assert separator.gain.tolist() == [1.0, 0.5]
    assert "no checkpoint in" in caplog.text
