"""The "cpp" selective scan (fused C++ CPU kernel) against the golden
fixture and the sequential loop, on outputs and gradients.

The kernel has three variants (see csrc/selective_scan.cpp): full blocks of
16 float / 8 double channels with time-varying B, C and N = 16 (the Mamba
mixer's case), the same for other N, and a general one (partial blocks,
time-invariant B or C). The shapes below exercise each, alone and mixed in
one call. The tests skip only when a build tool is missing (they name it);
a failing compilation fails them.
"""

import pytest
import torch

from speechbrain_s4.ssm import scan, scan_cpp
from speechbrain_s4.ssm.scan import selective_scan, selective_scan_ref

MISSING_TOOLS = scan_cpp._missing_build_tools()
pytestmark = pytest.mark.skipif(
    bool(MISSING_TOOLS),
    reason="the C++ scan cannot be built here: needs "
    + "; ".join(MISSING_TOOLS),
)

# max |out - ref| <= tol * max |ref| (tests/golden/README.md)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def assert_close_to_peak(actual, expected, tol, what=""):
    peak = expected.abs().max()
    err = (actual.to(expected.dtype) - expected).abs().max()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert err <= tol * peak, f"{what}: max error {err:.3g} vs peak {peak:.3g}"


def random_inputs(
    batch=2,
    d_inner=8,
    d_state=4,
    length=37,
    groups=None,
    invariant=(),
    dtype=torch.float64,
    seed=0,
):
    """Inputs of one scan; ``invariant`` lists which of B, C are [D, N].

    ``groups`` is one number for B and C, or a (B's, C's) pair.
    """
    gen = torch.Generator().manual_seed(seed)
    if isinstance(groups, int):
        groups = (groups, groups)
    groups_of = dict(zip("BC", groups, strict=True)) if groups else {}

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def projection(name):
        if name in invariant:
            return randn(d_inner, d_state)
        if name not in groups_of:
            return randn(batch, d_state, length)
        return randn(batch, groups_of[name], d_state, length)

    inputs = {
        "u": randn(batch, d_inner, length),
        "delta": randn(batch, d_inner, length) - 1.0,
        "A": -torch.rand(d_inner, d_state, generator=gen, dtype=torch.float64)
        * 4,
        "B": projection("B"),
        "C": projection("C"),
        "D": randn(d_inner),
        "z": randn(batch, d_inner, length),
        "delta_bias": randn(d_inner) * 0.5,
    }
    return {k: v.to(dtype) for k, v in inputs.items()}


def run(backend, inputs, **flags):
    flags.setdefault("delta_softplus", True)
    flags.setdefault("return_last_state", True)
    x = inputs
    return selective_scan(
        x["u"],
        x["delta"],
        x["A"],
        x["B"],
        x["C"],
        D=x.get("D"),
        z=x.get("z"),
        delta_bias=x.get("delta_bias"),
        backend=backend,
        **flags,
    )


def outputs_and_grads(backend, inputs, seed=1, **flags):
    """out, last_state and the gradients of a random linear loss of both."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = run(backend, leaves, **flags)
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(last.shape, generator=gen, dtype=torch.float64)
    loss = (out * w_out.to(out.dtype)).sum() + (
        last * w_last.to(last.dtype)
    ).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out.detach(), last.detach(), dict(zip(leaves, grads, strict=True))


def assert_matches_loop(inputs, tol, **flags):
    """cpp against the loop's autograd: out, last_state, every gradient."""
    ref_out, ref_last, ref_grads = outputs_and_grads("ref", inputs, **flags)
    out, last, grads = outputs_and_grads("cpp", inputs, **flags)
    assert out.dtype == inputs["u"].dtype
    assert_close_to_peak(out, ref_out, tol, "out")
    assert_close_to_peak(last, ref_last, tol, "last_state")
    for name in GRAD_NAMES:
        assert grads[name].shape == inputs[name].shape
        assert_close_to_peak(grads[name], ref_grads[name], tol, f"d{name}")
    return out, last, grads


