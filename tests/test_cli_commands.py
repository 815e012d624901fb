"""Every inference subcommand of ``speechbrain-s4`` run as a real subprocess.

For each of separate, export, convert, evaluate and minimix: its ``--help``,
a user error (exit code 2, one line on stderr, no traceback) and a real tiny
run whose outputs are checked against the library called in this process.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4.inference import (
    S4Separation,
    evaluate_folders,
    save_inference_folder,
)
from speechbrain_s4.metrics import utterance_metrics
from speechbrain_s4.models import build
from speechbrain_s4.voices import apt_install_command, missing_packages

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
TINY_S4M = {
    "hidden_channels": 16,
    "bottleneck_channels": 8,
    "num_blocks": 2,
    "depth": 2,
    "d_state": 4,
}
COMMANDS = ("separate", "export", "convert", "evaluate", "minimix")


def run_cli(*args, cwd=None):
    """``speechbrain-s4 <args>`` in a subprocess with one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def check_success(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return module.eval()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An inference folder of a tiny perturbed S4M."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_inference_folder(
        perturbed(build("s4m-tiny", **TINY_S4M)), folder
    )


# -- help and user errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("separate", "<name>_s1.wav"),
        ("export", "best validation SI-SNR"),
        ("convert", "JusperLee/S4M"),
        ("evaluate", "SI-SNRi"),
        ("minimix", "Debian voices"),
    ],
)
def test_cli_subcommand_help_explains_it(name, phrase):
    result = run_cli(name, "--help")
    check_success(result)
    assert result.stdout.startswith(f"usage: speechbrain-s4 {name}")
    assert phrase in result.stdout
    listing = run_cli("--help")
    assert name in listing.stdout


@pytest.mark.parametrize(
    "name, arguments, message",
    [
        ("separate", ["{tmp}/missing.wav"], "no audio file at"),
        ("export", ["{tmp}/norun", "{tmp}/out"], "no recipe output folder"),
        ("convert", ["mamba9", "{wav}", "{tmp}/out"], "unknown arch"),
        ("evaluate", ["{tmp}/nomix", "{tmp}/s1"], "no folder at"),
        ("minimix", ["{tmp}/mm", "--train", "0"], "positive number"),
    ],
)
def test_cli_user_errors_are_one_line(name, arguments, message, tmp_path):
    wav = tmp_path / "mix.wav"
    sf.write(str(wav), np.zeros(800, dtype=np.float32), RATE)
    arguments = [a.format(tmp=tmp_path, wav=wav) for a in arguments]
    result = run_cli(name, *arguments)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"speechbrain-s4 {name}: error: ")
    assert message in lines[0]


# -- real runs --------------------------------------------------------------------


def test_cli_separate_writes_each_speaker_at_the_input_rate(
    tiny_folder, tmp_path
):
    generator = np.random.default_rng(0)
    mono = (0.1 * generator.standard_normal(4321)).astype(np.float32)
    stereo = (0.1 * generator.standard_normal((16000, 2))).astype(np.float32)
    sf.write(str(tmp_path / "a.wav"), mono, RATE)
    sf.write(str(tmp_path / "b.flac"), stereo, 16000)
    out = tmp_path / "out"
    result = run_cli(
        "separate",
        tmp_path / "a.wav",
        tmp_path / "b.flac",
        "-o",
        out,
        "--model",
        tiny_folder,
        "--no-progress",
    )
    check_success(result)
    written = sorted(path.name for path in out.iterdir())
    assert written == ["a_s1.wav", "a_s2.wav", "b_s1.wav", "b_s2.wav"]
    assert result.stdout.split() == [str(out / name) for name in written]
    model = S4Separation.from_hparams(tiny_folder, run_opts={"device": "cpu"})
    for stem, suffix, rate, length in (
        ("a", "wav", RATE, 4321),
        ("b", "flac", 16000, 16000),
    ):
        expected = model.separate_file(tmp_path / f"{stem}.{suffix}")[0]
        for k in range(2):
            info = sf.info(str(out / f"{stem}_s{k + 1}.wav"))
            assert (info.samplerate, info.frames) == (rate, length)
            assert info.subtype == "FLOAT"  # not clipped to 16 bits
            values, _ = sf.read(
                str(out / f"{stem}_s{k + 1}.wav"), dtype="float32"
            )
            assert np.allclose(values, expected[:, k].numpy(), atol=1e-6)
    # the same name twice would overwrite: refused before any work
    (tmp_path / "sub").mkdir()
    sf.write(str(tmp_path / "sub" / "a.wav"), mono, RATE)
    clash = run_cli("separate", tmp_path / "a.wav", tmp_path / "sub" / "a.wav")
    assert (
        clash.returncode == 2 and "several inputs are named a" in clash.stderr
    )


