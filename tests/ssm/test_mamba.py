"""Mamba mixer, RMSNorm, Block and BiMamba: keys, initialisation, maths."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from speechbrain_s4.ssm.mamba import BiMamba, Block, Mamba, RMSNorm
from speechbrain_s4.ssm.scan import selective_scan_ref

# MODELS.md 3.5: one Block of SPMamba (d_model 128, expand 4, d_state 16)
SPMAMBA_BLOCK_SHAPES = {
    "mixer.in_proj.weight": (1024, 128),
    "mixer.conv1d.weight": (512, 1, 4),
    "mixer.conv1d.bias": (512,),
    "mixer.x_proj.weight": (40, 512),
    "mixer.dt_proj.weight": (512, 8),
    "mixer.dt_proj.bias": (512,),
    "mixer.A_log": (512, 16),
    "mixer.D": (512,),
    "mixer.out_proj.weight": (128, 512),
    "norm.weight": (128,),
}


def perturb_(module, seed=0, scale=0.1):
    """Make every parameter distinct, so swapped weights cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            param.add_(noise.to(param.dtype) * scale)
    return module


def assert_close_to_peak(actual, expected, tol, what=""):
    err = (actual - expected).abs().max()
    peak = expected.abs().max()
    assert err <= tol * peak, f"{what}: max error {err:.3g} vs peak {peak:.3g}"


def mamba_ssm_slow_path(mixer, x):
    """mamba_ssm v1.2 ``Mamba.forward`` without the fused kernels, written
    literally (channels-first, nn.Conv1d with symmetric padding, [dt, B, C]
    split, dt_proj bias as delta_bias) on top of the reference scan."""
    length = x.shape[1]
    xz = mixer.in_proj(x).transpose(1, 2)  # [B, 2D, L]
    x_in, z = xz.chunk(2, dim=1)
    x_in = F.silu(mixer.conv1d(x_in)[..., :length])  # [B, D, L]
    x_dbl = mixer.x_proj(x_in.transpose(1, 2))  # [B, L, R + 2N]
    dt, B, C = torch.split(
        x_dbl, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1
    )
    dt = (dt @ mixer.dt_proj.weight.T).transpose(1, 2)  # [B, D, L]
    y = selective_scan_ref(
        x_in,
        dt,
        -torch.exp(mixer.A_log),
        B.transpose(1, 2),
        C.transpose(1, 2),
        mixer.D,
        z=z,
        delta_bias=mixer.dt_proj.bias,
        delta_softplus=True,
    )
    return mixer.out_proj(y.transpose(1, 2))


# ---------------------------------------------------------------------------
# Keys, shapes, counts, initialisation
# ---------------------------------------------------------------------------
def test_mamba_parameter_count_matches_spmamba():
    mixer = Mamba(128, d_state=16, expand=4)
    assert sum(p.numel() for p in mixer.parameters()) == 232_960
    block = Block(128, d_state=16, expand=4)
    assert sum(p.numel() for p in block.parameters()) == 232_960 + 128


def test_block_state_dict_keys_and_shapes():
    block = Block(128, d_state=16, expand=4)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == SPMAMBA_BLOCK_SHAPES


def test_bimamba_loads_spmamba_reference_weights(golden):
    """The reference SPMamba's BMamba weights load strictly."""
    state = golden("spmamba_8k_L2_state_dict")
    prefix = "blocks.0.intra_mamba."
    sub = {
        k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)
    }
    bimamba = BiMamba(128, d_state=16, expand=4)
    expected = {
        f"{direction}_blocks.0.{key}": shape
        for direction in ("forward", "backward")
        for key, shape in SPMAMBA_BLOCK_SHAPES.items()
    }
    assert {
        k: tuple(v.shape) for k, v in bimamba.state_dict().items()
    } == expected
    bimamba.load_state_dict(sub, strict=True)
    for key, value in sub.items():
        assert torch.equal(bimamba.state_dict()[key], value)


def test_mamba_initialisation_follows_mamba_ssm():
    dt_min, dt_max = 1e-3, 1e-1
    mixer = Mamba(32, d_state=8, expand=2, dt_min=dt_min, dt_max=dt_max)
    d_inner = 64
    assert mixer.dt_rank == math.ceil(32 / 16)
    expected_A_log = torch.log(torch.arange(1, 9.0)).repeat(d_inner, 1)
    assert mixer.A_log.dtype == torch.float32
    assert torch.equal(mixer.A_log, expected_A_log)
    assert torch.equal(mixer.D, torch.ones(d_inner))
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    assert mixer.dt_proj.bias._no_reinit
    dt = F.softplus(mixer.dt_proj.bias)  # the initial step sizes
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    assert mixer.dt_proj.weight.abs().max() <= mixer.dt_rank**-0.5
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None
    constant = Mamba(32, d_state=8, dt_init="constant", dt_scale=2.0)
    assert torch.all(constant.dt_proj.weight == 2.0 * constant.dt_rank**-0.5)


def test_bimamba_applies_spmamba_init_weights():
    n_layer = 2
    torch.manual_seed(0)
    bimamba = BiMamba(32, n_layer=n_layer, d_state=8, expand=2, bias=True)
    blocks = list(bimamba.forward_blocks) + list(bimamba.backward_blocks)
    bound = 1 / math.sqrt(64) / math.sqrt(n_layer)  # kaiming(a=sqrt 5)
    for block in blocks:
        mixer = block.mixer
        assert mixer.out_proj.weight.abs().max() <= bound
        assert mixer.out_proj.weight.abs().max() > 0.9 * bound  # redrawn
        assert torch.all(mixer.in_proj.bias == 0)
        assert torch.all(mixer.out_proj.bias == 0)
        assert torch.all(F.softplus(mixer.dt_proj.bias) >= 1e-3 * (1 - 1e-5))
    # the two directions have their own weights
    assert not torch.equal(
        blocks[0].mixer.in_proj.weight, blocks[n_layer].mixer.in_proj.weight
    )


