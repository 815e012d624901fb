"""The model benchmark: rows, columns, ratios, files, goals and the CLI.

Tiny models (through ``model_benchmark``'s ``overrides``) on short audio
with one repeat: the numbers are checked for consistency with each other
and with independent computations (parameter counts, ``count_macs``, the
results CSVs), never against a time.
"""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_s4 import cli
from speechbrain_s4.benchmark import (
    DEFAULT_MODELS,
    MODEL_LABELS,
    SPEED_GOALS,
    format_model_table,
    matmul_gflops,
    model_benchmark,
    read_si_snr_improvement,
    write_model_report,
)
from speechbrain_s4.macs import count_macs
from speechbrain_s4.metrics import write_results_csv
from speechbrain_s4.models import MODEL_NAMES, build

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "s4m-tiny": {"num_blocks": 1, "hidden_channels": 16,
                 "bottleneck_channels": 8},
    "s4m": {"num_blocks": 1, "hidden_channels": 16, "bottleneck_channels": 8},
    "spmamba": {"n_layers": 1, "emb_dim": 4, "emb_ks": 2, "attn_n_head": 2},
    "sepformer": {"encoder_filters": 8, "chunk_size": 10, "num_repeats": 1,
                  "num_layers": 1, "nhead": 2, "d_ffn": 16},
    "convtasnet": {"encoder_filters": 8, "bottleneck_channels": 8,
                   "hidden_channels": 16, "blocks_per_repeat": 2,
                   "num_repeats": 1},
}
SECONDS = 0.25
SCORES = {"s4m-tiny": 8.25, "sepformer": 9.5}


