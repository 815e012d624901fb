"""The fused C++ CPU kernels against the PyTorch layers they replace.

Every kernel of ``csrc/conv_norm.cpp`` must compute the same function as
the op-by-op PyTorch path of its layer (``cpu_kernels.enabled(False)``) to
float round-off, for every shape the layers can give it (odd lengths,
strides 1 and 2, 1-5 taps, batches, float32 and float64), independently of
the thread count; the layers must take the kernels only where they apply
(inference, unpadded, CPU float) and fall back, with one warning, when the
extension cannot be built. The tests skip only when a build tool is
missing (they name it); a failing compilation fails them.
"""

import logging

import pytest
import torch
from torch import nn

from speechbrain_s4 import cpu_kernels
from speechbrain_s4.layers import (
    DepthwiseConvNorm,
    GlobalLayerNorm,
    LocalAttention,
    adaptive_avg_pool,
    channel_layer_norm,
    global_norm_prelu,
)
from speechbrain_s4.macs import count_macs
from speechbrain_s4.models.s4m import S4M

MISSING_TOOLS = cpu_kernels._EXTENSION.missing_build_tools()
pytestmark = pytest.mark.skipif(
    bool(MISSING_TOOLS),
    reason="the C++ kernels cannot be built here: needs "
    + "; ".join(MISSING_TOOLS),
)

TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}


