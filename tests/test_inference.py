"""S4Separation: offline strict loading, export/convert round trips, audio.

The export tests use what ``train.py`` really leaves behind: a tiny S4M is
trained for one epoch on a fake WSJ0-2mix tree (in this process), and for
Sepformer and Conv-TasNet the recipe is saved exactly as ``train.py`` saves
it (``speechbrain.create_experiment_directory``) next to a checkpoint
written by SpeechBrain's ``Checkpointer``.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
import torch.nn.functional as F
from fake_layouts import make_fake_layout
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import Checkpointer

import speechbrain_s4.inference as inference
from speechbrain_s4.audio import resample
from speechbrain_s4.convert import _BUILDERS as REFERENCE_ARCHS
from speechbrain_s4.inference import (
    S4Separation,
    convert_checkpoint,
    export_recipe,
    minimum_input_samples,
    model_folder,
    save_inference_folder,
)
from speechbrain_s4.models import build

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000

#: tiny sizes of each model file (as in tests/test_train_layouts.py)
TINY = {
    "s4m-tiny": {
        "hidden_channels": 16,
        "bottleneck_channels": 8,
        "num_blocks": 2,
        "depth": 2,
        "d_state": 4,
    },
    "sepformer": {
        "encoder_filters": 8,
        "num_layers": 1,
        "d_ffn": 16,
        "nhead": 2,
        "chunk_size": 10,
        "num_repeats": 1,
    },
    "convtasnet": {
        "encoder_filters": 8,
        "bottleneck_channels": 8,
        "hidden_channels": 8,
        "blocks_per_repeat": 2,
        "num_repeats": 1,
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the two cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(module, seed=0):
    """``module`` with every float parameter shifted by random noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return module.eval()


def tiny_s4m(seed=0):
    return perturbed(build("s4m-tiny", **TINY["s4m-tiny"]), seed)


