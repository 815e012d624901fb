"""MaskingSeparator: the encoder -> mask -> decoder template.

Checked against the arithmetic SpeechBrain's WSJ0Mix recipe writes inline in
``compute_forward`` (stack the encoded mixture, multiply by the masks, decode
each speaker, pad or trim), for per-speaker decoders and for a joint decoder.
"""

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.conv_tasnet import MaskNet
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)
from torch import nn

from speechbrain_s4.models.masking import MaskingSeparator, fit_length


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (no contention on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe_forward(encoder, masknet, decoder, mix, num_spks):
    """SpeechBrain's recipe compute_forward, written out as the reference."""
    mix_w = encoder(mix)
    est_mask = masknet(mix_w)
    mix_w = torch.stack([mix_w] * num_spks)
    sep_h = mix_w * est_mask
    est_source = torch.cat(
        [decoder(sep_h[i]).unsqueeze(-1) for i in range(num_spks)], dim=-1
    )
    T_origin, T_est = mix.size(1), est_source.size(1)
    if T_origin > T_est:
        return F.pad(est_source, (0, 0, 0, T_origin - T_est))
    return est_source[:, :T_origin, :]


def tiny_sepformer(num_spks):
    def block():
        return SBTransformerBlock(
            num_layers=1,
            d_model=8,
            nhead=2,
            d_ffn=16,
            dropout=0,
            use_positional_encoding=True,
            norm_before=True,
        )

    return (
        Encoder(kernel_size=16, out_channels=8),
        Dual_Path_Model(
            num_spks=num_spks,
            in_channels=8,
            out_channels=8,
            num_layers=1,
            K=10,
            intra_model=block(),
            inter_model=block(),
            norm="ln",
            linear_layer_after_inter_intra=False,
            skip_around_intra=True,
        ),
        Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8),
    )


def tiny_convtasnet(num_spks):
    return (
        Encoder(kernel_size=16, out_channels=8),
        MaskNet(N=8, B=8, H=16, P=3, X=2, R=1, C=num_spks, norm_type="gLN"),
        Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8),
    )


@pytest.mark.parametrize("build", [tiny_sepformer, tiny_convtasnet])
@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("length", [1001, 1000, 203])
def test_masking_separator_matches_recipe_forward(build, num_spks, length):
    encoder, masknet, decoder = build(num_spks)
    separator = MaskingSeparator(
        encoder, masknet, decoder, num_spks=num_spks, sample_rate=8000
    ).eval()
    mix = torch.randn(2, length, requires_grad=True)
    estimates = separator(mix)
    assert estimates.shape == (2, length, num_spks)
    expected = recipe_forward(encoder, masknet, decoder, mix, num_spks)
    torch.testing.assert_close(estimates, expected, rtol=0, atol=0)

    # gradients reach the input and every parameter, as in the recipe
    weights = torch.randn_like(estimates)
    grads = torch.autograd.grad(
        (estimates * weights).sum(), [mix, *separator.parameters()]
    )
    grads_ref = torch.autograd.grad(
        (expected * weights).sum(), [mix, *separator.parameters()]
    )
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref)
    assert separator.num_spks == num_spks and separator.sample_rate == 8000


def test_masking_separator_batch_of_one_keeps_its_axes():
    # SpeechBrain's Decoder squeezes; the template must still return [1, T, S]
    separator = MaskingSeparator(*tiny_convtasnet(2), 2, sample_rate=8000)
    assert separator(torch.randn(1, 333)).shape == (1, 333, 2)


class JointDecoder(nn.Module):
    """All speakers at once: S*N channels -> S waveforms, like S4M's decoder."""

    joint = True

    def __init__(self, num_basis, num_spks, kernel_size=16):
        super().__init__()
        self.conv = nn.ConvTranspose1d(
            num_spks * num_basis, num_spks, kernel_size, stride=kernel_size // 2
        )

    def forward(self, masked):  # [S, B, N, L] -> [B, T', S]
        S, B, N, L = masked.shape
        stacked = masked.permute(1, 0, 2, 3).reshape(B, S * N, L)
        return self.conv(stacked).transpose(1, 2)


def test_masking_separator_joint_decoder_sees_every_speaker():
    encoder, masknet, _ = tiny_convtasnet(2)
    decoder = JointDecoder(num_basis=8, num_spks=2)
    separator = MaskingSeparator(encoder, masknet, decoder, 2, 8000).eval()
    mix = torch.randn(3, 805)
    estimates = separator(mix)
    assert estimates.shape == (3, 805, 2)

    # reference: the same arithmetic written out by hand
    features = encoder(mix)
    masked = features.unsqueeze(0) * masknet(features)
    stacked = torch.cat([masked[0], masked[1]], dim=1)  # speaker-major
    decoded = decoder.conv(stacked).transpose(1, 2)
    expected = fit_length(decoded, 805)
    torch.testing.assert_close(estimates, expected, rtol=0, atol=0)

    # a joint decoder mixes speakers: zeroing speaker 2's masked features
    # changes speaker 1's estimate, which a per-speaker decoder never does
    masked_only_first = masked.clone()
    masked_only_first[1] = 0
    alone = fit_length(decoder(masked_only_first), 805)[..., 0]
    assert not torch.allclose(alone, estimates[..., 0], atol=1e-4)


def test_fit_length_pads_with_zeros_and_trims():
    decoded = torch.arange(12.0).reshape(1, 6, 2)
    padded = fit_length(decoded, 8)
    torch.testing.assert_close(padded[:, :6], decoded)
    assert torch.count_nonzero(padded[:, 6:]) == 0
    torch.testing.assert_close(fit_length(decoded, 4), decoded[:, :4])


def test_masking_separator_rejects_wrong_number_of_masks():
    encoder, masknet, decoder = tiny_convtasnet(3)
    separator = MaskingSeparator(encoder, masknet, decoder, 2, 8000)
    with pytest.raises(ValueError, match=r"num_spks"):
        separator(torch.randn(1, 400))