def randomise_(module, seed=0):
    """Non-trivial parameters (norm gains and biases are 1 and 0 at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
            if p.numel() == 1:  # PReLU slope
                p.abs_()
    return module


def assert_same_function(fused, reference, dtype):
    peak = reference.abs().max()
    err = (fused - reference).abs().max()
    assert fused.shape == reference.shape and fused.dtype == reference.dtype
    assert err <= TOLERANCE[dtype] * peak, f"max error {err:.3g}, peak {peak:.3g}"


KERNELS = cpu_kernels.KERNELS


def both_paths(fn, fused_calls=True):
    """fn() with the kernels, then with PyTorch's ops, both under no_grad.

    Asserts that the first run called a C++ kernel (``fused_calls=False``:
    that it did not), so that a silent fallback cannot pass for a match.
    """
    calls = []
    originals = {name: getattr(cpu_kernels, name) for name in KERNELS}

    def spy(name):
        def call(*args, **kwargs):
            calls.append(name)
            return originals[name](*args, **kwargs)

        return call

    try:
        for name in KERNELS:
            setattr(cpu_kernels, name, spy(name))
        with torch.no_grad():
            fused = fn()
            assert bool(calls) == fused_calls, calls
            with cpu_kernels.enabled(False):
                reference = fn()
    finally:
        for name, original in originals.items():
            setattr(cpu_kernels, name, original)
    return fused, reference


def test_kernels_build_and_are_used_for_inference():
    x = torch.randn(2, 4, 9)
    with torch.no_grad():
        assert cpu_kernels.usable(x)  # builds the extension
        assert cpu_kernels.usable(x.double(), torch.zeros(3, dtype=torch.float64))
        assert not cpu_kernels.usable(x.to(torch.bfloat16))
        assert not cpu_kernels.usable(x, torch.zeros(3, dtype=torch.float64))
        with cpu_kernels.enabled(False):
            assert not cpu_kernels.usable(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cpu_kernels.usable(x)
    assert not cpu_kernels.usable(x)  # autograd records: PyTorch's ops


#: (taps, stride, input length): every length a padded filter can take
CONV_CASES = [
    (k, stride, length)
    for k, stride in [(5, 1), (5, 2), (3, 2), (1, 1), (4, 1), (5, 3)]
    for length in [1, 2, 7, 64, 101]
    if length + 2 * ((k - 1) // 2) >= k
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel_size, stride, length", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_norm_equals_depthwise_conv_norm(kernel_size, stride, length, bias, dtype):
    layer = DepthwiseConvNorm(6, kernel_size, stride=stride, bias=bias)
    layer = randomise_(layer).to(dtype).eval()
    x = torch.randn(3, 6, length, dtype=dtype) * 2 + 0.5
    assert_same_function(*both_paths(lambda: layer(x)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_slopes", [1, 5])
def test_global_norm_prelu_equals_norm_then_prelu(num_slopes, dtype):
    norm = randomise_(GlobalLayerNorm(5)).to(dtype)
    act = randomise_(nn.PReLU(num_slopes)).to(dtype)
    x = torch.randn(2, 5, 33, dtype=dtype) + 1.0
    fused, reference = both_paths(lambda: global_norm_prelu(norm, act, x))
    assert_same_function(fused, reference, dtype)
    assert (fused < 0).any()  # the slope was used


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel_size", [1, 5])
@pytest.mark.parametrize("ratio", [1, 2, 4, 8, 3])
@pytest.mark.parametrize("global_length", [1, 5, 16])
def test_local_attention_equals_the_layer(kernel_size, ratio, global_length, dtype):
    layer = randomise_(LocalAttention(7, kernel_size)).to(dtype).eval()
    x_local = torch.randn(2, 7, global_length * ratio, dtype=dtype)
    x_global = torch.randn(2, 7, global_length, dtype=dtype)
    assert_same_function(
        *both_paths(lambda: layer(x_local, x_global)), dtype
    )


def test_local_attention_keeps_pytorch_for_other_factors_and_padding():
    layer = randomise_(LocalAttention(4, 5)).eval()
    x_local, x_global = torch.randn(2, 4, 11), torch.randn(2, 4, 6)
    # 11 frames from 6: no integer factor, the layer's nearest resampling
    # (its three conv + norm units still use the kernel)
    assert_same_function(*both_paths(lambda: layer(x_local, x_global)), torch.float32)
    lengths = (torch.tensor([11, 8]), torch.tensor([6, 4]))
    fused, reference = both_paths(
        lambda: layer(x_local, x_global, *lengths), fused_calls=False
    )
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 5, 300, 513])
def test_channel_layer_norm_equals_layer_norm_over_channels(length, dtype):
    norm = randomise_(nn.LayerNorm(9)).to(dtype)
    x = torch.randn(2, 9, length, dtype=dtype) * 3 - 1
    assert_same_function(*both_paths(lambda: channel_layer_norm(norm, x)), dtype)


def test_channel_layer_norm_without_bias_keeps_pytorch():
    norm = randomise_(nn.LayerNorm(9, bias=False))
    x = torch.randn(2, 9, 20)
    fused, reference = both_paths(lambda: channel_layer_norm(norm, x), fused_calls=False)
    assert torch.equal(fused, reference)
    expected = norm(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(fused, expected, atol=1e-6)


def test_causal_channel_layer_norm_uses_the_kernel():
    from speechbrain_s4.models.s4m_causal import ChannelLayerNorm

    norm = randomise_(ChannelLayerNorm(9))
    x = torch.randn(2, 9, 20)
    assert_same_function(*both_paths(lambda: norm(x)), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio", [2, 3, 4, 8])
def test_avg_pool_equals_adaptive_avg_pool(ratio, dtype):
    x = torch.randn(2, 3, 7 * ratio, dtype=dtype)
    fused, reference = both_paths(lambda: adaptive_avg_pool(x, 7))
    assert_same_function(fused, reference, dtype)
    expected = torch.nn.functional.adaptive_avg_pool1d(x, 7)
    assert_same_function(fused, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("residual", [True, False])
def test_s4_layer_tail_equals_the_pytorch_path(bidirectional, residual, dtype):
    from speechbrain_s4.ssm import S4

    layer = S4(6, d_state=8, bidirectional=bidirectional).to(dtype).eval()
    with torch.no_grad():
        layer.D.mul_(3.0)  # a skip large enough to matter
    u = torch.randn(2, 6, 37, dtype=dtype) * 2
    skip = torch.randn(2, 6, 37, dtype=dtype) if residual else None
    assert_same_function(*both_paths(lambda: layer(u, residual=skip)), dtype)


def test_float32_exp_and_erf_are_accurate_over_the_whole_range():
    # gelu_skip with D = 0 is GELU(y); glu_residual with a = 1, x = 0 is the
    # sigmoid: compare both with float64 references at 200k points
    v = torch.linspace(-60.0, 60.0, 200001).view(1, 1, -1)
    ext = cpu_kernels._EXTENSION.load()
    gelu = ext.gelu_skip(v, v, torch.zeros(1))
    exact = torch.nn.functional.gelu(v.double())
    assert (gelu.double() - exact).abs().max() <= 1e-6 * 60  # A&S 7.1.26
    tail = v < -3  # GELU(v) -> 0 from below: no cancellation
    assert ((gelu.double() - exact)[tail].abs() <= 1.5e-7 * v[tail].abs()).all()
    ones = torch.cat([torch.ones_like(v), v], dim=1)
    sigmoid = ext.glu_residual(ones, torch.zeros_like(v))
    reference = torch.sigmoid(v.double())
    assert ((sigmoid.double() - reference).abs() <= 2e-7 * reference + 1e-38).all()
    assert torch.equal(ext.glu_residual(ones[..., :1] * float("nan"), v[..., :1]).isnan(), torch.ones(1, 1, 1, dtype=torch.bool))


def test_kernels_read_non_contiguous_inputs():
    layer = randomise_(DepthwiseConvNorm(6, 5, stride=2)).eval()
    x = torch.randn(3, 40, 6).transpose(1, 2)  # [3, 6, 40], channels-last
    assert not x.is_contiguous()
    assert_same_function(*both_paths(lambda: layer(x)), torch.float32)


def test_kernels_give_the_same_result_on_any_number_of_threads():
    # each kernel alone (matrix products of a whole model may legitimately
    # depend on the BLAS's thread split)
    ext = cpu_kernels._EXTENSION.load()
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(2, 64, 96, generator=gen), torch.randn(2, 64, 48, generator=gen)
    w5, ones = torch.randn(64, 5, generator=gen), torch.rand(64, generator=gen) + 0.5
    z = torch.randn(2, 128, 96, generator=gen)
    calls = [
        lambda: ext.conv_norm(x, w5, ones, 2, 2, ones, ones, 1e-8, None, False),
        lambda: ext.conv_norm(x, None, None, 1, 0, ones, ones, 1e-8, ones[:1], False),
        lambda: ext.local_attention(x, g, w5, ones, ones, w5, ones, ones, w5, ones, ones, 2, 1e-8),
        lambda: ext.channel_layer_norm(x, ones, ones, 1e-5),
        lambda: ext.avg_pool(x, 12),
        lambda: ext.gelu_skip(x, x, ones),
        lambda: ext.glu_residual(z, x),
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [call() for call in calls]
        torch.set_num_threads(2)
        two = [call() for call in calls]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_kernels_reject_what_they_cannot_compute():
    ext = cpu_kernels._EXTENSION.load()
    x, w, ones = torch.randn(1, 4, 10), torch.randn(4, 5), torch.ones(4)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.conv_norm(x, w.t().contiguous().t(), None, 1, 2, ones, ones, 1e-8, None, False)
    with pytest.raises(RuntimeError, match="gn_weight"):
        ext.conv_norm(x, w, None, 1, 2, torch.ones(3), ones, 1e-8, None, False)
    with pytest.raises(RuntimeError, match="multiple of L_g"):
        ext.local_attention(x, torch.randn(1, 4, 3), w, ones, ones, w, ones, ones, w, ones, ones, 2, 1e-8)
    with pytest.raises(RuntimeError, match="multiple of n"):
        ext.avg_pool(x, 3)
    with pytest.raises(RuntimeError, match="n >= L"):
        ext.gelu_skip(torch.randn(1, 4, 5), x, ones)
    with pytest.raises(RuntimeError, match=r"\[B, 2H, L\]"):
        ext.glu_residual(x, x)


def tiny_s4m(**kwargs):
    config = dict(bottleneck_channels=8, hidden_channels=16, num_blocks=2)
    return S4M(**{**config, **kwargs})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoder_s4", [False, True])
@pytest.mark.parametrize("align_frames", [True, False])
def test_s4m_inference_equals_the_pytorch_path(decoder_s4, align_frames, dtype):
    model = tiny_s4m(decoder_s4=decoder_s4, align_frames=align_frames)
    model = randomise_(model).to(dtype).eval()
    mix = torch.randn(2, 2345, dtype=dtype)
    fused, reference = both_paths(lambda: model(mix))
    assert_same_function(fused, reference, dtype)


def test_s4m_macs_count_the_fused_kernels():
    model = tiny_s4m(decoder_s4=True).eval()
    with torch.no_grad():  # S4 kernels are cached in eval: count both warm
        model(torch.randn(1, 2000))
    fused = count_macs(model, seconds=0.25)
    with cpu_kernels.enabled(False):
        reference = count_macs(model, seconds=0.25)
    for kind in ("matmul", "fft", "total"):
        assert fused[kind] == pytest.approx(reference[kind], rel=1e-9), kind


def test_a_failed_build_falls_back_to_pytorch_with_one_warning(monkeypatch, caplog):
    model = randomise_(tiny_s4m()).eval()
    mix = torch.randn(1, 1000)
    with torch.no_grad(), cpu_kernels.enabled(False):
        expected = model(mix)
    monkeypatch.setitem(cpu_kernels._EXTENSION.state, "module", None)
    monkeypatch.setitem(cpu_kernels._EXTENSION.state, "error", "no compiler (test)")
    monkeypatch.setattr(cpu_kernels, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="speechbrain_s4.cpu_kernels"):
        with torch.no_grad():
            out = model(mix)
            model(mix)
    assert torch.equal(out, expected)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["no compiler (test)"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv1d_is_the_convolution_with_its_gradients(batch, bias):
    conv = nn.Conv1d(5, 7, 1, bias=bias)
    x = torch.randn(batch, 5, 11, requires_grad=True)
    out = cpu_kernels.pointwise_conv1d(conv, x)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *conv.parameters()], grad)
    ref_out = conv(x)
    expected = torch.autograd.grad(ref_out, [x, *conv.parameters()], grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_pointwise_conv1d_leaves_other_convolutions_to_pytorch():
    conv = nn.Conv1d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 9)
    assert torch.equal(cpu_kernels.pointwise_conv1d(conv, x), conv(x))