def interface_for(separator, **hparams):
    return S4Separation(
        modules={"separator": separator},
        hparams={"sample_rate": RATE, "num_spks": 2, **hparams},
        run_opts={"device": "cpu"},
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An inference folder of a tiny perturbed S4M."""
    return save_inference_folder(
        tiny_s4m(), tmp_path_factory.mktemp("models") / "tiny-s4m"
    )


@pytest.fixture(scope="module")
def tiny_model(tiny_folder):
    return S4Separation.from_hparams(tiny_folder, run_opts={"device": "cpu"})


def write_wav(path, data, rate=RATE, subtype="FLOAT"):
    sf.write(
        str(path), np.asarray(data, dtype=np.float32), rate, subtype=subtype
    )
    return path


# -- where models come from --------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything tries the HuggingFace Hub or the network."""
    import speechbrain.utils.fetching as fetching

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(fetching, "download_file_hf", refuse)
    monkeypatch.setattr(fetching, "download_file", refuse)


def test_from_hparams_missing_folder_raises_without_hub_lookup(
    tmp_path, no_hub
):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        S4Separation.from_hparams(missing, savedir=tmp_path / "save")
    # a hub-like id is not looked up either
    with pytest.raises(
        FileNotFoundError, match="speechbrain/sepformer-wsj02mix"
    ):
        S4Separation.from_hparams("speechbrain/sepformer-wsj02mix")


@pytest.mark.parametrize("removed", ["hyperparams.yaml", "separator.ckpt"])
def test_from_hparams_incomplete_folder_names_missing_file(
    tiny_folder, tmp_path, removed, no_hub
):
    folder = Path(shutil.copytree(tiny_folder, tmp_path / "model"))
    (folder / removed).unlink()
    with pytest.raises(FileNotFoundError, match=removed):
        S4Separation.from_hparams(folder, savedir=tmp_path / "save")


def test_from_hparams_file_instead_of_folder_raises(tiny_folder):
    with pytest.raises(NotADirectoryError, match="inference folder"):
        S4Separation.from_hparams(tiny_folder / "separator.ckpt")


def test_bundled_model_lookup_by_name(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "PRETRAINED_DIR", tmp_path / "pretrained")
    # the default model's folder is absent: a clear error, no fallback
    with pytest.raises(FileNotFoundError, match="not installed"):
        S4Separation.from_hparams()
    with pytest.raises(FileNotFoundError, match="bundled names"):
        model_folder("no-such-name")
    shutil.copytree(tiny_folder, tmp_path / "pretrained" / "s4m-tiny-minimix")
    assert model_folder() == tmp_path / "pretrained" / "s4m-tiny-minimix"
    model = S4Separation.from_hparams(run_opts={"device": "cpu"})
    mix = torch.randn(1, 700)
    reference = S4Separation.from_hparams(
        tiny_folder, run_opts={"device": "cpu"}
    )
    assert torch.equal(model.separate_batch(mix), reference.separate_batch(mix))


def test_from_hparams_savedir_links_the_files(tiny_folder, tmp_path, no_hub):
    model = S4Separation.from_hparams(
        tiny_folder, savedir=tmp_path / "save", run_opts={"device": "cpu"}
    )
    for name in ("hyperparams.yaml", "separator.ckpt"):
        link = tmp_path / "save" / name
        assert link.is_symlink() and link.resolve() == tiny_folder / name
    # savedir == source is harmless (SpeechBrain would point a link at itself)
    again = S4Separation.from_hparams(
        tiny_folder, savedir=tiny_folder, run_opts={"device": "cpu"}
    )
    mix = torch.randn(2, 600)
    assert torch.equal(model.separate_batch(mix), again.separate_batch(mix))


def test_inference_folder_loads_with_stock_speechbrain(tiny_folder, tmp_path):
    stock = Pretrained.from_hparams(
        source=str(tiny_folder), savedir=str(tmp_path / "stock")
    )
    ours = S4Separation.from_hparams(tiny_folder, run_opts={"device": "cpu"})
    theirs = stock.mods.separator.state_dict()
    for key, value in ours.mods.separator.state_dict().items():
        assert torch.equal(theirs[key], value), key


# -- strict loading ---------------------------------------------------------------


def edited_copy(folder, tmp_path, edit):
    copy = Path(shutil.copytree(folder, tmp_path / "edited"))
    state_dict = torch.load(copy / "separator.ckpt", weights_only=True)
    edit(state_dict)
    torch.save(state_dict, copy / "separator.ckpt")
    return copy


def test_strict_loading_renamed_key_raises_naming_it(tiny_folder, tmp_path):
    key = "masknet.bottleneck.weight"

    def rename(state_dict):
        state_dict["masknet.bottleneck.weights"] = state_dict.pop(key)

    folder = edited_copy(tiny_folder, tmp_path, rename)
    with pytest.raises(KeyError) as error:
        S4Separation.from_hparams(folder)
    message = error.value.args[0]
    assert f"missing [{key}]" in message
    assert "unexpected [masknet.bottleneck.weights]" in message
    assert str(folder / "separator.ckpt") in message


def test_strict_loading_wrong_shape_raises_naming_it(tiny_folder, tmp_path):
    key = "masknet.block.s4.layer.D"

    def reshape(state_dict):
        state_dict[key] = torch.zeros(state_dict[key].numel() + 1)

    folder = edited_copy(tiny_folder, tmp_path, reshape)
    with pytest.raises(ValueError, match=rf"{key} \(17,\) vs model \(16,\)"):
        S4Separation.from_hparams(folder)


def test_unreadable_checkpoint_raises_value_error(tiny_folder, tmp_path):
    folder = Path(shutil.copytree(tiny_folder, tmp_path / "broken"))
    (folder / "separator.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        S4Separation.from_hparams(folder)


def test_yaml_without_pretrainer_is_rejected(tiny_folder, tmp_path):
    folder = Path(shutil.copytree(tiny_folder, tmp_path / "nopre"))
    text = (folder / "hyperparams.yaml").read_text()
    text = text[: text.index("# stock SpeechBrain")]
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(ValueError, match="pretrainer"):
        S4Separation.from_hparams(folder)


# -- export from training runs ------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real train.py run: tiny S4M, one epoch on a fake WSJ0-2mix tree."""
    root = tmp_path_factory.mktemp("run")
    data = make_fake_layout("wsj0mix", root / "data")
    output = root / "out"
    tiny = ", ".join(f"{k}: {v}" for k, v in TINY["s4m-tiny"].items())
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        patch.chdir(ROOT)
        patch.setattr(sys, "excepthook", sys.excepthook)  # SB replaces it
        spec = importlib.util.spec_from_file_location(
            "train", ROOT / "train.py"
        )
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        train.main(
            [
                str(ROOT / "hparams" / "s4m-tiny_wsj0mix.yaml"),
                f"--data_folder={data}",
                f"--output_folder={output}",
                "--device=cpu",
                "--noprogressbar",
                f"--model={{{tiny}}}",
                "--training={num_workers: 0, number_of_epochs: 1, "
                "segment_seconds: 0.25, batch_size: 2}",
            ]
        )
    return output


def reference_s4m(state_dict):
    """The run's separator built independently from the model file."""
    with open(ROOT / "hparams" / "models" / "s4m-tiny.yaml") as handle:
        separator = load_hyperpyyaml(handle, TINY["s4m-tiny"])["separator"]
    separator.load_state_dict(state_dict, strict=True)
    return separator.eval()


def test_export_round_trip_gives_identical_outputs(trained_run, tmp_path):
    info = export_recipe(trained_run, tmp_path / "exported")
    (checkpoint,) = (trained_run / "save").glob("CKPT+*")
    assert info["checkpoint"] == checkpoint
    assert info["model"] == "S4M"
    trained = torch.load(checkpoint / "separator.ckpt", weights_only=True)
    exported = torch.load(
        tmp_path / "exported" / "separator.ckpt", weights_only=True
    )
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[k], exported[k]) for k in trained)
    model = S4Separation.from_hparams(
        tmp_path / "exported", run_opts={"device": "cpu"}
    )
    assert (model.sample_rate, model.num_spks) == (RATE, 2)
    mix = torch.randn(2, 3001)
    with torch.no_grad():
        expected = reference_s4m(trained)(mix)
    assert torch.equal(model.separate_batch(mix), expected)
    # the validation score is the negated loss stored with the checkpoint
    meta = (checkpoint / "CKPT.yaml").read_text()
    assert f"si-snr: {-info['valid_si_snr']}" in meta


