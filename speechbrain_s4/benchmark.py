"""Benchmarks printed as tables (speed goals live here, never in tests).

``kernel_benchmark`` times the sequence kernels on CPU: the selective scan
of Mamba (Gu and Dao, arXiv:2312.00752) as the sequential reference loop, as
the chunked "torch" backend and as the fused C++ "cpp" backend, at
SPMamba's mixer size (d_inner 512, d_state 16), and the S4 layer (Gu, Goel
and Re, ICLR 2022) as S4M uses it (kernel + FFT convolution, H 512).
``format_kernel_table`` prints the rows.

Timings are medians over repeats after a warm-up, with a fixed number of
intra-op threads, of both the CPU time of the process (``time.process_time``,
which a busy shared machine disturbs least) and the wall-clock time; the
speed-ups are ratios of CPU times. The reference loop is slow in Python and
is timed with fewer repeats.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch

__all__ = ["format_kernel_table", "kernel_benchmark"]


@contextlib.contextmanager
def _num_threads(threads):
    """Run the block with ``threads`` intra-op threads, then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _median_ms(fn, repeats, warmup):
    """Median (wall, CPU) times of fn() in ms after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def _scan_inputs(batch, d_inner, d_state, length, seed):
    """Inputs of one Mamba mixer's scan, laid out as the mixer passes them.

    A = -(1..N) and Delta = softplus(raw + bias) with the bias drawn like
    mamba_ssm's dt initialisation (Delta in [1e-3, 1e-1]); u, delta and z
    are [B, D, L] views of channels-last ([B, L, D]) tensors, as in
    ``Mamba.forward``.
    """
    gen = torch.Generator().manual_seed(seed)

    def channels_last(*shape):  # [B, D, L] view of a [B, L, D] tensor
        b, d, seq = shape
        return torch.randn(b, seq, d, generator=gen).transpose(1, 2)

    dt = torch.exp(
        torch.rand(d_inner, generator=gen) * (math.log(0.1) - math.log(1e-3))
        + math.log(1e-3)
    )
    return {
        "u": channels_last(batch, d_inner, length),
        "delta": 0.1 * channels_last(batch, d_inner, length),
        "A": -torch.arange(1, d_state + 1.0).repeat(d_inner, 1),
        "B": torch.randn(batch, d_state, length, generator=gen),
        "C": torch.randn(batch, d_state, length, generator=gen),
        "D": torch.ones(d_inner),
        "z": channels_last(batch, d_inner, length),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def _scan_call(inputs, backend):
    from speechbrain_s4.ssm.scan import selective_scan

    x = inputs
    return selective_scan(
        x["u"],
        x["delta"],
        x["A"],
        x["B"],
        x["C"],
        D=x["D"],
        z=x["z"],
        delta_bias=x["delta_bias"],
        delta_softplus=True,
        backend=backend,
    )


def _forward_backward(fn, leaves, weight):
    """Run fn() with gradients and back-propagate a fixed linear loss."""
    out = fn()
    grads = torch.autograd.grad((out * weight).sum(), leaves)
    return out, grads


def _time_scan(inputs, backend, repeats, warmup):
    """((wall, CPU) ms of the forward, of forward+backward, output, input
    gradients)."""
    with torch.no_grad():
        forward_ms = _median_ms(
            lambda: _scan_call(inputs, backend), repeats, warmup
        )
        out = _scan_call(inputs, backend)
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    weight = torch.ones_like(out)
    result = {}

    def step():
        result["value"] = _forward_backward(
            lambda: _scan_call(leaves, backend), list(leaves.values()), weight
        )

    backward_ms = _median_ms(step, repeats, warmup)
    return forward_ms, backward_ms, out, result["value"][1]


def _max_abs_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def _scan_row(kernel, size, timed, ref, torch_row=None):
    """A scan's row: times, speed-ups (CPU time) over the loop ``ref`` and
    the torch backend ``torch_row``, and the largest difference from the
    loop over the output and the input gradients."""
    (wall_f, cpu_f), (wall_fb, cpu_fb), out, grads = timed
    extra = {}
    if ref is not timed:
        diffs = [_max_abs_diff(out, ref[2])]
        peaks = [float(ref[2].abs().max())]
        for grad, ref_grad in zip(grads, ref[3], strict=True):
            diffs.append(_max_abs_diff(grad, ref_grad))
            peaks.append(float(ref_grad.abs().max()))
        extra = {
            "speedup_forward": ref[0][1] / cpu_f,
            "speedup_forward_backward": ref[1][1] / cpu_fb,
            "max_abs_diff": max(diffs),
            "max_rel_diff": max(
                d / p for d, p in zip(diffs, peaks, strict=True) if p > 0
            ),
        }
    if torch_row is not None:
        extra["speedup_vs_torch_forward"] = torch_row[0][1] / cpu_f
        extra["speedup_vs_torch_forward_backward"] = torch_row[1][1] / cpu_fb
    return _row(
        kernel,
        size,
        wall_f,
        wall_fb,
        forward_cpu_ms=cpu_f,
        forward_backward_cpu_ms=cpu_fb,
        **extra,
    )


def kernel_benchmark(
    batch: int = 4,
    d_inner: int = 512,
    d_state: int = 16,
    length: int = 4000,
    s4_channels: int = 512,
    s4_state: int = 16,
    threads: int = 1,
    repeats: int = 5,
    ref_repeats: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Time the sequence kernels on CPU; one dict per table row.

    Rows: the selective scan as the sequential loop ("ref"), as the chunked
    CPU scan ("torch") and as the fused C++ kernel ("cpp", when it builds
    here), forward and forward+backward, with the speed-ups over the loop
    (and, for "cpp", over "torch") and the largest difference from the loop
    (outputs and input gradients, absolute and relative to the peak); then
    the S4 layer (DPLR kernel + FFT convolution + output layers,
    bidirectional) on [batch, s4_channels, length].

    Arguments
    ---------
    batch, d_inner, d_state, length : int
        Scan size: u is [batch, d_inner, length], A is [d_inner, d_state].
    s4_channels, s4_state : int
        S4 layer size (H, N); it runs on [batch, H, length].
    threads : int
        Intra-op threads, fixed for the whole benchmark. The default, 1,
        gives reproducible numbers on a shared machine: with 2 threads on 2
        busy cores, every parallel kernel waits for the other core.
    repeats : int
        Timed repeats of the fast kernels (after one warm-up).
    ref_repeats : int
        Timed repeats of the reference loop (warmed up on a short sequence).
    seed : int
        Seed of the random inputs.

    Returns
    -------
    list of dict
        Keys: ``kernel``, ``size``; ``forward_ms``, ``forward_backward_ms``
        (wall clock) and ``forward_cpu_ms``, ``forward_backward_cpu_ms``
        (CPU time); ``speedup_forward``, ``speedup_forward_backward`` (over
        the loop), ``speedup_vs_torch_forward``,
        ``speedup_vs_torch_forward_backward`` (over "torch"), all ratios of
        CPU times; ``max_abs_diff``, ``max_rel_diff`` (None where not
        applicable).

    Example
    -------
    >>> rows = kernel_benchmark(batch=1, d_inner=4, d_state=2, length=16,
    ...                         s4_channels=4, s4_state=4, repeats=1)
    >>> for row in rows:
    ...     print(row["kernel"])
    selective scan, sequential loop (ref)
    selective scan, chunked (torch)
    selective scan, fused C++ (cpp)
    S4 layer: kernel + FFT conv (bidirectional)
    """
    size = f"B={batch} D={d_inner} N={d_state} L={length}"
    with _num_threads(threads):
        inputs = _scan_inputs(batch, d_inner, d_state, length, seed)
        # warm the loop's kernels up on a short piece, then time it fully
        short = {
            k: v[..., : min(length, 16)] if v.dim() == 3 else v
            for k, v in inputs.items()
        }
        _time_scan(short, "ref", 1, 0)
        ref = _time_scan(inputs, "ref", ref_repeats, 0)
        chunked = _time_scan(inputs, "torch", repeats, 1)
        rows = [
            _scan_row("selective scan, sequential loop (ref)", size, ref, ref),
            _scan_row("selective scan, chunked (torch)", size, chunked, ref),
        ]
        if _cpp_available():
            fused = _time_scan(inputs, "cpp", repeats, 1)
            rows.append(
                _scan_row(
                    "selective scan, fused C++ (cpp)", size, fused, ref, chunked
                )
            )
        rows.append(
            _s4_row(batch, s4_channels, s4_state, length, repeats, seed)
        )
    return rows