def test_cli_export_turns_a_run_into_an_inference_folder(tmp_path):
    output = tmp_path / "run"
    overrides = {"output_folder": str(output), "model": TINY_S4M}
    recipe = ROOT / "hparams" / "s4m-tiny_minimix.yaml"
    # saved exactly as train.py saves a run, with a Checkpointer checkpoint
    previous_hook = sys.excepthook
    try:
        sb.create_experiment_directory(
            experiment_directory=str(output),
            hyperparams_to_save=str(recipe),
            overrides=overrides,
            save_env_desc=False,  # pip freeze: slow, not needed
        )
    finally:
        sys.excepthook = previous_hook
    sys.path.insert(0, str(ROOT))
    try:
        with open(recipe) as handle:
            hparams = load_hyperpyyaml(handle, overrides)
    finally:
        sys.path.remove(str(ROOT))
    separator = perturbed(hparams["modules"]["separator"])
    hparams["checkpointer"].save_checkpoint(meta={"si-snr": -7.25})
    result = run_cli("export", output, tmp_path / "model")
    check_success(result)
    assert "exported S4M from" in result.stdout
    assert "(validation SI-SNR 7.25 dB)" in result.stdout
    model = S4Separation.from_hparams(
        tmp_path / "model", run_opts={"device": "cpu"}
    )
    mix = torch.randn(2, 1500)
    with torch.no_grad():
        assert torch.equal(model.separate_batch(mix), separator(mix))


def test_cli_convert_reference_checkpoint(golden, tmp_path):
    fixture = golden("perturbed_tiny_io")["s4m_tiny"]
    checkpoint = tmp_path / "best_model.pth"
    torch.save({"state_dict": fixture["state_dict"]}, checkpoint)
    kwargs = [f"{key}={value}" for key, value in fixture["kwargs"].items()]
    result = run_cli(
        "convert", "s4m", checkpoint, tmp_path / "s4m", "--kwargs", *kwargs
    )
    check_success(result)
    assert "(S4M)" in result.stdout
    model = S4Separation.from_hparams(
        tmp_path / "s4m", run_opts={"device": "cpu"}
    )
    estimates = model.separate_batch(fixture["mixture"])
    reference = fixture["estimates_cauchy_conj"].transpose(1, 2)
    assert (estimates - reference).abs().max() <= 1e-5 * reference.abs().max()


@pytest.fixture(scope="module")
def minimix_test_split(tmp_path_factory):
    """A tiny minimix built by ``speechbrain-s4 minimix``: its test split."""
    missing = missing_packages(RATE)
    if missing:
        pytest.skip(
            "Debian voice packages not installed: "
            + apt_install_command(missing)
        )
    out = tmp_path_factory.mktemp("minimix")
    result = run_cli(
        "minimix",
        out,
        "--train",
        "2",
        "--valid",
        "1",
        "--test",
        "2",
        "--prompts-per-voice",
        "4",
        "--no-progress",
    )
    check_success(result)
    assert (
        result.stdout.strip() == f"8000 Hz: {out / 'wav8k' / 'metadata.json'}"
    )
    return out / "wav8k" / "test"


