"""selective_scan: every CPU backend against the golden fixture and the loop.

The float64 fixture was computed with mamba_ssm's ``selective_scan_ref``
maths; ``selective_scan_ref`` (the sequential loop) is the specification the
fast "torch" backend is compared with, on outputs and on gradients.
"""

import re

import pytest
import torch

from speechbrain_s4.ssm import scan
from speechbrain_s4.ssm.scan import selective_scan, selective_scan_ref

CPU_BACKENDS = ("ref", "torch")
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
    """Inputs of one scan; ``invariant`` lists which of B, C are [D, N]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def projection(name):
        if name in invariant:
            return randn(d_inner, d_state)
        if groups is None:
            return randn(batch, d_state, length)
        return randn(batch, groups, d_state, length)

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


def outputs_and_grads(backend, inputs, seed=1):
    """out, last_state and the gradients of a random linear loss of both."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = run(backend, leaves)
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(last.shape, generator=gen, dtype=torch.float64)
    loss = (out * w_out.to(out.dtype)).sum() + (
        last * w_last.to(last.dtype)
    ).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, last, dict(zip(leaves, grads, strict=True))


# ---------------------------------------------------------------------------
# Golden fixture (float64, mamba_ssm selective_scan_ref semantics)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_selective_scan_matches_golden(golden, backend, dtype):
    io = golden("selective_scan_io")
    args = [io[k].to(dtype) for k in ("u", "delta", "A", "B", "C")]
    D, z, bias = (io[k].to(dtype) for k in ("D", "z", "delta_bias"))
    tol = TOLERANCE[dtype]
    flags = {"delta_bias": bias, "delta_softplus": io["delta_softplus"]}

    out, last = selective_scan(
        *args, D=D, z=z, return_last_state=True, backend=backend, **flags
    )
    assert out.dtype == dtype and last.dtype == dtype
    assert_close_to_peak(out, io["out"], tol, "out")
    assert_close_to_peak(last, io["last_state"], tol, "last_state")
    out_no_z = selective_scan(*args, D=D, backend=backend, **flags)
    assert_close_to_peak(out_no_z, io["out_no_z"], tol, "out_no_z")
    y = selective_scan(*args, backend=backend, **flags)
    assert_close_to_peak(y, io["y_no_D_no_z"], tol, "y_no_D_no_z")