def _cpp_available():
    """Whether the "cpp" scan builds here (else its row is left out)."""
    from speechbrain_s4.ssm.scan_cpp import extension_available

    return extension_available()


def _row(kernel, size, forward_ms, forward_backward_ms, **extra):
    row = {
        "kernel": kernel,
        "size": size,
        "forward_ms": forward_ms,
        "forward_backward_ms": forward_backward_ms,
        "forward_cpu_ms": None,
        "forward_backward_cpu_ms": None,
        "speedup_forward": None,
        "speedup_forward_backward": None,
        "speedup_vs_torch_forward": None,
        "speedup_vs_torch_forward_backward": None,
        "max_abs_diff": None,
        "max_rel_diff": None,
    }
    row.update(extra)
    return row


def _s4_row(batch, channels, d_state, length, repeats, seed):
    """S4 layer as S4M builds it: DPLR kernel, bidirectional, FFT conv."""
    from speechbrain_s4.ssm import S4

    torch.manual_seed(seed)
    layer = S4(d_model=channels, d_state=d_state, bidirectional=True)
    x = torch.randn(batch, channels, length)
    with torch.no_grad():
        forward = _median_ms(lambda: layer(x), repeats, 1)
    leaves = list(layer.parameters())

    def step():
        torch.autograd.grad(layer(x).sum(), leaves)

    forward_backward = _median_ms(step, repeats, 1)
    return _row(
        "S4 layer: kernel + FFT conv (bidirectional)",
        f"B={batch} H={channels} N={d_state} L={length}",
        forward[0],
        forward_backward[0],
        forward_cpu_ms=forward[1],
        forward_backward_cpu_ms=forward_backward[1],
    )


