"""The S4 layer: reference fixtures, recurrent view, purity, gradients."""

import pytest
import torch
import torch.nn.functional as F

from speechbrain_s4.convert import convert_s4_layer_state_dict
from speechbrain_s4.ssm import S4, fft_conv

H, N = 8, 16  # the fixture's S4(d_model=8, d_state=16, bidirectional=True)


def assert_close_to_peak(out, ref, rel=1e-5):
    """max |out - ref| <= rel * max |ref| (tests/golden/README.md)."""
    error = (out - ref).abs().max().item()
    peak = ref.abs().max().item()
    assert error <= rel * peak, f"max abs error {error:.3g}, peak {peak:.3g}"


def _suffix(conj_symmetric):
    return "_cauchy_conj" if conj_symmetric else ""


def _layer_from(reference_state_dict, conj_symmetric):
    layer = S4(H, d_state=N, bidirectional=True, conj_symmetric=conj_symmetric)
    layer.load_state_dict(
        convert_s4_layer_state_dict(reference_state_dict, conj_symmetric)
    )
    return layer.eval()


# ---------------------------------------------------------------------------
# Reference fixture (tests/golden/s4_layer_io.pt)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("conj_symmetric", [True, False], ids=["conj", "naive"])
@pytest.mark.parametrize("source", ["state_dict", "state_dict_before_forward"])
def test_s4_matches_reference_layer(golden, conj_symmetric, source):
    io = golden("s4_layer_io")
    suffix = _suffix(conj_symmetric)
    layer = _layer_from(io[source], conj_symmetric)
    with torch.no_grad():
        y = layer(io["x"])
        kernel = layer.kernel(50)
        pre_activation = fft_conv(io["x"], kernel, layer.D)
    assert_close_to_peak(y, io["y" + suffix])
    assert_close_to_peak(kernel, io["kernel" + suffix])
    assert_close_to_peak(pre_activation, io["pre_activation" + suffix])


@pytest.mark.parametrize("conj_symmetric", [True, False], ids=["conj", "naive"])
@pytest.mark.parametrize("source", ["state_dict", "grow_state_dict_after"])
def test_s4_matches_reference_after_growth(golden, conj_symmetric, source):
    """x [2, 8, 80] after the reference saw L = 50: internal length 100."""
    io = golden("s4_layer_io")
    grow = io["grow"]
    state_dict = (
        grow["state_dict_after"] if source != "state_dict" else io[source]
    )
    layer = _layer_from(state_dict, conj_symmetric)
    if not conj_symmetric:
        assert layer.kernel.internal_length(80) == 100
    with torch.no_grad():
        y = layer(grow["x"])
    # with conj_symmetric this is also our kernel at L = 80 computed afresh,
    # compared with the reference's kernel grown from 50 to 100
    assert_close_to_peak(y, grow["y" + _suffix(conj_symmetric)])


def test_s4_naive_growth_from_unset_length(golden):
    """A checkpoint saved before any forward (L = 0) grows like the reference
    once the length it first saw (50) is recorded."""
    io = golden("s4_layer_io")
    layer = _layer_from(io["state_dict_before_forward"], conj_symmetric=False)
    assert layer.kernel.internal_length(80) == 80  # nothing seen yet
    with torch.no_grad():
        layer.kernel.base_length.fill_(50)
        y = layer(io["grow"]["x"])
    assert_close_to_peak(y, io["grow"]["y"])


@pytest.mark.parametrize("conj_symmetric", [True, False], ids=["conj", "naive"])
@pytest.mark.parametrize("source", ["state_dict", "state_dict_before_forward"])
def test_s4_matches_reference_perturbed(golden, conj_symmetric, source):
    perturbed = golden("s4_layer_io")["perturbed"]
    layer = _layer_from(perturbed[source], conj_symmetric)
    with torch.no_grad():
        y = layer(perturbed["x"])
    assert_close_to_peak(y, perturbed["y" + _suffix(conj_symmetric)])