# ---------------------------------------------------------------------------
# Fast path against the loop: outputs and gradients
# ---------------------------------------------------------------------------
LAYOUTS = {
    "shared": {},
    "grouped": {"groups": 2},
    "grouped_per_channel": {"groups": 8},
    "invariant": {"invariant": ("B", "C")},
    "invariant_B_grouped_C": {"groups": 4, "invariant": ("B",)},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_selective_scan_gradients_match_loop(layout, dtype):
    inputs = random_inputs(length=45, dtype=dtype, **LAYOUTS[layout])
    ref_out, ref_last, ref_grads = outputs_and_grads("ref", inputs)
    out, last, grads = outputs_and_grads("torch", inputs)
    tol = TOLERANCE[dtype]
    assert_close_to_peak(out, ref_out, tol, "out")
    assert_close_to_peak(last, ref_last, tol, "last_state")
    for name in GRAD_NAMES:
        assert grads[name].shape == inputs[name].shape
        assert_close_to_peak(grads[name], ref_grads[name], tol, f"d{name}")


@pytest.mark.parametrize("length", [1, 7, 37, 129, 1000])
def test_selective_scan_odd_lengths_match_loop(length):
    small = length == 1000
    inputs = random_inputs(
        batch=1 if small else 2,
        d_inner=4 if small else 8,
        length=length,
        groups=2,
    )
    ref_out, ref_last, ref_grads = outputs_and_grads("ref", inputs)
    out, last, grads = outputs_and_grads("torch", inputs)
    assert_close_to_peak(out, ref_out, 1e-12, "out")
    assert_close_to_peak(last, ref_last, 1e-12, "last_state")
    for name in GRAD_NAMES:
        assert_close_to_peak(grads[name], ref_grads[name], 1e-12, f"d{name}")


@pytest.mark.parametrize(
    "slab, block", [(32, 32), (64, 64), (128, 256), (96, 1 << 20)]
)
def test_selective_scan_blocking_does_not_change_result(
    monkeypatch, slab, block
):
    """Batch groups, k-step blocks and checkpoint chunks that do not tile L."""
    inputs = random_inputs(batch=3, d_inner=8, d_state=4, length=77, groups=2)
    expected = outputs_and_grads("torch", inputs)
    monkeypatch.setattr(scan, "_SLAB_ELEMENTS", slab)
    monkeypatch.setattr(scan, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(scan, "_CHECKPOINT_STEPS", 8)
    plan = scan._ScanPlan(torch.zeros(3, 77, 8), torch.zeros(2, 4, 4), True)
    assert plan.chunk_steps == 8 and 8 % plan.block_steps == 0
    out, last, grads = outputs_and_grads("torch", inputs)
    assert_close_to_peak(out, expected[0], 1e-13, "out")
    assert_close_to_peak(last, expected[1], 1e-13, "last_state")
    for name in GRAD_NAMES:
        assert_close_to_peak(grads[name], expected[2][name], 1e-13, f"d{name}")


def test_selective_scan_without_optional_inputs_matches_loop():
    inputs = random_inputs(dtype=torch.float64)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    ref = selective_scan_ref(*args)
    out = selective_scan(*args, backend="torch")
    assert_close_to_peak(out, ref, 1e-12, "out")


def test_selective_scan_long_sequence_is_stable():
    """L = 16000 with decays that underflow (A dt down to -5000) and decays
    within 1e-5 of 1, against the float64 loop.

    In float64 the fast scan equals the loop to 1e-12. In float32 the slow
    channels accumulate ~1e4 increments with decays 1 - 1e-5, so the loop
    itself is only good to ~3e-5 of the peak there; the fast scan must be
    finite and at least as accurate as the float32 loop.
    """
    length = 16000
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(1, 4, length, generator=gen, dtype=torch.float64)
    delta = torch.rand(1, 4, length, generator=gen, dtype=torch.float64)
    delta[:, :2] = delta[:, :2] * 20 + 5  # |A dt| from 5 to 5000
    delta[:, 2:] = delta[:, 2:] * 1e-5 + 1e-6  # |A dt| ~ 1e-5
    A = -torch.tensor(
        [
            [60.0, 200.0, 1.0],
            [40.0, 100.0, 3.0],
            [1.0, 0.5, 2.0],
            [1.5, 0.3, 0.8],
        ],
        dtype=torch.float64,
    )
    B = torch.randn(1, 3, length, generator=gen, dtype=torch.float64)
    C = torch.randn(1, 3, length, generator=gen, dtype=torch.float64)
    args = (u, delta, A, B, C)
    ref, ref_last = selective_scan_ref(*args, return_last_state=True)
    out, last = selective_scan(*args, return_last_state=True, backend="torch")
    assert_close_to_peak(out, ref, 1e-12, "out float64")
    assert_close_to_peak(last, ref_last, 1e-12, "last_state float64")

    args32 = [t.float() for t in args]
    loop32 = selective_scan_ref(*args32)
    leaves = [t.requires_grad_() for t in args32]
    out32 = selective_scan(*leaves, backend="torch")
    for channels in (slice(0, 2), slice(2, 4)):  # fast and slow decays
        expected = ref[:, channels]
        loop_err = (loop32[:, channels] - expected).abs().max()
        tol = max(1e-5, 2 * loop_err / expected.abs().max())
        assert_close_to_peak(out32[:, channels], expected, tol, "out float32")
    grads = torch.autograd.grad(out32.square().sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------
# Precision, layout and dispatch
# ---------------------------------------------------------------------------
def test_selective_scan_half_inputs_compute_in_float32():
    inputs = random_inputs(dtype=torch.bfloat16)
    out, last = run("torch", inputs)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    ref, ref_last = run("ref", {k: v.float() for k, v in inputs.items()})
    assert_close_to_peak(last, ref_last, 1e-5, "last_state")
    assert_close_to_peak(out.float(), ref, 2**-7, "out")  # bf16 rounding


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_selective_scan_ignores_autocast(backend):
    inputs = random_inputs(dtype=torch.float32)
    expected, _ = run(backend, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = run(backend, inputs)
    assert out.dtype == torch.float32
    assert_close_to_peak(out, expected, 1e-6, "out under autocast")


def test_selective_scan_output_follows_layout_of_u():
    inputs = random_inputs(dtype=torch.float64)
    expected, _ = run("torch", inputs)
    assert expected.is_contiguous()
    channels_last = {
        k: v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v
        for k, v in inputs.items()
    }
    channels_last["B"], channels_last["C"] = inputs["B"], inputs["C"]
    out, _ = run("torch", channels_last)
    assert out.transpose(1, 2).is_contiguous()
    assert torch.equal(out, expected)


def test_selective_scan_cuda_backend_asks_for_install_on_cpu():
    inputs = random_inputs(dtype=torch.float32)
    hint = re.escape('pip install "speechbrain_s4[cuda]"')
    with pytest.raises((ImportError, ValueError), match=hint):
        run("cuda", inputs)


def test_selective_scan_auto_uses_torch_on_cpu_and_logs_once(
    caplog, monkeypatch
):
    """Without the C++ kernel (tests/ssm/test_scan_cpp.py covers "cpp")."""
    from speechbrain_s4.ssm import scan_cpp

    monkeypatch.setitem(scan_cpp._state, "module", None)
    monkeypatch.setitem(scan_cpp._state, "error", "no C++ compiler (test)")
    monkeypatch.setattr(scan, "_logged_choices", set())
    inputs = random_inputs(dtype=torch.float32)
    with caplog.at_level("INFO", logger="speechbrain_s4.ssm.scan"):
        out, _ = run("auto", inputs)
        run("auto", inputs)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'torch'" in messages[0]
    assert torch.equal(out, run("torch", inputs)[0])


def test_selective_scan_rejects_bad_arguments():
    inputs = random_inputs(dtype=torch.float32)
    with pytest.raises(
        ValueError, match="expected one of auto, ref, torch, cuda"
    ):
        run("triton", inputs)
    with pytest.raises(NotImplementedError, match="complex A"):
        run("torch", dict(inputs, A=inputs["A"].to(torch.complex64)))
    with pytest.raises(ValueError, match="B must be"):
        run("torch", dict(inputs, B=inputs["B"][:, :, :-1]))
    with pytest.raises(ValueError, match="G dividing"):
        run("ref", dict(inputs, C=torch.randn(2, 3, 4, 37)))
    with pytest.raises(ValueError, match="delta_bias must be"):
        run("torch", dict(inputs, delta_bias=torch.zeros(3)))
