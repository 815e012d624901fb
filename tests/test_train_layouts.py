"""train.py end to end: every dataset layout, and every kind of separator.

* For every layout, a fake dataset tree (``fake_layouts.make_fake_layout``)
  goes through that dataset's recipe (``hparams/sepformer_<layout>.yaml``
  with a tiny Sepformer): preparation, one epoch, evaluation. These run
  ``train.main`` in this process to save seven interpreter start-ups.
* For every kind of separator (SpeechBrain lobes in a MaskingSeparator, S4M
  with its joint decoder, and the mapping SPMamba once it exists), the real
  ``train.py`` runs in a subprocess, with dynamic mixing and speed
  perturbation switched on.

Each run must leave a checkpoint, ``train_log.txt`` with finite losses and
``test_results.csv`` with SpeechBrain's columns and one row per test item.
"""

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_layouts import LAYOUTS, make_fake_layout

ROOT = Path(__file__).resolve().parents[1]

#: per model file: the smallest sizes that still exercise every part
TINY_MODELS = {
    "sepformer": "{encoder_filters: 8, num_layers: 1, d_ffn: 16, nhead: 2, "
    "chunk_size: 10, num_repeats: 1}",
    "s4m-tiny": "{hidden_channels: 16, bottleneck_channels: 8, "
    "num_blocks: 2, depth: 2, d_state: 4}",
}

#: the datasets at 16 kHz (their recipes' rate)
RATES = {"lrs2mix": 16000, "echo2mix": 16000}


def train_args(
    recipe, data_folder, output_folder, model, training="", epochs=1, batch=2
):
    """Command-line arguments of one tiny run of train.py."""
    return [
        str(ROOT / "hparams" / f"{recipe}.yaml"),
        f"--data_folder={data_folder}",
        f"--output_folder={output_folder}",
        "--device=cpu",
        "--noprogressbar",
        f"--model={TINY_MODELS[model]}",
        f"--training={{num_workers: 0, number_of_epochs: {epochs}, "
        f"segment_seconds: 0.25, batch_size: {batch}{training}}}",
    ]


def subprocess_env():
    """One thread per process (a busy 2-core box), repository importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    return env


def read_train_log(output_folder):
    """The epoch lines and the test line of train_log.txt, as dicts."""
    lines = (Path(output_folder) / "train_log.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch:")]
    tests = [line for line in lines if line.startswith("Epoch loaded")]
    return epochs, tests


def log_value(line, name):
    match = re.search(rf"{re.escape(name)}: (\S+?)(,| -|$)", line)
    assert match, f"no {name!r} in {line!r}"
    return float(match.group(1))


def check_finished_run(output_folder, num_epochs=1):
    """Checkpoint, log and results of a finished run; return the results."""
    output_folder = Path(output_folder)
    checkpoints = sorted((output_folder / "save").glob("CKPT+*"))
    assert len(checkpoints) == 1, checkpoints
    assert (checkpoints[0] / "separator.ckpt").stat().st_size > 0
    epochs, tests = read_train_log(output_folder)
    assert [log_value(line, "epoch") for line in epochs] == list(
        range(1, num_epochs + 1)
    )
    for line in epochs:
        assert math.isfinite(log_value(line, "train si-snr"))
        assert math.isfinite(log_value(line, "valid si-snr"))
    assert len(tests) == 1 and math.isfinite(log_value(tests[0], "test si-snr"))
    with open(output_folder / "test_results.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    with open(output_folder / "save" / "test.csv", newline="") as handle:
        test_ids = [row["ID"] for row in csv.DictReader(handle)]
    assert [row[0] for row in table[1:]] == [*test_ids, "avg"]
    values = [[float(x) for x in row[1:]] for row in table[1:]]
    assert all(math.isfinite(x) for row in values for x in row)
    return table


@pytest.fixture
def train_main(monkeypatch):
    """``train.main`` imported from the repository root (in this process)."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # SB replaces it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.main
    torch.set_num_threads(threads)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_prepares_and_trains_one_epoch(
    layout, tmp_path, train_main
):
    data_folder = make_fake_layout(
        layout, tmp_path / "data", sample_rate=RATES.get(layout, 8000)
    )
    output = tmp_path / "out"
    recipe = f"sepformer_{layout}"
    train_main(train_args(recipe, data_folder, output, "sepformer"))
    table = check_finished_run(output)
    assert len(table) == 3 + 2  # header, 3 fake test mixtures, avg
    with open(output / "save" / "train.csv", newline="") as handle:
        train_rows = list(csv.DictReader(handle))
    assert len(train_rows) == 3
    noisy = "noise_wav" in train_rows[0]
    assert noisy == (layout in ("wham", "whamr"))


@pytest.mark.parametrize(
    "recipe, model",
    [
        ("sepformer_wsj0mix", "sepformer"),  # SpeechBrain lobes, per-speaker
        ("s4m-tiny_wsj0mix", "s4m-tiny"),  # S4M, joint decoder, S4 groups
    ],
)
def test_train_py_runs_every_kind_of_separator(recipe, model, tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", num_files=4)
    output = tmp_path / "out"
    args = train_args(
        recipe,
        data_folder,
        output,
        model,
        training=", dynamic_mixing: True, use_speedperturb: True",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_finished_run(output)
    log = (output / "log.txt").read_text()
    # the separator really was the recipe's model, with its parameter groups
    expected = {"sepformer": "MaskingSeparator", "s4m-tiny": "S4M"}[model]
    assert f"training {expected} (as {expected}) on 1 process(es)" in log
    if model == "s4m-tiny":
        assert "2 parameter group(s)" in log  # S4 parameters apart
    assert "dynamic mixing from" in log and "4 speakers" in log
    assert "speed perturbation of each source: [95, 100, 105] %" in log
