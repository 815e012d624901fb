"""S4M: state-space speech separation with a multi-scale encoder.

Chen et al., "A Neural State-Space Model Approach to Efficient Speech
Separation", Interspeech 2023. The code below follows the paper's Figure 1
and the public reference implementation (``JusperLee/S4M``, specified in
MODELS.md section 4):

* (A) a 1-D conv encoder (4 ms kernel, 1 ms stride) turns the waveform into
  features; a global layer norm and a 1x1 bottleneck feed the separator;
* the separator is ONE multi-scale block unrolled ``num_blocks`` times with
  shared weights (A-FRCNN style): x = block(x0), then
  x = block(PReLU(DWConv(x0 + x))) for the remaining passes;
* inside the block, depthwise stride-2 convolutions build ``depth`` scales
  F_0..F_3 (paper section 3.1), their average-pooled sum is the global
  feature F_m, which goes through (B) the residual S4 block and a
  feed-forward block; local-attention layers (eq. 9-10) fuse every scale
  with F'_m, then (C) the top-down decoder path merges the scales from the
  coarsest to the finest with local attention, optionally followed by an S4
  block at each scale (S4M; S4M-tiny has none);
* masks on the encoder features and a transposed-conv decoder give the
  waveforms.

Sizes (parameters, counted by the tests):

===========  =====================================  ==========  ==========
name         definition                             8 kHz       16 kHz
===========  =====================================  ==========  ==========
s4m-tiny     public code with a 4 ms encoder        1,828,967   1,843,015
s4m          s4m-tiny + an S4 block after each of   3,533,927   3,547,975
             the three top-down fusions
===========  =====================================  ==========  ==========

The paper reports 1.8 M and 3.6 M; its ablation (Table 3: 1.82/1.84/1.88 M
for state sizes 8/16/32) is reproduced exactly by the public code with a
4 ms encoder, which is why s4m-tiny is that configuration (MODELS.md 4.7-4.8).
The public code's own default (21 ms encoder, 1.924 M at 8 kHz) is
``S4M(kernel_ms=21)``; ``speechbrain_s4.convert`` loads its checkpoints.

Two behaviours of the reference are kept behind arguments:
``topdown="faithful"`` starts the top-down path from the second-coarsest
scale, as the public code does, so the coarsest fusion layer never
contributes (and gets no gradient); ``topdown="fixed"`` (default) starts from
the coarsest scale. ``conj_symmetric=False`` reproduces the reference S4
kernel computed on CPU without pykeops (see ``speechbrain_s4.ssm.S4``).

Shape legend: B batch, T samples, S speakers, N encoder basis, L frames,
C bottleneck channels, H hidden channels.

Authors
 * speechbrain_s4 contributors 2026
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_s4.cpu_kernels import pointwise_conv1d
from speechbrain_s4.layers import (
    DepthwiseConvNorm,
    GlobalLayerNorm,
    LocalAttention,
    adaptive_avg_pool,
    channel_layer_norm,
    depthwise_conv1d,
    frame_mask,
    global_norm_prelu,
)
from speechbrain_s4.models.arguments import records_arguments
from speechbrain_s4.models.masking import MaskingSeparator
from speechbrain_s4.ssm import S4, shared_kernels

__all__ = [
    "S4M",
    "S4MEncoder",
    "S4MMaskNet",
    "S4MDecoder",
    "MultiScaleS4Block",
    "S4ResidualBlock",
    "FeedForwardBlock",
    "encoder_geometry",
]

TOPDOWN_MODES = ("fixed", "faithful")


def encoder_geometry(kernel_ms: float, sample_rate: int):
    """Encoder kernel, stride and basis size for a kernel length in ms.

    K = kernel_ms * sample_rate / 1000 samples, stride K // 4 and
    K // 2 + 1 basis filters, as in the public code. K must be a multiple of
    4 so that the padded signal is a whole number of strides (otherwise the
    output length breaks, MODELS.md 4.1).

    Arguments
    ---------
    kernel_ms : float
        Encoder window in milliseconds (4 for the paper, 21 for the code).
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    tuple of int
        (kernel_size, stride, num_basis).

    Example
    -------
    >>> encoder_geometry(4, 8000)
    (32, 8, 17)
    """
    kernel_size = int(round(kernel_ms * sample_rate / 1000))
    if kernel_size < 4 or kernel_size % 4:
        raise ValueError(
            f"S4M needs an encoder kernel that is a positive multiple of 4 "
            f"samples; kernel_ms={kernel_ms} at {sample_rate} Hz gives "
            f"{kernel_size}. Choose kernel_ms so that "
            f"kernel_ms * sample_rate / 1000 is a multiple of 4 (e.g. 4 ms at "
            f"8 or 16 kHz)."
        )
    return kernel_size, kernel_size // 4, kernel_size // 2 + 1


class S4MEncoder(nn.Module):
    """Waveform front end: zero padding and a strided 1-D convolution.

    The mixture is padded so that the frames tile it exactly (``rest``
    zeros at the end, then ``K - stride`` zeros on both sides, as the
    reference does) and encoded by Conv1d(1, N, K, stride K // 4, no bias).
    The decoder drops the same leading ``K - stride`` samples.

    With ``frame_multiple`` m > 1, up to m - 1 more strides of zeros are
    appended so that the number of frames is a multiple of m: with
    m = 2^(depth - 1) every scale of the mask network is then an exact
    halving of the previous one, which turns its pooling and nearest
    up-sampling into reshapes (faster, and the same at every length). The
    reference does not do this (m = 1 when loading its checkpoints).

    Arguments
    ---------
    kernel_size : int
        K, window in samples (multiple of 4).
    num_basis : int
        N, number of filters.
    frame_multiple : int
        m, the frame count is padded to a multiple of it.

    Example
    -------
    >>> encoder = S4MEncoder(kernel_size=32, num_basis=17)
    >>> encoder(torch.randn(2, 8000)).shape
    torch.Size([2, 17, 1010])
    """

    def __init__(self, kernel_size: int, num_basis: int, frame_multiple=1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size // 4
        self.frame_multiple = frame_multiple
        self.conv = nn.Conv1d(
            1,
            num_basis,
            kernel_size,
            stride=self.stride,
            padding=kernel_size // 2,
            bias=False,
        )
        nn.init.xavier_uniform_(self.conv.weight)

    def _end_padding(self, length):
        """Zeros appended after ``length`` samples (int or tensor)."""
        K, stride = self.kernel_size, self.stride
        rest = K - (stride + length % K) % K
        frames = (length + rest + 2 * (K - stride)) // stride + 1
        extra = (-frames) % self.frame_multiple
        return rest + extra * stride + K - stride

    def pad(self, mix):
        """Pad [B, T] so that the strided frames cover it exactly."""
        K, stride = self.kernel_size, self.stride
        return F.pad(mix, (K - stride, self._end_padding(mix.shape[-1])))

    def forward(self, mix):
        """Encode ``mix`` [B, T] into features [B, N, L]."""
        return self.conv(self.pad(mix).unsqueeze(1))

    def frame_lengths(self, sample_lengths):
        """Frames [B] that an item of ``sample_lengths`` [B] samples has alone.

        In a zero-padded batch those are exactly the item's leading frames;
        later frames only see padding.
        """
        K, stride = self.kernel_size, self.stride
        padded = K - stride + sample_lengths + self._end_padding(sample_lengths)
        return padded // stride + 1


class S4MDecoder(nn.Module):
    """Joint transposed-conv decoder of all speakers' masked features.

    One ConvTranspose1d maps the S x N masked channels of every speaker to S
    waveforms (``groups=1``: each output sees every speaker's features, as in
    the reference), then the ``K - stride`` samples of leading padding are
    dropped; the caller trims the end to the input length.

    Arguments
    ---------
    kernel_size : int
        K, the encoder window.
    num_basis : int
        N, encoder filters per speaker.
    num_spks : int
        S.

    Example
    -------
    >>> decoder = S4MDecoder(kernel_size=32, num_basis=17, num_spks=2)
    >>> decoder(torch.randn(2, 3, 17, 1010)).shape
    torch.Size([3, 8048, 2])
    """

    #: the decoder takes every speaker at once ([S, B, N, L] -> [B, T', S])
    joint = True

    def __init__(self, kernel_size: int, num_basis: int, num_spks: int = 2):
        super().__init__()
        self.trim = kernel_size - kernel_size // 4
        self.conv = nn.ConvTranspose1d(
            num_spks * num_basis,
            num_spks,
            kernel_size,
            stride=kernel_size // 4,
            padding=kernel_size // 2,
            bias=False,
        )
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, masked):
        """Decode ``masked`` [S, B, N, L] to waveforms [B, T', S]."""
        S, B, N, L = masked.shape
        # channel index = speaker * N + basis, the reference's layout
        stacked = masked.permute(1, 0, 2, 3).reshape(B, S * N, L)
        wav = self.conv(stacked)  # [B, S, T']
        return wav[..., self.trim :].transpose(1, 2)


class S4ResidualBlock(nn.Module):
    """Residual S4 block of Figure 1-B: ``x + S4(LayerNorm(x))``.

    Pre-norm: LayerNorm over channels at each frame (eps 1e-5), then the
    bidirectional S4 layer (kernel, D skip, GELU, 1x1 conv and GLU).

    Arguments
    ---------
    channels : int
        H.
    d_state : int
        S4 state size ("S" in the paper's ablation; 16 is best).
    conj_symmetric : bool
        False reproduces the reference's CPU-only S4 kernel.

    Example
    -------
    >>> block = S4ResidualBlock(8, d_state=4)
    >>> block(torch.randn(2, 8, 30)).shape
    torch.Size([2, 8, 30])
    """

    def __init__(self, channels: int, d_state: int = 16, conj_symmetric=True):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = S4(
            channels,
            d_state=d_state,
            bidirectional=True,
            conj_symmetric=conj_symmetric,
        )

    def forward(self, x, mask=None):
        """Apply to ``x`` [B, H, L]; ``mask`` [B, 1, L] marks valid frames."""
        normed = channel_layer_norm(self.norm, x)
        if mask is None:
            return self.layer(normed, residual=x)
        # zero the padding before the two-sided convolution can see it
        return self.layer(normed * mask, residual=x) * mask


class FeedForwardBlock(nn.Module):
    """Residual point-wise feed-forward block: ``x + W2 GELU(W1 LN(x))``.

    Arguments
    ---------
    channels : int
        H.
    expand : int
        Hidden width factor (2 in S4M).
    dropout : float
        Dropout after the activation (0 in S4M).

    Example
    -------
    >>> FeedForwardBlock(8)(torch.randn(2, 8, 30)).shape
    torch.Size([2, 8, 30])
    """

    def __init__(self, channels: int, expand: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Conv1d(channels, expand * channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Conv1d(expand * channels, channels, 1)

    def forward(self, x, mask=None):
        """Apply to ``x`` [B, H, L]; ``mask`` [B, 1, L] marks valid frames."""
        normed = channel_layer_norm(self.norm, x)
        hidden = self.dropout(F.gelu(pointwise_conv1d(self.fc1, normed)))
        out = x + pointwise_conv1d(self.fc2, hidden)
        return out if mask is None else out * mask


class MultiScaleS4Block(nn.Module):
    """The shared multi-scale block of Figure 1-A (TDANet block with S4).

    Bottom-up: a 1x1 projection C -> H (+ gLN, PReLU), a stride-1 depthwise
    conv giving F_0 and ``depth - 1`` stride-2 depthwise convs giving
    F_1..F_{depth-1} (section 3.1; the paper says "dilation 2", the code
    strides). Global: F_m = sum_i AvgPool(F_i) at the coarsest length,
    then the S4 block and the feed-forward block give F'_m. Fusion:
    X_i = LA_i(F_i, F'_m) (eq. 9-10, kernel 1). Top-down: starting from the
    coarsest scale, E = LA'_i(X_i, E) (kernel 5) down to the finest scale,
    each optionally followed by an S4 block (S4M's decoder, Figure 1-C).
    Output: a 1x1 projection H -> C plus the block input.

    Arguments
    ---------
    channels : int
        C, the bottleneck width (in and out).
    hidden_channels : int
        H, the width inside the block.
    depth : int
        Number of scales.
    d_state : int
        S4 state size.
    decoder_s4 : bool
        Add an S4 block after each top-down fusion (S4M, not S4M-tiny).
    topdown : str
        "fixed" (default) or "faithful" (the reference skips the coarsest
        fused scale; only for loading original checkpoints).
    conj_symmetric : bool
        False reproduces the reference's CPU-only S4 kernel.

    Example
    -------
    >>> block = MultiScaleS4Block(4, 8, depth=3, d_state=4)
    >>> block(torch.randn(2, 4, 37)).shape
    torch.Size([2, 4, 37])
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        depth: int = 4,
        d_state: int = 16,
        decoder_s4: bool = False,
        topdown: str = "fixed",
        conj_symmetric: bool = True,
    ):
        super().__init__()
        if topdown not in TOPDOWN_MODES:
            raise ValueError(
                f"unknown topdown {topdown!r}; expected one of {TOPDOWN_MODES}"
            )
        if depth < 2:
            raise ValueError(f"S4M needs depth >= 2 scales, got {depth}")
        self.depth = depth
        self.topdown = topdown
        H = hidden_channels
        self.proj = nn.Conv1d(channels, H, 1)
        self.proj_norm = GlobalLayerNorm(H)
        self.proj_act = nn.PReLU()
        self.downsample = nn.ModuleList(
            [DepthwiseConvNorm(H, 5, stride=1)]
            + [DepthwiseConvNorm(H, 5, stride=2) for _ in range(depth - 1)]
        )
        self.s4 = S4ResidualBlock(H, d_state, conj_symmetric)
        self.ff = FeedForwardBlock(H)
        self.fusion = nn.ModuleList(
            [LocalAttention(H, kernel_size=1) for _ in range(depth)]
        )
        self.topdown_fusion = nn.ModuleList(
            [LocalAttention(H, kernel_size=5) for _ in range(depth - 1)]
        )
        self.decoder_s4 = (
            nn.ModuleList(
                [
                    S4ResidualBlock(H, d_state, conj_symmetric)
                    for _ in range(depth - 1)
                ]
            )
            if decoder_s4
            else None
        )
        self.res_conv = nn.Conv1d(H, channels, 1)

    def forward(self, x, lengths=None):
        """Apply the block to ``x`` [B, C, L].

        ``lengths`` ([B] valid frames) makes a padded batch give each item's
        stand-alone result; None means every frame is valid.
        """
        # Bottom-up: F_0 .. F_{depth-1}, lengths L, ceil(L/2), ...
        lens = [lengths]
        for _ in range(self.depth - 1):
            lens.append(None if lengths is None else (lens[-1] + 1) // 2)
        mask = frame_mask(lengths, x.shape[-1])
        projected = global_norm_prelu(
            self.proj_norm, self.proj_act, pointwise_conv1d(self.proj, x), mask
        )
        scales = [self.downsample[0](projected, mask)]  # [B, H, L]
        for down, n in zip(self.downsample[1:], lens[1:]):
            out_len = (scales[-1].shape[-1] + 1) // 2
            scales.append(down(scales[-1], frame_mask(n, out_len)))

        # Global feature F_m: pooled sum at the coarsest length (sec. 3.1)
        coarsest, coarse_lens = scales[-1].shape[-1], lens[-1]
        global_f = sum(
            adaptive_avg_pool(f, coarsest, n, coarse_lens)
            for f, n in zip(scales, lens)
        )
        coarse_mask = frame_mask(coarse_lens, coarsest)
        global_f = self.s4(global_f, coarse_mask)
        global_f = self.ff(global_f, coarse_mask)  # F'_m [B, H, L_{depth-1}]

        # Fuse every scale with F'_m (eq. 9-10)
        fused = [
            la(f, global_f, n, coarse_lens)
            for la, f, n in zip(self.fusion, scales, lens)
        ]

        # Top-down path, coarsest to finest (Figure 1-C)
        top = self.depth - 2
        # faithful: the reference's first step uses X_{top-1} (a finer scale,
        # nearest-downsampled) instead of X_{top+1}, so X_{depth-1} is unused
        first = top - 1 if self.topdown == "faithful" else self.depth - 1
        coarse, n_coarse = fused[first], lens[first]
        for i in range(top, -1, -1):
            coarse = self.topdown_fusion[i](fused[i], coarse, lens[i], n_coarse)
            n_coarse = lens[i]
            if self.decoder_s4 is not None:
                coarse = self.decoder_s4[i](coarse, frame_mask(n_coarse, coarse.shape[-1]))
        out = pointwise_conv1d(self.res_conv, coarse) + x
        return out if mask is None else out * mask


class S4MMaskNet(nn.Module):
    """Mask network: gLN, bottleneck, unrolled shared block, masks.

    Arguments
    ---------
    num_basis : int
        N, encoder filters.
    num_spks : int
        S.
    bottleneck_channels : int
        C (128).
    hidden_channels : int
        H (512).
    num_blocks : int
        Unrolled passes of the shared block (16).
    depth : int
        Scales inside the block (4).
    d_state : int
        S4 state size (16).
    decoder_s4 : bool
        S4 blocks in the top-down path (S4M) or not (S4M-tiny).
    topdown : str
        "fixed" or "faithful", see ``MultiScaleS4Block``.
    conj_symmetric : bool
        False reproduces the reference's CPU-only S4 kernel.

    Example
    -------
    >>> masknet = S4MMaskNet(17, 2, 4, 8, num_blocks=2, depth=3, d_state=4)
    >>> masknet(torch.randn(3, 17, 50)).shape
    torch.Size([2, 3, 17, 50])
    """

    def __init__(
        self,
        num_basis: int,
        num_spks: int = 2,
        bottleneck_channels: int = 128,
        hidden_channels: int = 512,
        num_blocks: int = 16,
        depth: int = 4,
        d_state: int = 16,
        decoder_s4: bool = False,
        topdown: str = "fixed",
        conj_symmetric: bool = True,
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_spks = num_spks
        self.num_blocks = num_blocks
        C = bottleneck_channels
        self.norm = GlobalLayerNorm(num_basis)
        self.bottleneck = nn.Conv1d(num_basis, C, 1)
        self.block = MultiScaleS4Block(
            C,
            hidden_channels,
            depth=depth,
            d_state=d_state,
            decoder_s4=decoder_s4,
            topdown=topdown,
            conj_symmetric=conj_symmetric,
        )
        # A-FRCNN unrolling: the next pass sees PReLU(DWConv(x0 + x))
        self.unroll = nn.Sequential(nn.Conv1d(C, C, 1, groups=C), nn.PReLU())
        self.mask = nn.Sequential(
            nn.PReLU(), nn.Conv1d(C, num_spks * num_basis, 1)
        )

    def forward(self, features, lengths=None):
        """Masks [S, B, N, L] for encoder ``features`` [B, N, L].

        ``lengths`` ([B] valid frames) is given for zero-padded batches.
        """
        B, N, L = features.shape
        mask = frame_mask(lengths, L)
        x0 = pointwise_conv1d(self.bottleneck, self.norm(features, mask))
        if mask is not None:
            x0 = x0 * mask
        scale, act = self.unroll
        # the passes share weights, hence S4 kernels: compute each once
        with shared_kernels(self.block):
            x = self.block(x0, lengths)
            for _ in range(self.num_blocks - 1):
                x = self.block(act(depthwise_conv1d(scale, x0 + x)), lengths)
        act, conv = self.mask
        masks = F.relu(pointwise_conv1d(conv, act(x)).view(B, self.num_spks, N, L))
        return masks.transpose(0, 1)  # [S, B, N, L]


@records_arguments
class S4M(MaskingSeparator):
    """The full S4M separator: mixture [B, T] -> estimates [B, T, S].

    ``decoder_s4=False`` is S4M-tiny (1.83 M parameters at 8 kHz),
    ``decoder_s4=True`` is S4M (3.53 M); see the module docstring for the
    sizes and where they come from. Usable from YAML as
    ``!new:speechbrain_s4.models.s4m.S4M``; its parts (``encoder``,
    ``masknet``, ``decoder``) are also usable on their own like SpeechBrain's
    Sepformer Encoder / Dual_Path_Model / Decoder.

    Arguments
    ---------
    sample_rate : int
        Sampling rate in Hz (the encoder window is in ms).
    num_spks : int
        S.
    kernel_ms : float
        Encoder window (4 ms: paper; 21 ms: public code's default).
    bottleneck_channels : int
        C (128).
    hidden_channels : int
        H (512).
    num_blocks : int
        Unrolled passes of the shared block (16).
    depth : int
        Scales (4).
    d_state : int
        S4 state size (16).
    decoder_s4 : bool
        S4 blocks in the top-down path: True for S4M, False for S4M-tiny.
    topdown : str
        "fixed" (default) or "faithful" (reference behaviour).
    conj_symmetric : bool
        True (default) computes the exact S4 kernel; False reproduces the
        reference run on CPU without pykeops.
    align_frames : bool
        True (default): pad the encoder frames to a multiple of
        2^(depth - 1) so that every scale is an exact halving (see
        ``S4MEncoder``); False: the reference's padding, for its checkpoints.

    Example
    -------
    >>> model = S4M(hidden_channels=16, bottleneck_channels=8, num_blocks=2)
    >>> model(torch.randn(2, 4000)).shape
    torch.Size([2, 4000, 2])
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        num_spks: int = 2,
        kernel_ms: float = 4.0,
        bottleneck_channels: int = 128,
        hidden_channels: int = 512,
        num_blocks: int = 16,
        depth: int = 4,
        d_state: int = 16,
        decoder_s4: bool = False,
        topdown: str = "fixed",
        conj_symmetric: bool = True,
        align_frames: bool = True,
    ):
        kernel_size, _, num_basis = encoder_geometry(kernel_ms, sample_rate)
        frame_multiple = 2 ** (depth - 1) if align_frames else 1
        super().__init__(
            encoder=S4MEncoder(kernel_size, num_basis, frame_multiple),
            masknet=S4MMaskNet(
                num_basis,
                num_spks,
                bottleneck_channels=bottleneck_channels,
                hidden_channels=hidden_channels,
                num_blocks=num_blocks,
                depth=depth,
                d_state=d_state,
                decoder_s4=decoder_s4,
                topdown=topdown,
                conj_symmetric=conj_symmetric,
            ),
            decoder=S4MDecoder(kernel_size, num_basis, num_spks),
            num_spks=num_spks,
            sample_rate=sample_rate,
        )