def _results_csv(path, si_snr_i):
    """A results CSV in the project's layout whose avg si-snr_i is given."""
    rows = [
        {"snt_id": f"u{i}", "sdr": 1.0, "sdr_i": 1.0, "si-snr": 1.0,
         "si-snr_i": si_snr_i + offset}
        for i, offset in enumerate((-0.5, 0.5))
    ]
    write_results_csv(rows, path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    results = {
        name: _results_csv(folder / f"{name}.csv", score)
        for name, score in SCORES.items()
    }
    return model_benchmark(
        threads=1, repeats=1, seconds=SECONDS, train_seconds=SECONDS,
        results=results, memory=False, overrides=TINY, gemm_size=128,
    )


def test_rows_and_columns(report):
    rows = report["rows"]
    assert [row["model"] for row in rows] == list(DEFAULT_MODELS)
    assert [row["label"] for row in rows] == [
        MODEL_LABELS[name] for name in DEFAULT_MODELS
    ]
    for row in rows:
        model = build(row["model"], **TINY[row["model"]])
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["macs_per_s"] == pytest.approx(
            count_macs(model, seconds=SECONDS)["total"]
        )
        for key in ("fwd8k", "fwd16k"):
            assert row[f"{key}_runs"] == 1
            assert row[f"{key}_cpu_s"] > 0 and row[f"{key}_wall_s"] > 0
        assert row["train_runs"] == 1
        assert row["train_cpu_s"] > 0 and row["train_wall_s"] > 0
        assert row["peak_rss_mb"] is None  # memory=False
        assert row["train_peak_rss_mb"] is None
        assert row["si_snr_i"] == SCORES.get(row["model"])
    assert report["settings"]["threads"] == 1
    assert report["gemm"]["cpu_gflops"] > 0


def test_ratios_floor_and_goals(report):
    rows = {row["model"]: row for row in report["rows"]}
    sepformer = rows["sepformer"]
    gflops = report["gemm"]["cpu_gflops"]
    for name, row in rows.items():
        for key in ("fwd8k", "fwd16k"):
            assert row[f"{key}_ratio"] == pytest.approx(
                row[f"{key}_cpu_s"] / sepformer[f"{key}_cpu_s"]
            )
        floor = 2 * row["macs_per_s"] * SECONDS / (gflops * 1e9)
        assert row["mac_floor_s"] == pytest.approx(floor)
        assert row["over_floor"] == pytest.approx(row["fwd8k_cpu_s"] / floor)
        assert row["goal"] == SPEED_GOALS.get(name)
        if row["goal"] is None:
            assert row["goal_reached"] is None
        else:
            assert row["goal_reached"] == (row["fwd8k_ratio"] <= row["goal"])
    assert sepformer["fwd8k_ratio"] == 1.0


def test_table_and_footnotes(report):
    text = format_model_table(report)
    lines = text.splitlines()
    assert "1 thread(s)" in lines[0]
    assert lines[1].split("  ")[0] == "model"
    for row, line in zip(report["rows"], lines[2:7], strict=True):
        assert line.startswith(row["label"])
        assert f"{row['fwd8k_ratio']:.2f}x" in line
    assert "Sepformer (SpeechBrain)" in lines[5] and "1.00x" in lines[5]
    assert "8.25" in lines[2]  # S4M-tiny's SI-SNRi
    for name, goal in SPEED_GOALS.items():
        row = next(r for r in report["rows"] if r["model"] == name)
        verdict = "reached" if row["goal_reached"] else "not reached"
        assert (
            f"* Goal: {MODEL_LABELS[name]} forward <= {goal:.2f}x Sepformer "
            f"({SECONDS:g} s at 8 kHz, CPU time): {row['fwd8k_ratio']:.2f}x, "
            f"{verdict}."
        ) in lines
    assert any("count_macs" in line and "dispatch level" in line
               for line in lines)
    assert any("GFLOP/s" in line for line in lines)


def test_report_files(report, tmp_path):
    paths = write_model_report(report, tmp_path / "out")
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == list(DEFAULT_MODELS)
    for written, measured in zip(rows, report["rows"], strict=True):
        assert int(written["params"]) == measured["params"]
        assert float(written["fwd8k_ratio"]) == pytest.approx(
            measured["fwd8k_ratio"]
        )
        assert written["threads"] == "1"
        score = measured["si_snr_i"]
        assert written["si_snr_i"] == ("" if score is None else str(score))
    markdown = Path(paths["markdown"]).read_text().splitlines()
    table = [line for line in markdown if line.startswith("| ")]
    assert len(table) == 1 + len(DEFAULT_MODELS)
    assert markdown[markdown.index(table[0]) + 1].startswith("|---|")
    assert any(line.startswith("* Goal: S4M-tiny forward <= 0.15x")
               for line in markdown)
    png = Path(paths["png"]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"SI-SNRi from the results CSVs" in png  # the title metadata
    # without any SI-SNRi the plot shows CPU time against MACs and says so
    unscored = {**report, "rows": [{**row, "si_snr_i": None}
                                   for row in report["rows"]]}
    paths = write_model_report(unscored, tmp_path / "unscored")
    assert b"No SI-SNRi given" in Path(paths["png"]).read_bytes()


def test_peak_memory_and_training_step_in_a_fresh_process():
    """One subprocess per model: Sepformer is added (the ratios need it)."""
    report = model_benchmark(
        ["s4m-tiny"], repeats=1, seconds=SECONDS, forward_rates=[8000],
        train_seconds=SECONDS, overrides=TINY, gemm_size=64,
    )
    assert [row["model"] for row in report["rows"]] == ["s4m-tiny", "sepformer"]
    for row in report["rows"]:
        # the interpreter with torch and SpeechBrain alone needs > 100 MB
        assert 100 < row["built_rss_mb"] <= row["peak_rss_mb"] < 8000
        assert row["peak_rss_mb"] <= row["train_peak_rss_mb"] < 8000
        assert row["train_runs"] == 1
        assert row["train_cpu_s"] > 0 and row["train_wall_s"] > 0
        assert "fwd16k_cpu_s" not in row  # forward_rates=[8000]
    line = format_model_table(report).splitlines()[2]
    first = report["rows"][0]
    assert f"{first['peak_rss_mb']:.0f} (+" in line
    assert f" {first['train_peak_rss_mb']:.0f} " in line


def test_matmul_speed_is_finite():
    speed = matmul_gflops(threads=1, size=64, repeats=2)
    assert math.isfinite(speed["cpu_gflops"]) and speed["cpu_gflops"] > 0
    assert speed["size"] == 64 and speed["threads"] == 1


def test_results_csv_errors(tmp_path):
    path = _results_csv(tmp_path / "r.csv", 7.0)
    assert read_si_snr_improvement(path) == pytest.approx(7.0)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_si_snr_improvement(tmp_path / "missing.csv")
    no_avg = tmp_path / "no_avg.csv"
    no_avg.write_text("snt_id,sdr,sdr_i,si-snr,si-snr_i\na,1,1,1,1\n")
    with pytest.raises(ValueError, match="no 'avg' row"):
        read_si_snr_improvement(no_avg)
    other = tmp_path / "other.csv"
    other.write_text("id,score\navg,1\n")
    with pytest.raises(ValueError, match="no si-snr_i column"):
        read_si_snr_improvement(other)


def test_user_errors_before_measuring(tmp_path):
    with pytest.raises(ValueError, match="unknown model name 'fast'"):
        model_benchmark(["s4m-tiny", "fast"])
    with pytest.raises(ValueError, match="'spmamba', which is not benchmarked"):
        model_benchmark(["s4m-tiny"], results={"spmamba": tmp_path / "r.csv"})
    with pytest.raises(FileNotFoundError, match="r.csv"):
        model_benchmark(["s4m-tiny"], results={"s4m-tiny": tmp_path / "r.csv"})
    with pytest.raises(ValueError, match="must include 8000"):
        model_benchmark(["s4m-tiny"], forward_rates=[16000])


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )


def test_cli_help_and_unknown_model_in_a_subprocess():
    result = _run_cli("benchmark", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--kernels", "--streaming", "--models", "--results",
                   "--train-seconds", "--threads", "--out"):
        assert option in result.stdout
    result = _run_cli("benchmark", "--models", "s4m-tiny", "nope")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "speechbrain-s4 benchmark: error: unknown model name 'nope'; "
        "expected some of " + ", ".join(MODEL_NAMES)
    ]


def test_cli_results_argument_is_checked(capsys):
    assert cli.main(["benchmark", "--results", "s4m-tiny"]) == 2
    assert "--results expects NAME=CSV" in capsys.readouterr().err
    assert cli.main(["benchmark", "--threads", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err



def test_forward_times_take_turns_and_stop_per_model(monkeypatch):
    """The timed forwards alternate between models (drift of the machine
    hits all alike); each model leaves after ``repeats`` runs or once its
    CPU budget would be passed."""
    from speechbrain_s4 import benchmark

    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def eval(self):
            return self

        def __call__(self, mix):
            calls.append(self.name)

    monkeypatch.setattr(
        benchmark, "_build", lambda name, rate, overrides, seed: Recorder(name)
    )
    times = benchmark._forward_times(
        ["a", "b", "c"], 8000, 0.01, {}, repeats=3, budget_s=60.0, seed=0
    )
    # warm-ups first, then rounds of one forward per model
    assert calls == ["a", "b", "c"] * 4
    assert {name: runs for name, (_, _, runs) in times.items()} == {
        "a": 3, "b": 3, "c": 3
    }
    calls.clear()
    times = benchmark._forward_times(
        ["a", "b"], 8000, 0.01, {}, repeats=3, budget_s=0.0, seed=0
    )
    assert calls == ["a", "b", "a", "b"]  # budget spent: one timed run each
    assert [runs for _, _, runs in times.values()] == [1, 1]
