"""Benchmarks printed as tables (speed goals live here, never in tests).

Three tables, one command each (``speechbrain-s4 benchmark``):

* **The models side by side** (:func:`model_benchmark`, printed by
  :func:`format_model_table`, written as CSV + Markdown + PNG by
  :func:`write_model_report`): S4M-tiny and S4M (Chen et al., Interspeech
  2023), SPMamba (Li et al., arXiv:2404.02063) and SpeechBrain's stock
  Sepformer (Subakan et al., ICASSP 2021) and Conv-TasNet (Luo and
  Mesgarani, IEEE/ACM TASLP 2019), all measured in one run on this machine:
  parameters, MACs per second of audio (``speechbrain_s4.macs``), CPU
  forward time of 1 s at 8 and 16 kHz as a ratio to Sepformer's, the peak
  memory of a 1 s forward, then the time and peak memory of one training
  step (both in a fresh process per model), SI-SNRi read from results
  CSVs, and the time over each
  model's MAC floor at the measured matmul speed of the machine. The speed
  goals of issues 3 and 4 (S4M-tiny <= 0.15x, S4M <= 0.40x, SPMamba <= 3x
  Sepformer's forward time) are reported as reached or not.
* **The sequence kernels** (:func:`kernel_benchmark`,
  :func:`format_kernel_table`): the selective scan of Mamba (Gu and Dao,
  arXiv:2312.00752) as the sequential reference loop, as the chunked
  "torch" backend and as the fused C++ "cpp" backend, at SPMamba's mixer
  size (d_inner 512, d_state 16), and the S4 layer (Gu, Goel and Re, ICLR
  2022) as S4M uses it (kernel + FFT convolution, H 512).
* **Streaming** of the causal S4M-tiny (:func:`rtf_benchmark`,
  :func:`format_rtf_table`; ``--streaming``): the real-time factor of
  ``CausalS4M.stream()`` per chunk size.

Timings are medians over repeats after a warm-up, with a fixed number of
intra-op threads, of both the CPU time of the process (``time.process_time``,
summed over threads, which a busy shared machine disturbs least) and the
wall-clock time (which also counts the time spent waiting for a core);
ratios and speed-ups are ratios of CPU times. Slow cases get fewer repeats
(the reference loop; models whose warm-up exceeds a time budget).

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

__all__ = [
    "DEFAULT_MODELS",
    "MODEL_LABELS",
    "REFERENCE_MODEL",
    "SPEED_GOALS",
    "format_kernel_table",
    "format_model_table",
    "format_rtf_table",
    "kernel_benchmark",
    "matmul_gflops",
    "model_benchmark",
    "read_si_snr_improvement",
    "rtf_benchmark",
    "write_model_report",
]


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


# ---------------------------------------------------------------------------
# The models side by side
# ---------------------------------------------------------------------------

#: registry names of the default rows, in table order
DEFAULT_MODELS = ("s4m-tiny", "s4m", "spmamba", "sepformer", "convtasnet")

#: registry name -> row label
MODEL_LABELS = {
    "s4m-tiny": "S4M-tiny",
    "s4m": "S4M",
    "spmamba": "SPMamba",
    "sepformer": "Sepformer (SpeechBrain)",
    "convtasnet": "Conv-TasNet (SpeechBrain)",
    "s4m-tiny-causal": "S4M-tiny causal",
}

#: the model every time is divided by (always measured: the ratios need it)
REFERENCE_MODEL = "sepformer"

#: forward CPU time of 1 s at 8 kHz, at most this many times Sepformer's
#: (issue 3: S4M-tiny and S4M; issue 4: SPMamba)
SPEED_GOALS = {"s4m-tiny": 0.15, "s4m": 0.40, "spmamba": 3.0}

#: the sampling rates of the forward-time columns, Hz
FORWARD_RATES = (8000, 16000)

MAC_CONVENTION = (
    "MACs per second of audio at 8 kHz, batch 1, forward only "
    "(speechbrain_s4.macs.count_macs, MODELS.md 1.4): convolutions, linears "
    "and matrix products counted at PyTorch's dispatch level (an output "
    "element with fan-in f costs f; biases, norms, activations free); FFTs "
    "(2 n log2 n per real transform, 4 per complex product) and selective "
    "scans (9 L D N + 2 L D) added by formula."
)


def matmul_gflops(
    threads: int = 1, size: int = 2048, repeats: int = 3
) -> dict:
    """The machine's float32 matrix-product speed at a thread count.

    Times ``size x size @ size x size`` (2 size^3 floating-point operations)
    after one warm-up; the speed is the operation count over the median
    time. It is the ceiling the models' MAC counts are compared against:
    a model that were nothing but large GEMMs would run at this speed.

    Arguments
    ---------
    threads : int
        Intra-op threads (restored afterwards).
    size : int
        Side of the square matrices.
    repeats : int
        Timed products.

    Returns
    -------
    dict
        ``cpu_gflops`` (per CPU-second, summed over threads: the measure
        the model times are compared with) and ``wall_gflops``, plus
        ``size`` and ``threads``.

    Example
    -------
    >>> speed = matmul_gflops(size=64, repeats=1)
    >>> speed["cpu_gflops"] > 0
    True
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    with _num_threads(threads):
        wall_ms, cpu_ms = _median_ms(lambda: torch.mm(a, b), repeats, 1)
    flops = 2.0 * size**3
    return {
        "cpu_gflops": flops / (max(cpu_ms, 1e-6) * 1e-3) / 1e9,
        "wall_gflops": flops / (max(wall_ms, 1e-6) * 1e-3) / 1e9,
        "size": size,
        "threads": threads,
    }