def format_kernel_table(rows: list[dict], threads: int | None = None) -> str:
    """Format ``kernel_benchmark`` rows as a plain-text table.

    Times are shown as CPU / wall-clock milliseconds; speed-ups ("fwd" and
    "fwd+bwd") are ratios of CPU times.

    Arguments
    ---------
    rows : list of dict
        As returned by ``kernel_benchmark`` (keys missing from a row show
        as "-").
    threads : int, optional
        Thread count to mention in the title.

    Returns
    -------
    str
        The table, one line per row.

    Example
    -------
    >>> row = dict(kernel="k", size="L=1", forward_ms=1.0,
    ...            forward_backward_ms=2.0, forward_cpu_ms=0.9,
    ...            forward_backward_cpu_ms=1.8, speedup_forward=3.0,
    ...            speedup_forward_backward=2.5)
    >>> print(format_kernel_table([row]).splitlines()[-1])
    k  L=1  0.9 / 1.0  1.8 / 2.0  3.0x / 2.5x  -  -
    """
    header = (
        "kernel",
        "size",
        "fwd ms cpu / wall",
        "fwd+bwd ms cpu / wall",
        "vs loop fwd / fwd+bwd",
        "vs torch fwd / fwd+bwd",
        "max |diff| (rel. to peak)",
    )

    def pair(row, first, second, fmt, unit=""):
        values = (row.get(first), row.get(second))
        if all(value is None for value in values):
            return "-"
        return " / ".join(
            "-" if value is None else format(value, fmt) + unit
            for value in values
        )

    lines = [header]
    for row in rows:
        diff = (
            "-"
            if row.get("max_abs_diff") is None
            else f"{row['max_abs_diff']:.2e} ({row['max_rel_diff']:.1e})"
        )
        lines.append(
            (
                row["kernel"],
                row["size"],
                pair(row, "forward_cpu_ms", "forward_ms", ".1f"),
                pair(
                    row, "forward_backward_cpu_ms", "forward_backward_ms", ".1f"
                ),
                pair(
                    row,
                    "speedup_forward",
                    "speedup_forward_backward",
                    ".1f",
                    "x",
                ),
                pair(
                    row,
                    "speedup_vs_torch_forward",
                    "speedup_vs_torch_forward_backward",
                    ".1f",
                    "x",
                ),
                diff,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            value.ljust(width)
            for value, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    ]
    title = "CPU kernel benchmark (medians; speed-ups from CPU time"
    title += f", {threads} threads)" if threads else ")"
    return "\n".join([title, *text])