def test_s4_c_tilde_matches_reference_state_dicts(golden):
    """C~ = C (I - dA^L) from the true C equals what the reference stored."""
    io = golden("s4_layer_io")
    layer = _layer_from(io["state_dict_before_forward"], conj_symmetric=True)
    with torch.no_grad():
        for length, state_dict in (
            (50, io["state_dict"]),
            (100, io["grow"]["state_dict_after"]),
        ):
            assert int(state_dict["kernel.kernel.L"]) == length
            stored = torch.view_as_complex(state_dict["kernel.kernel.C"])
            assert_close_to_peak(layer.kernel.c_tilde(length), stored)


@pytest.mark.parametrize(
    "source", ["state_dict", "grow.state_dict_after", "perturbed.state_dict"]
)
def test_convert_recovers_the_original_c(golden, source):
    """C = C~ (I - dA^L)^-1 inverts C~ exactly and gives back the reference's
    original C up to the float32 rounding of its stored C~."""
    io = golden("s4_layer_io")
    parent, _, name = source.rpartition(".")
    reference = (io[parent] if parent else io)[name]
    original = (io["perturbed"] if parent == "perturbed" else io)[
        "state_dict_before_forward"
    ]
    length = int(reference["kernel.kernel.L"])
    # exact inverse: in float64, C~ of the recovered C is the stored C~
    as_double = {
        k: v.double() if v.is_floating_point() else v
        for k, v in reference.items()
    }
    layer = S4(H, N, bidirectional=True).double()
    layer.load_state_dict(convert_s4_layer_state_dict(as_double, True))
    with torch.no_grad():
        c_tilde = torch.view_as_real(layer.kernel.c_tilde(length))
    assert_close_to_peak(c_tilde, as_double["kernel.kernel.C"], rel=1e-12)
    # the reference rounded C~ to float32 (after computing it in complex64);
    # recovering C amplifies that by cond(I - dA^L), about 30 here
    converted = convert_s4_layer_state_dict(reference, conj_symmetric=True)
    assert_close_to_peak(
        converted["kernel.C"], original["kernel.kernel.C"], rel=1e-4
    )


def test_convert_warns_when_c_is_ill_conditioned(golden, caplog):
    """A mode with Lambda ~ 0 (and no low-rank term) has dA ~ 1, which makes
    I - dA^L nearly singular."""
    reference = dict(golden("s4_layer_io")["state_dict"])
    for key, value in (("inv_w_real", -25.0), ("w_imag", 0.0)):
        tensor = reference["kernel.kernel." + key].clone()
        tensor[0, 0] = value  # Lambda = -1.4e-11 + 0i
        reference["kernel.kernel." + key] = tensor
    reference["kernel.kernel.P"] = torch.zeros_like(
        reference["kernel.kernel.P"]
    )
    with caplog.at_level("WARNING", logger="speechbrain_s4.convert"):
        convert_s4_layer_state_dict(reference, conj_symmetric=True)
    assert "condition number" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="speechbrain_s4.convert"):
        convert_s4_layer_state_dict(
            golden("s4_layer_io")["state_dict"], conj_symmetric=True
        )
    assert "condition number" not in caplog.text