def test_constructor_rejects_unknown_choices():
    with pytest.raises(ValueError, match="expected one of random, constant"):
        Mamba(16, dt_init="uniform")
    with pytest.raises(
        ValueError, match="expected one of auto, ref, torch, cuda"
    ):
        Block(16, backend="triton")


# ---------------------------------------------------------------------------
# Maths
# ---------------------------------------------------------------------------
def test_rmsnorm_matches_formula_in_float32():
    norm = perturb_(RMSNorm(16, eps=1e-5))
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    expected = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5)
    expected = expected * norm.weight.double()
    out = norm(x.float())
    assert out.dtype == torch.float32
    assert_close_to_peak(out.double(), expected, 1e-6, "rmsnorm")
    half = norm(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert_close_to_peak(half.double(), expected, 2**-7, "rmsnorm bf16")


@pytest.mark.parametrize(
    "backend, options",
    [
        ("torch", {}),
        ("ref", {}),
        ("torch", {"bias": True, "conv_bias": False, "dt_rank": 3}),
        ("torch", {"d_conv": 2, "expand": 3}),
    ],
)
def test_mamba_matches_mamba_ssm_slow_path(backend, options):
    torch.manual_seed(0)
    options = {"d_state": 4, "expand": 2, **options}
    mixer = perturb_(Mamba(16, backend=backend, **options))
    x = torch.randn(2, 23, 16)
    # float32: PyTorch's float64 depthwise Conv1d takes ~1 s per call on CPU
    expected = mamba_ssm_slow_path(mixer, x)
    assert_close_to_peak(mixer(x), expected, 1e-5, "mixer")


def test_mamba_step_by_step_equals_forward():
    torch.manual_seed(0)
    block = perturb_(Block(16, d_state=4, expand=2)).double()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    expected = block(x)
    state = block.allocate_state(2)
    assert state[0].shape == (2, 32, 4) and state[1].shape == (2, 32, 4)
    outputs = []
    for x_t in x.unbind(1):
        y_t, state = block.step(x_t, state)
        outputs.append(y_t)
    assert_close_to_peak(torch.stack(outputs, 1), expected, 1e-12, "steps")


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = perturb_(Block(16, d_state=4))
    x = torch.randn(2, 9, 16)
    assert torch.equal(block(x), x + block.mixer(block.norm(x)))


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)]
)
def test_bimamba_fused_directions_equal_separate_blocks(dtype, tol):
    torch.manual_seed(0)
    bimamba = perturb_(BiMamba(16, n_layer=2, d_state=4, expand=4)).to(dtype)
    x = torch.randn(2, 21, 16, dtype=dtype, requires_grad=True)

    def separate(x):
        forward_x, backward_x = x, x.flip(1)
        for block in bimamba.forward_blocks:
            forward_x = block(forward_x)
        for block in bimamba.backward_blocks:
            backward_x = block(backward_x)
        return torch.cat([forward_x, backward_x.flip(1)], dim=-1)

    params = [x, *bimamba.parameters()]
    fused = bimamba(x)
    expected = separate(x)
    assert fused.shape == (2, 21, 32)
    assert_close_to_peak(fused, expected, tol, "output")
    weights = torch.randn_like(expected)
    fused_grads = torch.autograd.grad((fused * weights).sum(), params)
    grads = torch.autograd.grad((expected * weights).sum(), params)
    for fused_grad, grad in zip(fused_grads, grads, strict=True):
        assert_close_to_peak(fused_grad, grad, tol, "gradient")


def test_mamba_cuda_backend_asks_for_install_on_cpu():
    mixer = Mamba(16, d_state=4, backend="cuda")
    hint = re.escape('pip install "speechbrain_s4[cuda]"')
    with pytest.raises((ImportError, ValueError), match=hint):
        mixer(torch.randn(1, 5, 16))


# ---------------------------------------------------------------------------
# Execution paths of the mixers (same maths, different memory traffic)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"bias": True, "d_conv": 2}])
def test_bimamba_inference_path_equals_autograd_path(options):
    """Without autograd the projections are written into strided column
    blocks instead of being concatenated; the outputs must not change."""
    torch.manual_seed(0)
    bimamba = perturb_(BiMamba(12, d_state=4, expand=2, **options)).double()
    x = torch.randn(3, 17, 12, dtype=torch.float64)
    with_autograd = bimamba(x.clone().requires_grad_())
    assert with_autograd.requires_grad
    with torch.no_grad():
        inference = bimamba(x)
    assert_close_to_peak(inference, with_autograd.detach(), 1e-12, "output")


@pytest.mark.parametrize("grad", [False, True])
def test_bimamba_batch_groups_equal_whole_batch(monkeypatch, grad):
    """A large batch runs in groups of sequences; the result is the same."""
    from speechbrain_s4.ssm import mamba

    torch.manual_seed(0)
    bimamba = perturb_(BiMamba(8, d_state=4, expand=2)).double()
    x = torch.randn(7, 11, 8, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        whole = bimamba(x)
        # 2 D L = 2 * 16 * 11 elements per sequence: groups of 2 sequences
        monkeypatch.setattr(mamba, "_GROUP_ELEMENTS", 2 * 2 * 16 * 11)
        grouped = bimamba(x)
    assert_close_to_peak(grouped, whole, 1e-12, "output")