def test_export_picks_the_best_validation_checkpoint(trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    candidates = {}
    for seed, meta in [
        (1, {"si-snr": -35.0}),
        (2, {"si-snr": -40.0}),  # best: lowest negative SI-SNR
        (3, {}),  # an intra-epoch checkpoint records no validation score
        (4, {"si-snr": 5.0}),
    ]:
        separator = tiny_s4m(seed)
        checkpointer = Checkpointer(
            run / "save", recoverables={"separator": separator}
        )
        saved = checkpointer.save_checkpoint(meta=meta, end_of_epoch=bool(meta))
        candidates[seed] = (saved.path, separator)
    info = export_recipe(run, tmp_path / "best")
    assert info["checkpoint"] == candidates[2][0]
    assert info["valid_si_snr"] == 40.0
    model = S4Separation.from_hparams(tmp_path / "best")
    mix = torch.randn(1, 900)
    with torch.no_grad():
        assert torch.equal(model.separate_batch(mix), candidates[2][1](mix))
    # an explicit checkpoint wins
    info = export_recipe(run, tmp_path / "chosen", checkpoint=candidates[3][0])
    assert info["valid_si_snr"] is None
    model = S4Separation.from_hparams(tmp_path / "chosen")
    with torch.no_grad():
        assert torch.equal(model.separate_batch(mix), candidates[3][1](mix))


def test_export_refuses_to_overwrite_unless_asked(trained_run, tmp_path):
    export_recipe(trained_run, tmp_path / "model")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_recipe(trained_run, tmp_path / "model")
    export_recipe(trained_run, tmp_path / "model", overwrite=True)


def test_export_without_checkpoints_raises(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = (trained_run / "hyperparams.yaml").read_text()
    # the saved save_folder is absolute: point it away from the real run
    text = text.replace(str(trained_run / "save"), str(run / "save"))
    (run / "hyperparams.yaml").write_text(text)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_recipe(run, tmp_path / "model")


def simulated_run(recipe_text, tmp_path, overrides):
    """Save a recipe and a checkpoint exactly as train.py would."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    output = tmp_path / "out"
    overrides = {"output_folder": str(output), **overrides}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        patch.setattr(sys, "excepthook", sys.excepthook)
        sb.create_experiment_directory(
            experiment_directory=str(output),
            hyperparams_to_save=str(recipe),
            overrides=overrides,
            save_env_desc=False,  # pip freeze: slow, not needed
        )
        with open(recipe) as handle:
            hparams = load_hyperpyyaml(handle, overrides)
    separator = perturbed(hparams["modules"]["separator"])
    hparams["checkpointer"].save_checkpoint(meta={"si-snr": -3.5})
    return output, separator


@pytest.mark.parametrize("model", ["sepformer", "convtasnet"])
def test_export_speechbrain_lobe_models(model, tmp_path):
    text = (ROOT / "hparams" / "sepformer_minimix.yaml").read_text()
    # every include made absolute, so the recipe can live in tmp_path
    for part in ("data", "training"):
        text = text.replace(
            f"!include:{part}/", f"!include:{ROOT / 'hparams' / part}/"
        )
    text = text.replace(
        "!include:models/sepformer.yaml",
        f"!include:{ROOT / 'hparams' / 'models' / model}.yaml",
    )
    run, separator = simulated_run(text, tmp_path, {"model": TINY[model]})
    saved = (run / "hyperparams.yaml").read_text()
    assert "!include" not in saved  # SpeechBrain inlined the model file
    info = export_recipe(run, tmp_path / "exported")
    assert info["valid_si_snr"] == 3.5
    interface = S4Separation.from_hparams(
        tmp_path / "exported", run_opts={"device": "cpu"}
    )
    mix = torch.randn(2, 1600)
    with torch.no_grad():
        expected = separator(mix)
    assert torch.equal(interface.separate_batch(mix), expected)


# -- convert -------------------------------------------------------------------------


@pytest.mark.parametrize("conj_symmetric", [True, False])
def test_convert_reference_s4m_checkpoint_reproduces_its_outputs(
    golden, tmp_path, conj_symmetric
):
    fixture = golden("perturbed_tiny_io")["s4m_tiny"]
    checkpoint = tmp_path / "best_model.pth"
    torch.save(fixture["state_dict"], checkpoint)
    info = convert_checkpoint(
        "s4m",
        checkpoint,
        tmp_path / "s4m",
        conj_symmetric=conj_symmetric,
        **fixture["kwargs"],
    )
    assert info["arguments"]["topdown"] == "faithful"
    model = S4Separation.from_hparams(
        tmp_path / "s4m", run_opts={"device": "cpu"}
    )
    estimates = model.separate_batch(fixture["mixture"])  # [1, T, S]
    name = "estimates_cauchy_conj" if conj_symmetric else "estimates"
    reference = fixture[name].transpose(1, 2)
    assert (estimates - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_convert_unknown_arguments_is_a_value_error(golden, tmp_path):
    fixture = golden("perturbed_tiny_io")["s4m_tiny"]
    checkpoint = tmp_path / "model.pth"
    torch.save(fixture["state_dict"], checkpoint)
    with pytest.raises(ValueError, match="num_block"):
        convert_checkpoint("s4m", checkpoint, tmp_path / "x", num_block=3)


@pytest.mark.skipif(
    "spmamba" not in REFERENCE_ARCHS,
    reason="speechbrain_s4.convert has no SPMamba converter yet",
)
def test_convert_reference_spmamba_checkpoint_reproduces_its_outputs(
    golden, tmp_path
):
    fixture = golden("perturbed_tiny_io")["spmamba_tiny"]
    checkpoint = tmp_path / "spmamba.pth"
    torch.save(fixture["state_dict"], checkpoint)
    convert_checkpoint(
        "spmamba", checkpoint, tmp_path / "sp", **fixture["kwargs"]
    )
    model = S4Separation.from_hparams(
        tmp_path / "sp", run_opts={"device": "cpu"}
    )
    estimates = model.separate_batch(fixture["mixture"])
    reference = fixture["estimates"].transpose(1, 2)
    assert (estimates - reference).abs().max() <= 1e-5 * reference.abs().max()


# -- audio handling ------------------------------------------------------------------


def test_stereo_file_is_downmixed_without_resampling(tiny_model, tmp_path):
    left, right = torch.randn(2, 2400) * 0.1
    path = write_wav(tmp_path / "stereo.wav", torch.stack([left, right], 1))
    estimates = tiny_model.separate_file(path)
    assert estimates.shape == (1, 2400, 2)  # one mixture, not a batch of two
    expected = tiny_model.separate_batch(((left + right) / 2)[None])
    assert torch.allclose(estimates, expected, atol=1e-7)


def test_output_comes_at_the_input_rate(tiny_model, tmp_path):
    mixture = torch.randn(16000 + 7) * 0.1  # ~1 s at 16 kHz, odd length
    path = write_wav(tmp_path / "wide.wav", mixture, rate=16000)
    estimates = tiny_model.separate_file(path)
    assert estimates.shape == (1, 16007, 2)
    at_model_rate = tiny_model.separate_batch(
        resample(mixture[None], 16000, RATE)
    )
    back = resample(at_model_rate.transpose(1, 2), RATE, 16000).transpose(1, 2)
    assert torch.allclose(estimates, back[:, :16007], atol=1e-6)


def test_load_audio_reads_locally_at_the_model_rate(tiny_model, tmp_path):
    stereo = torch.randn(16000, 2) * 0.1
    path = write_wav(tmp_path / "in.wav", stereo, rate=16000)
    audio = tiny_model.load_audio(path)
    expected = resample(stereo.mean(1), 16000, RATE)
    assert audio.shape == (8000,) and torch.allclose(audio, expected)
    with pytest.raises(FileNotFoundError):
        tiny_model.load_audio("https://example.com/mixture.wav")


def test_separate_file_is_not_normalised(tiny_model, tmp_path):
    mixture = torch.randn(1200) * 0.01
    path = write_wav(tmp_path / "quiet.wav", mixture)
    estimates = tiny_model.separate_file(path)
    assert torch.allclose(estimates, tiny_model.separate_batch(mixture[None]))
    assert float(estimates.abs().max()) != pytest.approx(1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_raise_naming_the_file(tiny_model, tmp_path, bad):
    mixture = torch.randn(800) * 0.1
    mixture[400] = bad
    path = write_wav(tmp_path / "broken.wav", mixture)
    with pytest.raises(
        ValueError, match=r"broken\.wav contains 1 NaN/infinite"
    ):
        tiny_model.separate_file(path)
    with pytest.raises(ValueError, match="NaN/infinite"):
        tiny_model.separate_batch(mixture[None])


def test_empty_unreadable_and_missing_files_raise(tiny_model, tmp_path):
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(ValueError, match=r"empty\.wav holds no audio"):
        tiny_model.separate_file(empty)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF....not audio at all")
    with pytest.raises(ValueError, match=r"cannot read .*garbage\.wav"):
        tiny_model.separate_file(garbage)
    zero_bytes = tmp_path / "zero.flac"
    zero_bytes.write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.flac"):
        tiny_model.separate_file(zero_bytes)
    with pytest.raises(FileNotFoundError, match=r"missing\.wav"):
        tiny_model.separate_file(tmp_path / "missing.wav")


def test_all_zero_input_gives_zeros(tiny_model, tmp_path):
    path = write_wav(
        tmp_path / "silence.wav", np.zeros((3000, 2)), subtype="PCM_16"
    )
    estimates = tiny_model.separate_file(path)
    assert estimates.shape == (1, 3000, 2)
    assert torch.equal(estimates, torch.zeros_like(estimates))
    # in a batch, only the silent item is zeroed
    batch = torch.stack([torch.zeros(900), torch.randn(900)])
    out = tiny_model.separate_batch(batch)
    assert torch.equal(out[0], torch.zeros(900, 2))
    assert torch.allclose(
        out[1], tiny_model.separate_batch(batch[1:])[0], atol=1e-6
    )
    assert bool(torch.isfinite(out).all())


def test_input_shorter_than_the_model_minimum_is_padded(tmp_path):
    with open(ROOT / "hparams" / "models" / "sepformer.yaml") as handle:
        sepformer = perturbed(
            load_hyperpyyaml(handle, TINY["sepformer"])["separator"]
        )
    model = interface_for(sepformer)
    assert model.min_input_samples == 16 == minimum_input_samples(sepformer)
    with pytest.raises(RuntimeError):
        sepformer(torch.randn(1, 5))  # SpeechBrain's encoder needs 16
    mix = torch.randn(2, 5)
    estimates = model.separate_batch(mix)
    assert estimates.shape == (2, 5, 2)
    with torch.no_grad():
        expected = sepformer(F.pad(mix, (0, 11)))[:, :5]
    assert torch.equal(estimates, expected)
    path = write_wav(tmp_path / "click.wav", mix[0].numpy())
    assert model.separate_file(path).shape == (1, 5, 2)


def test_separate_batch_passes_gradients_to_the_input(tiny_folder):
    frozen = S4Separation.from_hparams(tiny_folder, run_opts={"device": "cpu"})
    mix = torch.randn(1, 800, requires_grad=True)
    frozen.separate_batch(mix).square().sum().backward()
    assert mix.grad is not None and bool(mix.grad.abs().sum() > 0)
    assert all(p.grad is None for p in frozen.mods.parameters())
    trainable = S4Separation.from_hparams(
        tiny_folder, run_opts={"device": "cpu"}, freeze_params=False
    )
    trainable.separate_batch(torch.randn(1, 800)).square().sum().backward()
    grads = [p.grad for p in trainable.mods.parameters()]
    assert all(g is not None for g in grads)
    assert not frozen.separate_batch(torch.randn(1, 800)).requires_grad


def test_separate_batch_rejects_wrong_shapes(tiny_model):
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny_model.separate_batch(torch.randn(800))
    with pytest.raises(ValueError, match="no samples"):
        tiny_model.separate_batch(torch.randn(1, 0))


def test_long_file_is_chunked_with_the_default_chunking(tiny_folder, tmp_path):
    model = S4Separation.from_hparams(
        tiny_folder,
        overrides={},
        run_opts={"device": "cpu"},
    )
    model.hparams.chunk_seconds = 0.5  # as an inference YAML may set it
    model.hparams.overlap_seconds = 0.1
    assert model.chunking() == (0.5, 0.1)
    assert model.chunking(2.0) == (2.0, 0.1)
    assert model.chunking(0.2) == (0.2, 0.05)  # overlap <= chunk / 4
    with pytest.raises(ValueError, match="chunk_seconds"):
        model.chunking(-1.0)
    with pytest.raises(ValueError, match="overlap_seconds"):
        model.chunking(1.0, 0.8)
    mixture = torch.randn(RATE * 2 + 123) * 0.1
    path = write_wav(tmp_path / "long.wav", mixture)
    from_file = model.separate_file(path)
    chunked = model.separate_long(mixture[None], 0.5, 0.1)
    whole = model.separate_long(mixture[None], chunk_seconds=0)
    assert torch.allclose(from_file, chunked, atol=1e-7)
    assert not torch.allclose(chunked, whole, atol=1e-7)  # chunking did happen


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decoder_s4": True, "topdown": "faithful"},
        {"conj_symmetric": False, "align_frames": False, "kernel_ms": 21.0},
        {"d_state": 8, "depth": 3, "num_spks": 3},
    ],
)
def test_save_inference_folder_round_trips_every_s4m_option(options, tmp_path):
    separator = perturbed(build("s4m-tiny", **{**TINY["s4m-tiny"], **options}))
    folder = save_inference_folder(separator, tmp_path / "model")
    model = S4Separation.from_hparams(folder, run_opts={"device": "cpu"})
    assert model.num_spks == separator.num_spks
    mix = torch.randn(2, 1234)
    with torch.no_grad():
        assert torch.equal(model.separate_batch(mix), separator(mix))
