"""The kernel benchmark table: rows, finite numbers, agreement (not timing)."""

import math

import pytest

from speechbrain_s4 import cli
from speechbrain_s4.benchmark import format_kernel_table, kernel_benchmark

TINY = {
    "batch": 2,
    "d_inner": 8,
    "d_state": 4,
    "length": 45,
    "s4_channels": 8,
    "s4_state": 8,
}
KERNELS = [
    "selective scan, sequential loop (ref)",
    "selective scan, chunked (torch)",
    "selective scan, fused C++ (cpp)",
    "S4 layer: kernel + FFT conv (bidirectional)",
]


def test_kernel_benchmark_rows_are_finite_and_backends_agree():
    rows = kernel_benchmark(threads=1, repeats=2, **TINY)
    assert [row["kernel"] for row in rows] == KERNELS
    for row in rows:
        for key in ("forward", "forward_backward"):
            for clock in ("ms", "cpu_ms"):
                time_ms = row[f"{key}_{clock}"]
                assert math.isfinite(time_ms) and time_ms >= 0
            assert row[f"{key}_ms"] > 0
    ref, fast, fused, s4 = rows
    assert ref["size"] == fast["size"] == fused["size"] == "B=2 D=8 N=4 L=45"
    assert s4["size"] == "B=2 H=8 N=8 L=45"
    # speed-ups are ratios of CPU times
    assert (
        fast["speedup_forward"]
        == ref["forward_cpu_ms"] / fast["forward_cpu_ms"]
    )
    assert fused["speedup_vs_torch_forward_backward"] == (
        fast["forward_backward_cpu_ms"] / fused["forward_backward_cpu_ms"]
    )
    assert math.isfinite(fast["speedup_forward_backward"])
    # outputs and gradients of each fast scan against the loop, float32
    for row in (fast, fused):
        assert 0 <= row["max_rel_diff"] <= 1e-5
        assert row["max_abs_diff"] >= 0
    table = format_kernel_table(rows, threads=1)
    lines = table.splitlines()
    assert "1 threads" in lines[0]
    assert len(lines) == 2 + len(KERNELS)
    for kernel, line in zip(KERNELS, lines[2:], strict=True):
        assert line.startswith(kernel)


def test_cli_benchmark_kernels_prints_the_table(capsys):
    args = ["benchmark", "--kernels", "--threads", "1", "--repeats", "1"]
    args += ["--batch", "1", "--d-inner", "4", "--d-state", "2"]
    args += ["--length", "20", "--s4-channels", "4", "--s4-state", "4"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for kernel in KERNELS:
        assert kernel in out


def test_cli_benchmark_tables_are_exclusive(capsys):
    """One table per run: --kernels and --streaming cannot be combined."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["benchmark", "--kernels", "--streaming"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_benchmark_streaming_prints_the_rtf_table(capsys):
    args = ["benchmark", "--streaming", "--threads", "1", "--chunk-ms", "16"]
    args += ["--stream-seconds", "0.2"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("latency") and "1 threads" in lines[0]
    assert lines[1].split()[0] == "chunk"
    assert lines[2].split()[:2] == ["16.0", "ms"]
    assert lines[3].split()[0] == "offline"
    assert len(lines) == 4
