"""S4M / S4M-tiny: fidelity to the reference, sizes, gradients, lengths."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4.convert import load_reference_checkpoint
from speechbrain_s4.models import build
from speechbrain_s4.models.s4m import S4M

GOLDEN_TOL = 1e-5  # of the reference peak (fixtures README)


def tiny_s4m(**kwargs):
    config = dict(bottleneck_channels=8, hidden_channels=16, num_blocks=2)
    config.update(kwargs)
    return S4M(**config)


def assert_close_to_peak(out, ref, tol=GOLDEN_TOL):
    err = (out - ref).abs().max().item()
    peak = ref.abs().max().item()
    assert err <= tol * peak, f"max|out-ref| = {err:.3e} > {tol} x {peak:.3e}"


@pytest.mark.parametrize(
    "conj_symmetric, key", [(True, "estimates_cauchy_conj"), (False, "estimates")]
)
def test_s4m_reference_checkpoint_reproduces_golden(
    golden, manifest, conj_symmetric, key
):
    kwargs = manifest["models"]["S4M_8k"]["kwargs"]
    model = load_reference_checkpoint(
        golden("s4m_8k_state_dict"),
        arch="s4m",
        conj_symmetric=conj_symmetric,
        **kwargs,
    ).eval()
    io = golden("s4m_8k_io")
    with torch.no_grad():
        out = model(io["mixture"])  # [1, T, 2]
    assert out.shape == (1, 16000, 2)
    assert_close_to_peak(out.transpose(1, 2), io[key])


@pytest.mark.parametrize(
    "conj_symmetric, key",
    [(True, "estimates_cauchy_conj"), (False, "estimates")],
)
def test_s4m_perturbed_tiny_reproduces_golden(golden, conj_symmetric, key):
    case = golden("perturbed_tiny_io")["s4m_tiny"]
    model = load_reference_checkpoint(
        case["state_dict"],
        arch="s4m",
        conj_symmetric=conj_symmetric,
        **case["kwargs"],
    ).eval()
    with torch.no_grad():
        out = model(case["mixture"])
    assert_close_to_peak(out.transpose(1, 2), case[key])


def test_s4m_reference_loader_rejects_mismatched_checkpoint(golden, manifest):
    state = dict(golden("s4m_8k_state_dict"))
    kwargs = manifest["models"]["S4M_8k"]["kwargs"]
    del state["sm.unet.res_conv.bias"]
    with pytest.raises(KeyError, match="sm.unet.res_conv.bias"):
        load_reference_checkpoint(state, arch="s4m", **kwargs)
    state = dict(golden("s4m_8k_state_dict"))
    with pytest.raises(ValueError, match="shape"):
        load_reference_checkpoint(state, arch="s4m", **{**kwargs, "in_channels": 256})


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, rate, expected, paper",
    [
        ("s4m-tiny", 8000, 1_828_967, 1.8e6),
        ("s4m-tiny", 16000, 1_843_015, 1.8e6),
        ("s4m", 8000, 3_533_927, 3.6e6),
        ("s4m", 16000, 3_547_975, 3.6e6),
    ],
)
def test_s4m_sizes_match_paper(name, rate, expected, paper):
    n = count(build(name, sample_rate=rate))
    assert n == expected
    assert abs(n - paper) <= 0.05 * paper


def test_s4m_reference_default_config_size(manifest):
    model = S4M(kernel_ms=21, topdown="faithful")
    assert count(model) == manifest["models"]["S4M_8k"]["n_params"]


@pytest.mark.parametrize("decoder_s4", [False, True])
def test_s4m_every_parameter_gets_gradient(decoder_s4):
    model = tiny_s4m(decoder_s4=decoder_s4)
    out = model(torch.randn(2, 1200))
    out.pow(2).mean().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert missing == []


def test_s4m_faithful_topdown_leaves_coarsest_fusion_unused():
    model = tiny_s4m(topdown="faithful")
    model(torch.randn(1, 1200)).pow(2).mean().backward()
    unused = sorted(
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    )
    assert unused and all(".fusion.3." in n for n in unused)


@pytest.mark.parametrize("length", [1, 7, 2000, 2001, 4095])
def test_s4m_output_length_equals_input_length(length):
    model = tiny_s4m().eval()
    with torch.no_grad():
        out = model(torch.randn(1, length))
    assert out.shape == (1, length, 2)
    assert torch.isfinite(out).all()


def test_s4m_quarter_second_at_16k():
    model = tiny_s4m(sample_rate=16000).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4000)).shape == (2, 4000, 2)


def test_s4m_padded_batch_matches_single_items():
    torch.manual_seed(1)
    model = tiny_s4m(decoder_s4=True).eval()
    lengths = [3001, 2200, 1337]
    items = [torch.randn(n) for n in lengths]
    batch = torch.zeros(len(items), max(lengths))
    for b, item in enumerate(items):
        batch[b, : len(item)] = item
    rel = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    with torch.no_grad():
        padded = model(batch, rel)
        for b, item in enumerate(items):
            alone = model(item[None])[0]
            err = (padded[b, : len(item)] - alone).abs().max()
            assert err <= 1e-4 * alone.abs().max(), (b, err)


def test_s4m_lobes_load_from_hyperpyyaml():
    yaml = """
    sample_rate: 8000
    kernel_size: 32
    num_basis: 17
    encoder: !new:speechbrain_s4.models.s4m.S4MEncoder
        kernel_size: !ref <kernel_size>
        num_basis: !ref <num_basis>
    masknet: !new:speechbrain_s4.models.s4m.S4MMaskNet
        num_basis: !ref <num_basis>
        num_spks: 2
        bottleneck_channels: 8
        hidden_channels: 16
        num_blocks: 2
    decoder: !new:speechbrain_s4.models.s4m.S4MDecoder
        kernel_size: !ref <kernel_size>
        num_basis: !ref <num_basis>
        num_spks: 2
    separator: !new:speechbrain_s4.models.s4m.S4M
        sample_rate: !ref <sample_rate>
        bottleneck_channels: 8
        hidden_channels: 16
        num_blocks: 2
    """
    hparams = load_hyperpyyaml(yaml)
    mix = torch.randn(2, 1000)
    features = hparams["encoder"](mix)
    masks = hparams["masknet"](features)
    assert masks.shape == (2, 2, 17, features.shape[-1])
    decoded = hparams["decoder"](features[None] * masks)
    assert decoded.shape[0] == 2 and decoded.shape[2] == 2
    assert decoded.shape[1] >= 1000
    assert hparams["separator"](mix).shape == (2, 1000, 2)


def test_build_rejects_unknown_name_listing_valid_ones():
    with pytest.raises(ValueError, match="s4m-tiny"):
        build("s4m-huge")


def test_s4m_shared_kernels_match_recomputed_gradients():
    """Sharing the S4 kernel across passes leaves outputs and grads as-is."""
    import contextlib

    import speechbrain_s4.models.s4m as s4m_module

    torch.manual_seed(3)
    model = tiny_s4m(decoder_s4=True)
    mix = torch.randn(2, 900)
    model(mix).pow(2).mean().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    original = s4m_module.shared_kernels
    # without sharing: every pass computes its own kernel
    s4m_module.shared_kernels = lambda module: contextlib.nullcontext()
    try:
        model(mix).pow(2).mean().backward()
    finally:
        s4m_module.shared_kernels = original
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, shared[name], rtol=1e-4, atol=1e-6)


def test_s4m_runs_under_bf16_autocast():
    """SpeechBrain's --precision bf16 autocasts; the S4 maths stays float32."""
    model = tiny_s4m()
    mix = torch.randn(1, 1600)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(mix)
    out.float().pow(2).mean().backward()
    with torch.no_grad():
        reference = model(mix)
    assert torch.isfinite(out).all()
    err = (out.float() - reference).abs().max() / reference.abs().max()
    assert err < 0.05  # bf16 has 8 bits of mantissa
    assert all(p.grad is not None for p in model.parameters())