def read_si_snr_improvement(path: str | os.PathLike) -> float:
    """SI-SNRi (dB) of the ``avg`` row of a results CSV.

    The CSV is the layout ``speechbrain_s4.metrics.write_results_csv`` (and
    SpeechBrain's separation recipes) write: columns ``snt_id, sdr, sdr_i,
    si-snr, si-snr_i``, one row per utterance and a last ``avg`` row.

    Arguments
    ---------
    path : str or os.PathLike
        The CSV file.

    Returns
    -------
    float
        The ``si-snr_i`` value of the ``avg`` row.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "test_results.csv")
    >>> with open(path, "w") as handle:
    ...     _ = handle.write("snt_id,sdr,sdr_i,si-snr,si-snr_i\\n"
    ...                      "a,9,9,8,8\\navg,9.5,9.5,8.5,8.25\\n")
    >>> read_si_snr_improvement(path)
    8.25
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no results CSV at {path}; give the test_results.csv that "
            "training or `speechbrain-s4 evaluate --csv` wrote"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "si-snr_i" not in (reader.fieldnames or []):
            raise ValueError(
                f"{path} has no si-snr_i column (columns: "
                f"{', '.join(reader.fieldnames or [])}); expected a results "
                "CSV with snt_id, sdr, sdr_i, si-snr, si-snr_i"
            )
        for row in reader:
            if row.get("snt_id") == "avg":
                try:
                    return float(row["si-snr_i"])
                except ValueError:
                    raise ValueError(
                        f"{path}: the avg row's si-snr_i is "
                        f"{row['si-snr_i']!r}, not a number"
                    ) from None
    raise ValueError(
        f"{path} has no 'avg' row; expected the results CSV layout of "
        "speechbrain_s4.metrics.write_results_csv (an avg row at the end)"
    )


def _enough_runs(cpu, repeats, budget_s):
    """Whether timing stops after the CPU times ``cpu`` (seconds): at
    ``repeats`` runs, or once one more run would take the CPU time spent
    past ``budget_s`` (never before the first run)."""
    if not cpu:
        return False
    return len(cpu) >= repeats or sum(cpu) + statistics.median(cpu) > budget_s


def _timed_runs(fn, repeats, budget_s, warmup=None):
    """Median (wall, CPU) seconds of fn() and the number of timed runs.

    ``warmup`` (default: fn) runs once untimed. Then fn() is timed up to
    ``repeats`` times, stopping early once one more run would take the CPU
    time spent so far past ``budget_s`` (always at least one run): slow
    models get fewer repeats.
    """
    (warmup or fn)()
    wall, cpu = [], []
    while not _enough_runs(cpu, repeats, budget_s):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return statistics.median(wall), statistics.median(cpu), len(cpu)


def _build(name, sample_rate, overrides, seed):
    from speechbrain_s4.models import build

    torch.manual_seed(seed)
    return build(name, sample_rate=sample_rate, **dict(overrides or {}))


def _forward_times(names, sample_rate, seconds, overrides, repeats, budget_s,
                   seed):
    """{name: (wall s, CPU s, runs)} of eval, no_grad forwards, interleaved.

    The models take turns (one warm-up each, then rounds of one timed
    forward per model), so that a machine whose speed drifts during the
    run (other tenants, frequency scaling) slows every model alike and the
    ratios stay fair; timing one model after the other turned such drift
    into ratio errors of 10-20 % on the development VM. A model leaves the
    rounds after ``repeats`` runs, or once one more run would take its CPU
    time past ``budget_s`` (always at least one run).
    """
    generator = torch.Generator().manual_seed(seed)
    mix = 0.1 * torch.randn(1, int(round(seconds * sample_rate)),
                            generator=generator)  # [1, T]
    models = {
        name: _build(name, sample_rate, overrides.get(name), seed).eval()
        for name in names
    }
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    with torch.no_grad():
        for model in models.values():
            model(mix)  # warm-up: kernel caches, first-use compilation
        active = list(names)
        while active:
            for name in list(active):
                start, start_cpu = time.perf_counter(), time.process_time()
                models[name](mix)
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
                if _enough_runs(cpu[name], repeats, budget_s):
                    active.remove(name)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name]),
               len(cpu[name]))
        for name in names
    }


def _train_step_times(name, sample_rate, seconds, overrides, repeats,
                      budget_s, seed):
    """(wall s, CPU s, runs) of forward + backward + Adam step, batch 1.

    The loss is SpeechBrain's permutation-invariant negative SI-SNR (the
    training loss of every recipe here). The warm-up step runs on a 0.5 s
    crop, so the slowest models do not pay two full steps.
    """
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    model = _build(name, sample_rate, overrides, seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def batch(length):
        sources = 0.1 * torch.randn(1, length, model.num_spks,
                                    generator=generator)  # [1, T, S]
        return sources.sum(-1), sources  # [1, T], [1, T, S]

    def step(mix, sources):
        optimizer.zero_grad(set_to_none=True)
        loss = get_si_snr_with_pitwrapper(sources, model(mix)).mean()
        loss.backward()
        optimizer.step()

    length = int(round(seconds * sample_rate))
    short = batch(min(length, sample_rate // 2))
    full = batch(length)
    return _timed_runs(lambda: step(*full), repeats, budget_s,
                       warmup=lambda: step(*short))


def _measure_in_fresh_process(**arguments):
    """Run ``_child_measurements(**arguments)`` in a new Python process.

    Peak resident memory is a high-water mark of the whole process, so
    each model gets its own interpreter and the models do not pollute each other's
    peaks (nor leave their freed memory in this process's heap).
    """
    script = (
        "import json, sys\n"
        "from speechbrain_s4.benchmark import _child_measurements\n"
        "print(json.dumps(_child_measurements(**json.loads(sys.argv[1]))))\n"
    )
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root, env.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(arguments)],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the memory measurement of {arguments['name']} failed:\n"
            f"{result.stderr}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child_measurements(name, seconds, threads, overrides, seed,
                        train_seconds, repeats, budget_s):
    """Run in the subprocess: peak RSS (MiB) after building the model,
    after one forward of ``seconds`` at 8 kHz, then after the timed
    training steps of ``train_seconds`` (whose times it returns too)."""
    torch.set_num_threads(threads)
    model = _build(name, 8000, overrides, seed).eval()
    mix = 0.1 * torch.randn(1, int(round(seconds * 8000)))  # [1, T]
    report = {"built_mb": _peak_rss_mb()}
    with torch.no_grad():
        model(mix)
    report["peak_mb"] = _peak_rss_mb()
    del model, mix
    if train_seconds:
        wall, cpu, runs = _train_step_times(
            name, 8000, train_seconds, overrides, repeats, budget_s, seed
        )
        report.update(train_wall_s=wall, train_cpu_s=cpu, train_runs=runs,
                      train_peak_mb=_peak_rss_mb())
    return report


def _peak_rss_mb():
    """This process's peak resident memory so far, in MiB.

    On Linux the high-water mark of the process's own address space
    (``VmHWM``): ``ru_maxrss`` also keeps the peak of the address space
    the process was forked from, i.e. of the parent benchmark process.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def model_benchmark(
    models: Sequence[str] = DEFAULT_MODELS,
    threads: int = 1,
    repeats: int = 5,
    budget_s: float = 10.0,
    seconds: float = 1.0,
    forward_rates: Sequence[int] = FORWARD_RATES,
    train_seconds: float = 4.0,
    results: Mapping[str, str | os.PathLike] | None = None,
    memory: bool = True,
    overrides: Mapping[str, Mapping] | None = None,
    gemm_size: int = 2048,
    seed: int = 0,
) -> dict:
    """Measure the separators side by side, in this process, on this machine.

    For every model (built by ``speechbrain_s4.models.build``, random
    weights: a trained model computes the same): parameters; MACs per
    second of audio at 8 kHz (``speechbrain_s4.macs.count_macs``); the
    forward time of ``seconds`` of audio at each rate of ``forward_rates``
    (eval, ``no_grad``, batch 1; the models take turns, one warm-up each,
    then rounds of one timed forward per model; median CPU time of the
    process and wall clock) and its ratio to Sepformer's (CPU times); the
    peak resident memory of a forward at 8 kHz, then the time and peak
    memory of a training step (forward + backward + Adam step, batch 1,
    ``train_seconds`` at 8 kHz), both in a fresh subprocess per model (in
    this process, without the peaks, when ``memory`` is False); SI-SNRi
    from ``results``; and the forward
    CPU time at 8 kHz over the model's MAC floor, the time its MACs would
    take at the machine's measured matmul speed (2 FLOPs per MAC).

    Arguments
    ---------
    models : sequence of str
        Registry names, in row order. Sepformer (``REFERENCE_MODEL``) is
        measured even when not listed (the ratios need it) and then shown
        last.
    threads : int
        Intra-op threads for every measurement (1 by default: on a shared
        machine several threads mostly wait for each other).
    repeats : int
        Most timed runs per measurement (after one warm-up).
    budget_s : float
        CPU seconds per measurement after which no further repeat starts
        (the slow models get fewer repeats; always one).
    seconds : float
        Audio length of the forward and memory measurements.
    forward_rates : sequence of int
        Sampling rates (Hz) of the forward-time columns; 8000 must be one.
    train_seconds : float
        Crop length of the training step at 8 kHz (0 skips it).
    results : mapping, optional
        Model name -> results CSV (``read_si_snr_improvement``).
    memory : bool
        Measure the peak memories (one subprocess per model, which also
        times the training step).
    overrides : mapping, optional
        Model name -> constructor overrides (tests use tiny models).
    gemm_size : int
        Side of the square GEMM of ``matmul_gflops``.
    seed : int
        Seeds weights and signals.

    Returns
    -------
    dict
        ``rows`` (one dict per model: ``model``, ``label``, ``params``,
        ``macs_per_s``, per rate ``fwd{k}k_cpu_s``, ``fwd{k}k_wall_s``,
        ``fwd{k}k_runs``, ``fwd{k}k_ratio``, then ``peak_rss_mb``,
        ``built_rss_mb``, ``train_peak_rss_mb``, ``train_cpu_s``,
        ``train_wall_s``,
        ``train_runs``, ``si_snr_i``, ``mac_floor_s``, ``over_floor``,
        ``goal``, ``goal_reached``), ``gemm`` (``matmul_gflops``) and
        ``settings`` (the arguments used, with ``torch`` and ``cpu``).

    Example
    -------
    >>> tiny = {"s4m-tiny": dict(num_blocks=1, hidden_channels=16,
    ...                          bottleneck_channels=8),
    ...         "sepformer": dict(encoder_filters=8, chunk_size=10,
    ...                           num_repeats=1, num_layers=1, nhead=2,
    ...                           d_ffn=16)}
    >>> report = model_benchmark(["s4m-tiny"], repeats=1, seconds=0.1,
    ...                          forward_rates=[8000], train_seconds=0.1,
    ...                          memory=False, overrides=tiny, gemm_size=64)
    >>> [row["model"] for row in report["rows"]]
    ['s4m-tiny', 'sepformer']
    """
    from speechbrain_s4.macs import count_macs
    from speechbrain_s4.models import MODEL_NAMES

    models = list(dict.fromkeys(models))
    unknown = [name for name in models if name not in MODEL_NAMES]
    if unknown:
        raise ValueError(
            f"unknown model name {', '.join(map(repr, unknown))}; expected "
            f"some of {', '.join(MODEL_NAMES)}"
        )
    if REFERENCE_MODEL not in models:
        models.append(REFERENCE_MODEL)
    if 8000 not in forward_rates:
        raise ValueError(
            f"forward_rates {list(forward_rates)} must include 8000 (the "
            "rate of the MAC count, the ratios' goals and the MAC floor)"
        )
    results = dict(results or {})
    for name in results:
        if name not in models:
            raise ValueError(
                f"--results names {name!r}, which is not benchmarked; "
                f"benchmarked models: {', '.join(models)}"
            )
    si_snr_i = {
        name: read_si_snr_improvement(path) for name, path in results.items()
    }
    overrides = dict(overrides or {})
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    gemm = matmul_gflops(threads, size=gemm_size)
    logger.info("matmul: %.1f GFLOP/s per CPU-second", gemm["cpu_gflops"])
    rows = []
    with _num_threads(threads):
        forward = {
            rate: _forward_times(models, rate, seconds, overrides, repeats,
                                 budget_s, seed)
            for rate in forward_rates
        }
        for name in models:
            extra = overrides.get(name)
            model = _build(name, 8000, extra, seed)
            row = {
                "model": name,
                "label": MODEL_LABELS.get(name, name),
                "params": sum(p.numel() for p in model.parameters()),
                "macs_per_s": count_macs(model, seconds=seconds)["total"],
            }
            del model
            for rate in forward_rates:
                key = f"fwd{rate // 1000}k"
                wall, cpu, runs = forward[rate][name]
                row.update({f"{key}_cpu_s": cpu, f"{key}_wall_s": wall,
                            f"{key}_runs": runs})
            row.update(peak_rss_mb=None, built_rss_mb=None,
                       train_peak_rss_mb=None, train_wall_s=None,
                       train_cpu_s=None, train_runs=0)
            if memory:  # forward peak, then the training step, in a child
                child = _measure_in_fresh_process(
                    name=name, seconds=seconds, threads=threads,
                    overrides=dict(extra or {}), seed=seed,
                    train_seconds=train_seconds, repeats=repeats,
                    budget_s=budget_s,
                )
                row.update(peak_rss_mb=child["peak_mb"],
                           built_rss_mb=child["built_mb"],
                           train_peak_rss_mb=child.get("train_peak_mb"),
                           train_wall_s=child.get("train_wall_s"),
                           train_cpu_s=child.get("train_cpu_s"),
                           train_runs=child.get("train_runs", 0))
            elif train_seconds:
                wall, cpu, runs = _train_step_times(
                    name, 8000, train_seconds, extra, repeats, budget_s, seed
                )
                row.update(train_wall_s=wall, train_cpu_s=cpu,
                           train_runs=runs)
            row["si_snr_i"] = si_snr_i.get(name)
            # the time the MACs take at the GEMM speed: 2 FLOPs per MAC
            row["mac_floor_s"] = (
                2 * row["macs_per_s"] * seconds / (gemm["cpu_gflops"] * 1e9)
            )
            row["over_floor"] = row["fwd8k_cpu_s"] / row["mac_floor_s"]
            logger.info("benchmarked %s: %s", name, row)
            rows.append(row)
    reference = next(row for row in rows if row["model"] == REFERENCE_MODEL)
    for row in rows:
        for rate in forward_rates:
            key = f"fwd{rate // 1000}k"
            row[f"{key}_ratio"] = _ratio(row[f"{key}_cpu_s"],
                                         reference[f"{key}_cpu_s"])
        row["goal"] = SPEED_GOALS.get(row["model"])
        row["goal_reached"] = (
            None if row["goal"] is None else row["fwd8k_ratio"] <= row["goal"]
        )
    settings = {
        "threads": threads,
        "repeats": repeats,
        "budget_s": budget_s,
        "seconds": seconds,
        "forward_rates": list(forward_rates),
        "train_seconds": train_seconds,
        "memory": memory,
        "overrides": {name: dict(value) for name, value in overrides.items()},
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average,
    }
    return {"rows": rows, "gemm": gemm, "settings": settings}


def _cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else the platform's."""
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cell(value, fmt, suffix=""):
    return "-" if value is None else format(value, fmt) + suffix


def _table_lines(report):
    """Header and one tuple of strings per row (shared by text and Markdown)."""
    rates = report["settings"]["forward_rates"]
    header = ["model", "params (M)", "GMAC/s"]
    for rate in rates:
        header += [f"fwd {rate // 1000} kHz ms cpu / wall", "x Sepformer"]
    header += ["peak RSS MB (fwd +)", "train step s cpu / wall",
               "train peak MB", "SI-SNRi dB", "x MAC floor"]
    lines = [tuple(header)]
    for row in report["rows"]:
        cells = [row["label"], _cell(row["params"] / 1e6, ".2f"),
                 _cell(row["macs_per_s"] / 1e9, ".1f")]
        for rate in rates:
            key = f"fwd{rate // 1000}k"
            cells.append(
                f"{1e3 * row[f'{key}_cpu_s']:.0f} / "
                f"{1e3 * row[f'{key}_wall_s']:.0f}"
            )
            cells.append(_cell(row[f"{key}_ratio"], ".2f", "x"))
        cells.append(
            "-" if row["peak_rss_mb"] is None else
            f"{row['peak_rss_mb']:.0f} "
            f"(+{row['peak_rss_mb'] - row['built_rss_mb']:.0f})"
        )
        cells.append(
            "-" if row["train_cpu_s"] is None else
            f"{row['train_cpu_s']:.2f} / {row['train_wall_s']:.2f}"
        )
        cells.append(_cell(row.get("train_peak_rss_mb"), ".0f"))
        cells.append(_cell(row["si_snr_i"], ".2f"))
        cells.append(_cell(row["over_floor"], ".1f", "x"))
        lines.append(tuple(cells))
    return lines


def _footnotes(report):
    """Settings, conventions and the speed goals, one line each."""
    settings, gemm = report["settings"], report["gemm"]
    runs = {
        row["label"]: "/".join(
            [str(row[f"fwd{rate // 1000}k_runs"])
             for rate in settings["forward_rates"]]
            + ([str(row["train_runs"])] if settings["train_seconds"] else [])
        )
        for row in report["rows"]
    }
    kinds = "/".join(
        [f"{rate // 1000} kHz" for rate in settings["forward_rates"]]
        + (["train step"] if settings["train_seconds"] else [])
    )
    notes = [
        f"Machine: {settings['cpu']}; torch {settings['torch']}; "
        f"{settings['threads']} intra-op thread(s); float32 GEMM "
        f"{gemm['size']}^3: {gemm['cpu_gflops']:.1f} GFLOP/s per CPU-second "
        f"({gemm['wall_gflops']:.1f} per wall-second); load average "
        f"{settings['load_average']:.1f} on {settings['cpu_count']} CPUs "
        "at the start (other processes slow the wall clock more than the "
        "CPU time).",
        f"Forward: {settings['seconds']:g} s of audio, batch 1, eval, "
        "no_grad; the models take turns (one warm-up each, then rounds of "
        "one timed forward per model, so that drift of the machine's speed "
        "hits all alike); median of the process CPU time "
        "(time.process_time, summed over threads) / wall clock; "
        "'x Sepformer' is the ratio of CPU times to Sepformer's in this run. "
        f"Timed runs ({kinds}; at most {settings['repeats']}, fewer once "
        f"a measurement passes {settings['budget_s']:g} CPU-s): "
        + ", ".join(f"{label} {count}" for label, count in runs.items())
        + ".",
        f"MACs: {MAC_CONVENTION}",
        "x MAC floor: forward CPU time at 8 kHz over 2 x MACs / the GEMM's "
        "GFLOP/s per CPU-second (1.0 = as fast as one large GEMM).",
    ]
    if settings["memory"]:
        notes.append(
            "Peak RSS: high-water resident memory of a fresh process that "
            "built the model and ran one forward at 8 kHz (includes the "
            "Python/torch/SpeechBrain runtime); (+) is the rise during the "
            "forward. Train peak MB: the same process's peak after the "
            "training steps."
        )
    if settings["train_seconds"]:
        notes.append(
            f"Train step: forward + backward + Adam step on a "
            f"{settings['train_seconds']:g} s crop at 8 kHz, batch 1, "
            "permutation-invariant SI-SNR loss (warm-up on a shorter crop)."
        )
    if settings["overrides"]:
        notes.append(f"Size overrides: {settings['overrides']}.")
    for row in report["rows"]:
        if row["goal"] is None:
            continue
        verdict = "reached" if row["goal_reached"] else "not reached"
        notes.append(
            f"Goal: {row['label']} forward <= {row['goal']:.2f}x Sepformer "
            f"({settings['seconds']:g} s at 8 kHz, CPU time): "
            f"{row['fwd8k_ratio']:.2f}x, {verdict}."
        )
    return notes


def format_model_table(report: dict) -> str:
    """Format a ``model_benchmark`` report as a plain-text table + notes.

    Arguments
    ---------
    report : dict
        As returned by ``model_benchmark``.

    Returns
    -------
    str
        A title, the table (one line per model) and the footnotes
        (machine, timing and MAC conventions, speed goals reached or not).

    Example
    -------
    >>> row = dict(model="s4m-tiny", label="S4M-tiny", params=1.8e6,
    ...            macs_per_s=5.6e9, fwd8k_cpu_s=0.1, fwd8k_wall_s=0.1,
    ...            fwd8k_runs=5, fwd8k_ratio=0.1, peak_rss_mb=None,
    ...            train_cpu_s=None, si_snr_i=None, over_floor=2.0,
    ...            goal=0.15, goal_reached=True)
    >>> settings = dict(forward_rates=[8000], threads=1, cpu="cpu",
    ...                 torch="2", seconds=1.0, memory=False,
    ...                 train_seconds=0, overrides={}, cpu_count=2,
    ...                 load_average=0.5, repeats=5, budget_s=10.0)
    >>> gemm = dict(size=64, cpu_gflops=50.0, wall_gflops=50.0)
    >>> text = format_model_table(dict(rows=[row], settings=settings,
    ...                                gemm=gemm))
    >>> print(text.splitlines()[2])
    S4M-tiny  1.80        5.6     100 / 100                0.10x        -                   -                        -              -           2.0x
    """
    lines = _table_lines(report)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = [
        "  ".join(
            value.ljust(width) for value, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    ]
    settings = report["settings"]
    title = (
        f"Separation models on CPU ({settings['seconds']:g} s forward, times "
        f"as ratios to Sepformer's, {settings['threads']} thread(s))"
    )
    notes = [f"* {note}" for note in _footnotes(report)]
    return "\n".join([title, *text, "", *notes])


_CSV_COLUMNS = (
    "model", "label", "params", "macs_per_s",
    "fwd8k_cpu_s", "fwd8k_wall_s", "fwd8k_runs", "fwd8k_ratio",
    "fwd16k_cpu_s", "fwd16k_wall_s", "fwd16k_runs", "fwd16k_ratio",
    "peak_rss_mb", "built_rss_mb", "train_peak_rss_mb", "train_cpu_s",
    "train_wall_s",
    "train_runs", "si_snr_i", "mac_floor_s", "over_floor", "goal",
    "goal_reached",
)


def write_model_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write a ``model_benchmark`` report as CSV, Markdown and a PNG plot.

    * ``models.csv``: every measured value (seconds, MACs, bytes as MiB),
      one row per model, plus ``threads`` and the GEMM speed;
    * ``models.md``: the table and its footnotes;
    * ``models.png``: two panels, SI-SNRi against MACs per second and
      against the forward CPU time at 8 kHz (models with an SI-SNRi); with
      no SI-SNRi given, CPU time and training-step time against MACs.

    Arguments
    ---------
    report : dict
        As returned by ``model_benchmark``.
    out_dir : str or os.PathLike
        Folder to write to (created).

    Returns
    -------
    dict
        ``csv``, ``markdown``, ``png``: the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "models.csv",
        "markdown": out / "models.md",
        "png": out / "models.png",
    }
    columns = [
        c for c in _CSV_COLUMNS
        if any(c in row for row in report["rows"])
    ] + ["threads", "gemm_cpu_gflops"]
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for row in report["rows"]:
            writer.writerow({
                **{k: ("" if v is None else v) for k, v in row.items()},
                "threads": report["settings"]["threads"],
                "gemm_cpu_gflops": report["gemm"]["cpu_gflops"],
            })
    lines = _table_lines(report)
    markdown = [
        "# Separation models on CPU",
        "",
        "| " + " | ".join(lines[0]) + " |",
        "|" + "|".join(
            "---" if i == 0 else "---:" for i in range(len(lines[0]))
        ) + "|",
        *("| " + " | ".join(line) + " |" for line in lines[1:]),
        "",
        *(f"* {note}" for note in _footnotes(report)),
        "",
    ]
    paths["markdown"].write_text("\n".join(markdown), encoding="utf-8")
    _plot(report, paths["png"])
    return {key: str(path) for key, path in paths.items()}


def _plot(report, path):
    """Two scatter panels with one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    scored = [row for row in rows if row["si_snr_i"] is not None]
    threads = report["settings"]["threads"]
    gmacs = "MACs per second of audio at 8 kHz (G)"
    cpu = f"forward CPU time of 1 s at 8 kHz (ms, {threads} thread(s))"
    if scored:
        title = "Quality against cost (SI-SNRi from the results CSVs)"
        panels = [
            (scored, lambda r: r["macs_per_s"] / 1e9, gmacs,
             lambda r: r["si_snr_i"], "SI-SNRi (dB)"),
            (scored, lambda r: 1e3 * r["fwd8k_cpu_s"], cpu,
             lambda r: r["si_snr_i"], "SI-SNRi (dB)"),
        ]
    else:
        title = "No SI-SNRi given: CPU time against MACs instead"
        trained = [row for row in rows if row["train_cpu_s"] is not None]
        panels = [
            (rows, lambda r: r["macs_per_s"] / 1e9, gmacs,
             lambda r: 1e3 * r["fwd8k_cpu_s"], cpu),
            (trained, lambda r: r["macs_per_s"] / 1e9, gmacs,
             lambda r: r["train_cpu_s"],
             f"training step CPU time (s, {report['settings']['train_seconds']:g}"
             " s crop)"),
        ]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, (points, x_of, x_label, y_of, y_label) in zip(
        axes, panels, strict=True
    ):
        for row in points:
            x, y = x_of(row), y_of(row)
            axis.scatter([x], [y])
            axis.annotate(row["label"], (x, y), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.grid(True, which="both", alpha=0.3)
        if not points:
            axis.text(0.5, 0.5, "no data", ha="center",
                      transform=axis.transAxes)
    figure.suptitle(title)
    figure.tight_layout()
    # the title also goes into the PNG's text metadata (tests read it)
    figure.savefig(path, dpi=120, metadata={"Title": title})
    plt.close(figure)


# ---------------------------------------------------------------------------
# Streaming: real-time factor of the causal S4M-tiny
# ---------------------------------------------------------------------------


def rtf_benchmark(
    chunk_ms=(10.0, 16.0, 32.0),
    seconds: float = 4.0,
    sample_rate: int = 8000,
    threads: int = 2,
    batch_size: int = 1,
    warmup_chunks: int = 5,
    seed: int = 0,
    **model_kwargs,
) -> list:
    """Real-time factor of streaming, per chunk size, on CPU.

    Builds a ``CausalS4M`` (full size unless ``model_kwargs`` say
    otherwise), streams ``seconds`` of noise in chunks of each size and
    times every ``push``: RTF = wall-clock processing time / chunk duration
    (below 1 keeps up with real time). The process CPU time is recorded too
    (``cpu_rtf``: CPU seconds per second of audio, summed over threads),
    which stays meaningful on a machine shared with other jobs, where the
    wall clock also counts the time the process waits for a core. The first
    ``warmup_chunks`` pushes are run but not timed. A last row (chunk
    "offline") times ``forward`` on the whole signal for reference.

    Arguments
    ---------
    chunk_ms : sequence of float
        Chunk durations in ms.
    seconds : float
        Signal length streamed per chunk size.
    sample_rate : int
        Hz.
    threads : int
        torch intra-op threads during the run (restored afterwards).
    batch_size : int
        Streams separated together (one push carries a chunk of each).
    warmup_chunks : int
        Untimed pushes at the start of each run.
    seed : int
        Seeds the weights and the signal.
    **model_kwargs
        ``CausalS4M`` keyword arguments (e.g. ``num_blocks``).

    Returns
    -------
    list of dict
        One row per chunk size, then the offline row: ``chunk_ms`` (None
        offline), ``chunk_samples``, ``chunks``, ``ms_mean`` (wall time per
        chunk), ``rtf_mean``, ``rtf_p95``, ``cpu_rtf``, ``latency_ms``,
        ``threads``, ``batch_size``.

    Example
    -------
    >>> rows = rtf_benchmark(chunk_ms=[16], seconds=0.1, threads=1,
    ...                      num_blocks=1, hidden_channels=16,
    ...                      bottleneck_channels=8)
    >>> [row["chunk_ms"] for row in rows]
    [16.0, None]
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        from speechbrain_s4.models.s4m_causal import CausalS4M

        model = CausalS4M(sample_rate=sample_rate, **model_kwargs).eval()
        signal = torch.randn(batch_size, int(seconds * sample_rate)) * 0.1
        rows = []
        for ms in chunk_ms:
            size = max(1, int(round(ms * sample_rate / 1000)))
            stream = model.stream()
            walls, cpus = [], []
            for index, chunk in enumerate(signal.split(size, dim=-1)):
                wall, cpu = time.perf_counter(), time.process_time()
                stream.push(chunk)
                wall = time.perf_counter() - wall
                cpu = time.process_time() - cpu
                if index >= warmup_chunks and chunk.shape[-1] == size:
                    walls.append(wall)
                    cpus.append(cpu)
            stream.flush()
            if not walls:
                raise ValueError(
                    f"rtf_benchmark: {seconds} s holds no timed chunk of "
                    f"{ms} ms after {warmup_chunks} warm-up chunks; stream "
                    "a longer signal (seconds=...)"
                )
            rows.append(
                _rtf_row(walls, cpus, size, sample_rate, model, batch_size)
            )
        with torch.no_grad():
            model(signal[:, : sample_rate // 10])  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            model(signal)
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
        offline = _rtf_row(
            [wall], [cpu], signal.shape[-1], sample_rate, model, batch_size
        )
        offline["chunk_ms"] = None
        rows.append(offline)
        logger.info("streaming RTF, CausalS4M:\n%s", format_rtf_table(rows))
        return rows
    finally:
        torch.set_num_threads(previous_threads)


def _rtf_row(walls, cpus, size, sample_rate, model, batch_size) -> dict:
    """One benchmark row from per-chunk wall and CPU times (s)."""
    walls = torch.tensor(walls, dtype=torch.float64)
    duration = size / sample_rate
    return {
        "chunk_ms": 1000.0 * duration,
        "chunk_samples": size,
        "chunks": len(walls),
        "ms_mean": 1000.0 * float(walls.mean()),
        "rtf_mean": float(walls.mean()) / duration,
        "rtf_p95": float(torch.quantile(walls, 0.95)) / duration,
        "cpu_rtf": sum(cpus) / len(cpus) / duration,
        "latency_ms": model.latency_ms,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }


def format_rtf_table(rows: list) -> str:
    """Format :func:`rtf_benchmark` rows as a fixed-width table.

    Arguments
    ---------
    rows : list of dict
        As returned by :func:`rtf_benchmark`.

    Returns
    -------
    str

    Example
    -------
    >>> row = dict(chunk_ms=10.0, chunk_samples=80, chunks=3, ms_mean=5.0,
    ...            rtf_mean=0.5, rtf_p95=0.6, cpu_rtf=0.4, latency_ms=3.875,
    ...            threads=2, batch_size=1)
    >>> print(format_rtf_table([row]))
    latency 3.875 ms, 2 threads, batch 1
       chunk  samples  chunks  ms/chunk  RTF mean  RTF p95  CPU RTF
     10.0 ms       80       3     5.000     0.500    0.600    0.400
    """
    first = rows[0]
    lines = [
        f"latency {first['latency_ms']:.3f} ms, {first['threads']} threads, "
        f"batch {first['batch_size']}",
        "   chunk  samples  chunks  ms/chunk  RTF mean  RTF p95  CPU RTF",
    ]
    for row in rows:
        chunk = (
            "offline"
            if row["chunk_ms"] is None
            else f"{row['chunk_ms']:.1f} ms"
        )
        lines.append(
            f"{chunk:>8}  {row['chunk_samples']:7d}  {row['chunks']:6d}  "
            f"{row['ms_mean']:8.3f}  {row['rtf_mean']:8.3f}  "
            f"{row['rtf_p95']:7.3f}  {row['cpu_rtf']:7.3f}"
        )
    return "\n".join(lines)