def test_convert_keys_and_buffer(golden):
    reference = golden("s4_layer_io")["state_dict"]
    conj = convert_s4_layer_state_dict(reference, conj_symmetric=True)
    naive = convert_s4_layer_state_dict(reference, conj_symmetric=False)
    assert set(conj) == set(S4(H, N, bidirectional=True).state_dict())
    assert set(naive) == set(conj) | {"kernel.base_length"}
    assert int(naive["kernel.base_length"]) == 50
    assert conj["D"].shape == (H,) and conj["kernel.B"].shape == (H, N // 2, 2)
    for key, value in conj.items():
        assert value.dtype == torch.float32, key


def test_convert_rejects_wrong_state_dicts(golden):
    reference = dict(golden("s4_layer_io")["state_dict"])
    missing = {k: v for k, v in reference.items() if k != "kernel.kernel.P"}
    with pytest.raises(KeyError, match="kernel.kernel.P"):
        convert_s4_layer_state_dict(missing, conj_symmetric=True)
    extra = dict(reference, **{"kernel.kernel.Q": reference["kernel.kernel.P"]})
    with pytest.raises(KeyError, match="kernel.kernel.Q"):
        convert_s4_layer_state_dict(extra, conj_symmetric=True)
    prefixed = {"layer." + k: v for k, v in reference.items()}
    with pytest.raises(KeyError, match="missing"):
        convert_s4_layer_state_dict(prefixed, conj_symmetric=True)
    rank2 = dict(reference, **{"kernel.kernel.P": torch.zeros(2, H, N // 2, 2)})
    with pytest.raises(ValueError, match="kernel.kernel.P"):
        convert_s4_layer_state_dict(rank2, conj_symmetric=True)
    shared = dict(reference, **{"kernel.kernel.w_imag": torch.zeros(1, N // 2)})
    with pytest.raises(ValueError, match="w_imag"):
        convert_s4_layer_state_dict(shared, conj_symmetric=True)
    flat_c = dict(reference, **{"kernel.kernel.C": torch.zeros(H, N // 2, 2)})
    with pytest.raises(ValueError, match="kernel.kernel.C"):
        convert_s4_layer_state_dict(flat_c, conj_symmetric=True)


# ---------------------------------------------------------------------------
# Behaviour of our layer
# ---------------------------------------------------------------------------
def _explicit_layer(layer, u):
    """The layer in float64 by a direct time-domain sum (no FFT)."""
    u = u.double()
    length = u.shape[-1]
    with torch.no_grad():
        k = layer.kernel(length).double()  # [C, H, L]
        t = torch.arange(length)
        lag = t[:, None] - t[None, :]  # [t, s]: t - s
        forward = torch.where(
            lag >= 0, k[0][:, lag.clamp(min=0)], torch.zeros(())
        )  # [H, t, s]
        total = forward
        if k.shape[0] == 2:  # s > t uses k1[s - t - 1]
            total = total + torch.where(
                lag < 0, k[1][:, (-lag - 1).clamp(min=0)], torch.zeros(())
            )
        y = torch.einsum("hts,bhs->bht", total, u)
        y = y + layer.D.double()[:, None] * u
        y = F.gelu(y)
        y = F.conv1d(
            y,
            layer.output_linear.weight.double(),
            layer.output_linear.bias.double(),
        )
        return F.glu(y, dim=1)


@pytest.mark.parametrize("length", [1, 7, 50, 333])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "causal"])
def test_s4_odd_lengths_match_direct_convolution(length, bidirectional):
    layer = S4(4, d_state=8, bidirectional=bidirectional).eval()
    u = torch.randn(2, 4, length)
    with torch.no_grad():
        y = layer(u)
    assert y.shape == (2, 4, length)
    assert_close_to_peak(y.double(), _explicit_layer(layer, u))


@pytest.fixture
def one_thread():
    """Stepping runs thousands of tiny ops: with more intra-op threads each
    one only adds synchronisation, which is slow on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "dplr"},
        {"mode": "diag", "init": "legs", "disc": "zoh"},
        {"mode": "diag", "init": "inv", "disc": "bilinear"},
    ],
    ids=["dplr", "diag-legs-zoh", "diag-inv-bilinear"],
)
def test_s4_step_equals_convolution(kwargs, one_thread):
    torch.manual_seed(4)
    layer = S4(4, d_state=16, **kwargs).eval()
    u = torch.randn(2, 4, 1000)
    with torch.no_grad():
        y_conv = layer(u)
        layer.setup_step()
        state = layer.default_state(2)
        steps = []
        for t in range(u.shape[-1]):
            y_t, state = layer.step(u[..., t], state)
            steps.append(y_t)
    assert_close_to_peak(torch.stack(steps, dim=-1), y_conv)


def test_s4_step_errors():
    with pytest.raises(RuntimeError, match="bidirectional"):
        S4(4, 8, bidirectional=True).setup_step()
    with pytest.raises(RuntimeError, match="conj_symmetric"):
        S4(4, 8, conj_symmetric=False).setup_step()
    layer = S4(4, 8)
    with pytest.raises(RuntimeError, match="setup_step"):
        layer.step(torch.zeros(1, 4), layer.default_state(1))
    layer.setup_step()
    with torch.no_grad():
        layer.kernel.log_dt.add_(0.1)
    with pytest.raises(RuntimeError, match="setup_step"):
        layer.step(torch.zeros(1, 4), layer.default_state(1))


@pytest.mark.parametrize("conj_symmetric", [True, False], ids=["conj", "naive"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_s4_forward_keeps_state_dict(conj_symmetric, training):
    layer = S4(4, d_state=8, bidirectional=True, conj_symmetric=conj_symmetric)
    if not conj_symmetric:
        with torch.no_grad():
            layer.kernel.base_length.fill_(50)
    layer.train(training)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    versions = [t._version for t in layer.state_dict().values()]
    layer(torch.randn(1, 4, 2000)).sum().backward()
    after = layer.state_dict()
    assert [t._version for t in after.values()] == versions
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bidirectional": True},
        {"bidirectional": True, "conj_symmetric": False},
        {"mode": "diag", "init": "lin", "disc": "zoh"},
        {"mode": "diag", "init": "real", "bidirectional": True},
    ],
    ids=["dplr-bi", "dplr-naive", "diag-lin", "diag-real-bi"],
)
def test_s4_gradients_reach_every_parameter(kwargs):
    layer = S4(4, d_state=8, **kwargs).train()
    y = layer(torch.randn(2, 4, 33))
    (y * torch.randn_like(y)).sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_s4_eval_reuses_the_kernel(monkeypatch):
    """S4M calls one shared block many times per forward at the same L."""
    layer = S4(4, d_state=8, bidirectional=True).eval()
    calls = []
    original = layer.kernel._kernel
    monkeypatch.setattr(
        layer.kernel, "_kernel", lambda L: calls.append(L) or original(L)
    )
    u = torch.randn(1, 4, 20)
    with torch.no_grad():
        outputs = [layer(u) for _ in range(16)]
    assert calls == [20]
    assert all(torch.equal(y, outputs[0]) for y in outputs)
    layer.train()
    layer(u).sum().backward()  # training: computed, not cached
    with torch.no_grad():  # an SGD step, in place as optimisers do
        for param in layer.parameters():
            param.sub_(0.1 * param.grad)
    layer.eval()
    with torch.no_grad():
        updated = layer(u)
    assert calls == [20, 20, 20]
    assert not torch.equal(updated, outputs[0])


def test_s4_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        S4(4, mode="nplr")
    with pytest.raises(ValueError, match="init"):
        S4(4, mode="dplr", init="lin")
    with pytest.raises(ValueError, match="disc"):
        S4(4, mode="dplr", disc="zoh")
    with pytest.raises(ValueError, match="conj_symmetric"):
        S4(4, mode="diag", conj_symmetric=False)
    with pytest.raises(ValueError, match=r"\[B, H=4, L\]"):
        S4(4, 8)(torch.randn(2, 5, 10))


def test_fft_conv_padded_size_equals_direct_convolution():
    """A 5-smooth FFT size larger than 2L leaves the convolution exact."""
    from speechbrain_s4.ssm.fftconv import fft_length

    torch.manual_seed(0)
    for length in (7, 127, 1016):
        assert fft_length(length) >= 2 * length
        u = torch.randn(2, 3, length, dtype=torch.float64)
        k = torch.randn(2, 3, length, dtype=torch.float64)
        y = fft_conv(u, k)
        # direct two-sided sum: k0 over the past and present, k1 shifted
        # by one step over the future
        t = torch.arange(length)
        lag = t[:, None] - t[None, :]  # [t, s]
        past = torch.where(lag >= 0, k[0][:, lag.clamp(min=0)], 0.0)
        future = torch.where(lag < 0, k[1][:, (-lag - 1).clamp(min=0)], 0.0)
        direct = torch.einsum("hts,bhs->bht", past + future, u)
        torch.testing.assert_close(y, direct, rtol=1e-9, atol=1e-9)