def read_table(stdout):
    """The rows of a printed results table, as dicts of floats."""
    lines = [line.split() for line in stdout.strip().splitlines()]
    header = lines[0]
    rows = {}
    for line in lines[1:]:
        if len(line) == len(header):
            rows[line[0]] = dict(zip(header[1:], map(float, line[1:]), strict=True))
    return header, rows


def test_cli_evaluate_scores_a_model_on_minimix(
    minimix_test_split, tiny_folder, tmp_path
):
    split = minimix_test_split
    result = run_cli(
        "evaluate",
        split / "mix_clean",
        split / "s1",
        split / "s2",
        "--model",
        tiny_folder,
        "--csv",
        tmp_path / "results.csv",
    )
    check_success(result)
    header, rows = read_table(result.stdout)
    assert header == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    mixtures = sorted((split / "mix_clean").glob("*.wav"))
    assert sorted(rows) == sorted([path.stem for path in mixtures] + ["avg"])
    model = S4Separation.from_hparams(tiny_folder, run_opts={"device": "cpu"})
    for path in mixtures:
        mixture = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
        targets = torch.stack(
            [
                torch.from_numpy(
                    sf.read(str(split / s / path.name), dtype="float32")[0]
                )
                for s in ("s1", "s2")
            ],
            dim=-1,
        )
        expected = utterance_metrics(
            path.stem, mixture, targets, model.separate_file(path)[0], RATE
        )
        for column in header[1:]:
            assert rows[path.stem][column] == pytest.approx(
                expected[column], abs=0.006
            )
    with open(tmp_path / "results.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == header and table[-1][0] == "avg"


def test_cli_evaluate_scores_separated_files(minimix_test_split, tmp_path):
    split = minimix_test_split
    estimates = tmp_path / "estimates"
    estimates.mkdir()
    for path in sorted((split / "mix_clean").glob("*.wav")):
        # perfect estimates in swapped order: the permutation must not matter
        for k, source in ((1, "s2"), (2, "s1")):
            data, rate = sf.read(
                str(split / source / path.name), dtype="float32"
            )
            sf.write(str(estimates / f"{path.stem}_s{k}.wav"), data, rate)
    result = run_cli(
        "evaluate",
        split / "mix_clean",
        split / "s1",
        split / "s2",
        "--estimates",
        estimates,
    )
    check_success(result)
    _, rows = read_table(result.stdout)
    assert rows["avg"]["si-snr"] > 60 and rows["avg"]["si-snr_i"] > 50
    # a missing estimate is a user error naming the file
    missing = next(estimates.iterdir())
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=missing.name):
        evaluate_folders(
            split / "mix_clean",
            [split / "s1", split / "s2"],
            estimates_folder=estimates,
        )


def test_evaluate_shows_a_progress_bar_over_the_mixtures(
    minimix_test_split, tmp_path, capsys
):
    split = minimix_test_split
    estimates = tmp_path / "estimates"
    estimates.mkdir()
    mixtures = sorted((split / "mix_clean").glob("*.wav"))
    for path in mixtures:
        for k, source in ((1, "s1"), (2, "s2")):
            data, rate = sf.read(str(split / source / path.name), dtype="float32")
            sf.write(str(estimates / f"{path.stem}_s{k}.wav"), data, rate)
    folders = [split / "s1", split / "s2"]
    evaluate_folders(
        split / "mix_clean", folders, estimates_folder=estimates, progress=True
    )
    shown = capsys.readouterr().err
    assert "evaluating" in shown and f"{len(mixtures)}/{len(mixtures)}" in shown
    evaluate_folders(
        split / "mix_clean", folders, estimates_folder=estimates, progress=False
    )
    assert "evaluating" not in capsys.readouterr().err