# ---------------------------------------------------------------------------
# Golden fixture (float64, mamba_ssm selective_scan_ref semantics)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_selective_scan_cpp_matches_golden(golden, dtype):
    io = golden("selective_scan_io")
    args = [io[k].to(dtype) for k in ("u", "delta", "A", "B", "C")]
    D, z, bias = (io[k].to(dtype) for k in ("D", "z", "delta_bias"))
    tol = TOLERANCE[dtype]
    flags = {"delta_bias": bias, "delta_softplus": io["delta_softplus"]}

    out, last = selective_scan(
        *args, D=D, z=z, return_last_state=True, backend="cpp", **flags
    )
    assert out.dtype == dtype and last.dtype == dtype
    assert_close_to_peak(out, io["out"], tol, "out")
    assert_close_to_peak(last, io["last_state"], tol, "last_state")
    out_no_z = selective_scan(*args, D=D, backend="cpp", **flags)
    assert_close_to_peak(out_no_z, io["out_no_z"], tol, "out_no_z")
    y = selective_scan(*args, backend="cpp", **flags)
    assert_close_to_peak(y, io["y_no_D_no_z"], tol, "y_no_D_no_z")


# ---------------------------------------------------------------------------
# Against the loop: outputs and gradients
# ---------------------------------------------------------------------------
LAYOUTS = {
    # full 16-channel blocks, N = 16: the mixer's kernel
    "shared_N16": {"d_inner": 32, "d_state": 16},
    # full blocks, another N
    "shared_N4": {"d_inner": 32, "d_state": 4},
    # two directions of a BiMamba: 2 groups, each 3 blocks (48 channels)
    "grouped_N16": {"d_inner": 96, "d_state": 16, "groups": 2},
    # full and partial blocks in one channel range (20 = 16 + 4)
    "grouped_partial_blocks": {"d_inner": 40, "d_state": 16, "groups": 2},
    "grouped_per_channel": {"d_inner": 8, "groups": 8},
    "grouped_B_2_C_4": {"d_inner": 64, "d_state": 16, "groups": (2, 4)},
    "invariant": {"invariant": ("B", "C")},
    "invariant_B_grouped_C": {
        "d_inner": 32,
        "d_state": 16,
        "groups": (1, 4),
        "invariant": ("B",),
    },
    "invariant_C": {"d_inner": 16, "d_state": 16, "invariant": ("C",)},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_selective_scan_cpp_gradients_match_loop(layout, dtype):
    inputs = random_inputs(length=45, dtype=dtype, **LAYOUTS[layout])
    assert_matches_loop(inputs, TOLERANCE[dtype])


@pytest.mark.parametrize(
    "flags",
    [
        {"delta_softplus": False},
        {"return_last_state": True},  # and softplus, the default here
    ],
)
def test_selective_scan_cpp_without_optional_inputs_matches_loop(flags):
    """No D, z or delta_bias (their gradients are None), with and without
    the softplus; delta stays positive so that the decays do too."""
    inputs = random_inputs(d_inner=32, d_state=16, dtype=torch.float64)
    inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    inputs["delta"] = inputs["delta"].abs()
    flags = {"return_last_state": True, **flags}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    expected = selective_scan_ref(*leaves.values(), **flags)
    ref_grads = torch.autograd.grad(
        expected[0].square().sum() + expected[1].sum(), list(leaves.values())
    )
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan(*leaves.values(), backend="cpp", **flags)
    grads = torch.autograd.grad(
        out.square().sum() + last.sum(), list(leaves.values())
    )
    assert_close_to_peak(out, expected[0], 1e-12, "out")
    assert_close_to_peak(last, expected[1], 1e-12, "last_state")
    for name, grad, ref in zip(leaves, grads, ref_grads, strict=True):
        assert_close_to_peak(grad, ref, 1e-12, f"d{name}")


@pytest.mark.parametrize("length", [1, 7, 37, 129, 1000])
def test_selective_scan_cpp_odd_lengths_match_loop(length):
    """Lengths that do not fill a checkpoint chunk (16 steps), one step."""
    long = length == 1000
    inputs = random_inputs(
        batch=1 if long else 2,
        d_inner=24 if long else 40,
        d_state=16,
        length=length,
        groups=2,
    )
    assert_matches_loop(inputs, 1e-12)


def test_selective_scan_cpp_long_sequence_is_stable():
    """L = 16000 with decays that underflow (A dt down to -5000) and decays
    within 1e-5 of 1, against the float64 loop, on 16 channels (one block).

    In float64 the kernel equals the loop to 1e-12. In float32 the slow
    channels accumulate ~1e4 increments with decays 1 - 1e-5, so the loop
    itself is only good to ~3e-5 of the peak there; the kernel must be
    finite and at least as accurate as the float32 loop. Its exp keeps
    decays near 1 unbiased, so the error does not grow with L.
    """
    length = 16000
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(1, 16, length, generator=gen, dtype=torch.float64)
    delta = torch.rand(1, 16, length, generator=gen, dtype=torch.float64)
    delta[:, :8] = delta[:, :8] * 20 + 5  # |A dt| from 5 to 5000
    delta[:, 8:] = delta[:, 8:] * 1e-5 + 1e-6  # |A dt| ~ 1e-5
    A = -torch.cat(
        [
            torch.rand(8, 3, generator=gen, dtype=torch.float64) * 200 + 1,
            torch.rand(8, 3, generator=gen, dtype=torch.float64) * 3 + 0.3,
        ]
    )
    B = torch.randn(1, 3, length, generator=gen, dtype=torch.float64)
    C = torch.randn(1, 3, length, generator=gen, dtype=torch.float64)
    args = (u, delta, A, B, C)
    ref, ref_last = selective_scan_ref(*args, return_last_state=True)
    out, last = selective_scan(*args, return_last_state=True, backend="cpp")
    assert_close_to_peak(out, ref, 1e-12, "out float64")
    assert_close_to_peak(last, ref_last, 1e-12, "last_state float64")

    args32 = [t.float() for t in args]
    loop32 = selective_scan_ref(*args32)
    leaves = [t.requires_grad_() for t in args32]
    out32 = selective_scan(*leaves, backend="cpp")
    for channels in (slice(0, 8), slice(8, 16)):  # fast and slow decays
        expected = ref[:, channels]
        loop_err = (loop32[:, channels] - expected).abs().max()
        tol = max(1e-5, 2 * loop_err / expected.abs().max())
        assert_close_to_peak(out32[:, channels], expected, tol, "out float32")
    grads = torch.autograd.grad(out32.square().sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


def test_selective_scan_cpp_reads_the_mixers_layouts():
    """u, delta, z as [B, D, L] views of channels-last data and B, C as
    views of a [B, L, ...] projection (the Mamba mixer's layouts), and a
    sliced, strided u: same results and gradients as contiguous copies."""
    inputs = random_inputs(
        batch=3, d_inner=48, d_state=16, length=29, dtype=torch.float32
    )
    batch, d_inner, length = inputs["u"].shape

    def channels_last(x):  # [B, D, L] view of [B, L, D] storage
        return x.transpose(1, 2).contiguous().transpose(1, 2)

    def projection_view(x):  # [B, N, L] view into a [B, L, 40] tensor
        storage = torch.zeros(batch, length, 40, dtype=x.dtype)
        storage[:, :, 5 : 5 + x.shape[1]] = x.transpose(1, 2)
        return storage[:, :, 5 : 5 + x.shape[1]].transpose(1, 2)

    strided_u = torch.zeros(batch, d_inner, 2 * length, dtype=torch.float32)
    strided_u[..., ::2] = inputs["u"]
    views = dict(
        inputs,
        u=strided_u[..., ::2],
        delta=channels_last(inputs["delta"]),
        z=channels_last(inputs["z"]),
        B=projection_view(inputs["B"]),
        C=projection_view(inputs["C"]),
    )
    assert not views["u"].is_contiguous() and views["B"].stride(1) == 1
    expected = outputs_and_grads("cpp", inputs)
    out, last, grads = outputs_and_grads("cpp", views)
    assert torch.equal(out, expected[0]) and torch.equal(last, expected[1])
    for name in GRAD_NAMES:
        assert torch.equal(grads[name], expected[2][name]), name
    out = run("cpp", views)[0]
    assert not out.is_contiguous()  # u is not: the output follows its layout
    channels_last_out = run("cpp", dict(views, u=channels_last(inputs["u"])))
    assert channels_last_out[0].transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("threads", [1, 2])
def test_selective_scan_cpp_does_not_depend_on_threads(threads):
    """3 batch rows x 3 channel ranges (9 work items; 2 threads do not divide
    them): identical results with 1 and 2 threads, and equal to the loop."""
    inputs = random_inputs(batch=3, d_inner=48, d_state=16, length=40, groups=3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        result = assert_matches_loop(inputs, 1e-12)
        torch.set_num_threads(3 - threads)
        other = outputs_and_grads("cpp", inputs)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(result[0], other[0])
    assert torch.equal(result[1], other[1])
    for name in GRAD_NAMES:
        assert torch.equal(result[2][name], other[2][name]), name


@pytest.mark.parametrize("chunk, min_items", [(1, 1), (5, 3), (64, 100)])
def test_selective_scan_cpp_blocking_does_not_change_result(
    monkeypatch, chunk, min_items
):
    """Checkpoint chunks that do not tile L, and work items that split the
    channel groups into several ranges."""
    inputs = random_inputs(
        batch=2, d_inner=64, d_state=16, length=77, groups=(1, 2)
    )
    expected = outputs_and_grads("cpp", inputs)
    monkeypatch.setattr(scan_cpp, "CHECKPOINT_STEPS", chunk)
    monkeypatch.setattr(scan_cpp, "MIN_ITEMS", min_items)
    out, last, grads = outputs_and_grads("cpp", inputs)
    assert_close_to_peak(out, expected[0], 1e-13, "out")
    assert_close_to_peak(last, expected[1], 1e-13, "last_state")
    for name in GRAD_NAMES:
        assert_close_to_peak(grads[name], expected[2][name], 1e-13, name)


def test_selective_scan_cpp_channels_per_item():
    """Whole groups when batch x groups gives MIN_ITEMS items, else pieces
    of the groups, in multiples of 16 channels."""
    per_item = scan_cpp._channels_per_item
    assert per_item(batch=126, d_inner=1024, groups=2) == 512
    assert per_item(batch=4, d_inner=512, groups=1) == 256
    assert per_item(batch=1, d_inner=512, groups=1) == 64
    assert per_item(batch=1, d_inner=40, groups=1) == 16
    assert per_item(batch=1, d_inner=8, groups=8) == 16


# ---------------------------------------------------------------------------
# Precision, dispatch and errors
# ---------------------------------------------------------------------------
def test_selective_scan_cpp_half_inputs_compute_in_float32():
    inputs = random_inputs(d_inner=32, d_state=16, dtype=torch.bfloat16)
    out, last = run("cpp", inputs)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    ref, ref_last = run("ref", {k: v.float() for k, v in inputs.items()})
    assert_close_to_peak(last, ref_last, 1e-5, "last_state")
    assert_close_to_peak(out.float(), ref, 2**-7, "out")  # bf16 rounding


def test_selective_scan_cpp_ignores_autocast():
    inputs = random_inputs(d_inner=32, d_state=16, dtype=torch.float32)
    expected, _ = run("cpp", inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = run("cpp", inputs)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_selective_scan_auto_uses_cpp_on_cpu_and_logs_once(caplog, monkeypatch):
    monkeypatch.setattr(scan, "_logged_choices", set())
    inputs = random_inputs(dtype=torch.float32)
    with caplog.at_level("INFO", logger="speechbrain_s4.ssm.scan"):
        out, _ = run("auto", inputs)
        run("auto", inputs)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'cpp'" in messages[0]
    assert torch.equal(out, run("cpp", inputs)[0])


def test_selective_scan_cpp_names_a_missing_compiler(monkeypatch):
    """Without a compiler, an explicit "cpp" raises saying what is missing
    and how to install it; "auto" falls back to "torch"."""
    monkeypatch.setitem(scan_cpp._state, "module", None)
    monkeypatch.setitem(scan_cpp._state, "error", None)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    inputs = random_inputs(dtype=torch.float32)
    with pytest.raises(ImportError, match=r"a C\+\+ compiler .*apt-get"):
        run("cpp", inputs)
    with pytest.raises(ImportError, match="backend='torch'"):  # remembered
        run("cpp", inputs)
    assert not scan_cpp.extension_available()
    monkeypatch.setattr(scan, "_logged_choices", set())
    assert torch.equal(run("auto", inputs)[0], run("torch", inputs)[0])


def test_selective_scan_cpp_rejects_other_devices():
    inputs = random_inputs(dtype=torch.float32)
    meta = {k: v.to("meta") for k, v in inputs.items()}
    with pytest.raises(ValueError, match="CPU kernel"):
        run("cpp", meta)
    with pytest.raises(ValueError, match="G dividing"):
        run("cpp", dict(inputs, C=torch.randn(2, 3, 4, 37)))
