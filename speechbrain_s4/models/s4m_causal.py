"""Causal, streaming S4M: S4M-tiny made causal at every scale.

S4M (Chen et al., "A Neural State-Space Model Approach to Efficient Speech
Separation", Interspeech 2023; ``speechbrain_s4.models.s4m``) looks at the
whole signal: global layer norms, centred convolutions, a bidirectional S4
layer and average pooling over the whole length. This module keeps its
architecture (Figure 1: encoder, one multi-scale block unrolled
``num_blocks`` times, masks, joint transposed-conv decoder) and replaces
every non-causal operation:

=========================  ==========================================
S4M                        CausalS4M
=========================  ==========================================
encoder, padding K - s     frame j = samples [j s - (K - s), j s + s)
on both sides              (left padding only)
gLN (whole signal)         per-frame channel LayerNorm (cLN)
depthwise conv, "same"     left padding k - 1 (stride 1 or 2): output
padding                    i of a stride-2 conv sees inputs <= 2 i
adaptive average pooling   causal windows: coarse frame c of scale
to the coarsest scale      m is the mean of frames [c r - r + 1, c r]
                           of scale i, r = 2^(m - i), zeros before 0
nearest resampling         fine frame t reads coarse frame
                           floor(t / r)
bidirectional S4           unidirectional S4 (``S4(...,
                           bidirectional=False)``)
transposed-conv decoder    the same, read as overlap-add
=========================  ==========================================

**Causality at the frame level.** Frame c of scale m depends only on frames
<= c 2^m of the finest scale (the strided convolutions and the pooling
windows end there), and the nearest upsampling hands fine frame t the coarse
frame floor(t / r), which ends at floor(t / r) r <= t. Hence mask frame j
depends on encoder frames <= j only, at every scale, through all
``num_blocks`` passes. The only look-ahead is the encoder window: output
sample t is an overlap-add of frames j <= floor(t / s) + K / s - 1, the last
of which ends at input sample (floor(t / s) + K / s) s - 1. The algorithmic
latency is therefore ``latency_samples = K - 1`` samples (3.875 ms for the
4 ms window at 8 kHz): output sample t depends on no input sample after
t + K - 1, and some output depends on exactly that one.

**Normalisation.** Per-frame channel LayerNorm (cLN, as in the causal
Conv-TasNet, Luo & Mesgarani 2019) rather than a cumulative layer norm: it
is stateless, so a stream that runs for hours carries no running sums (a
cumulative norm's statistics freeze as the count grows, cannot follow level
changes, and lose precision in float32), and the output for a frame does not
depend on how long the stream has been running. Its eps (1e-8) is the one
of the gLN it replaces.

**Streaming** (:class:`CausalS4MStream`). Every causal operation takes an
optional ``state`` dict: ``None`` processes a whole signal from its start
(the offline ``forward``); a dict carries what the operation needs from the
past (the last k - 1 input frames of a convolution and how many it has
consumed, the last coarse frame of an upsampler, the S4 state) and is
updated in place. Offline and streaming therefore run the same code; only
the S4 layers differ, using their convolution view offline (FFT, for
training) and their recurrent view (``setup_step``, S4 paper eq. 2-3) when
streaming, and (for speed only) a depthwise filter over a long input is
summed by ``conv1d`` rather than explicitly. Scales advance at their own
rate: after n frames of the finest scale, scale m has exactly
ceil(n / 2^m), so a chunk of any length carries whole frames of every scale
it reaches and no block buffering is needed; input samples wait only for
their encoder hop of s samples. The shared
block runs ``num_blocks`` times per frame and each pass has its own state.

Shape legend: B batch, T samples, S speakers, N encoder basis, L frames,
C bottleneck channels, H hidden channels.

Authors
 * speechbrain_s4 contributors 2026
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_s4.cpu_kernels import pointwise_conv1d
from speechbrain_s4.layers import channel_layer_norm
from speechbrain_s4.models.arguments import records_arguments
from speechbrain_s4.models.s4m import FeedForwardBlock, encoder_geometry
from speechbrain_s4.ssm import S4, shared_kernels

logger = get_logger(__name__)

#: inputs up to this many frames are filtered by an explicit window sum
#: (faster than ``conv1d`` for stream chunks; see CausalDepthwiseConvNorm)
_SHORT_INPUT_FRAMES = 64

__all__ = [
    "CausalS4M",
    "CausalS4MStream",
    "CausalS4MEncoder",
    "CausalS4MDecoder",
    "CausalS4MMaskNet",
    "CausalMultiScaleS4Block",
    "CausalS4Block",
    "CausalLocalAttention",
    "CausalDepthwiseConvNorm",
    "ChannelLayerNorm",
    "causal_frames",
    "causal_avg_pool",
    "causal_upsample",
]


# ---------------------------------------------------------------------------
# State plumbing
# ---------------------------------------------------------------------------
def _child(state: dict | None, name: str) -> dict | None:
    """A child's state: None offline, its own dict (created empty) when
    streaming."""
    return None if state is None else state.setdefault(name, {})


def _frames_of(fn, x: torch.Tensor, channels: int) -> torch.Tensor:
    """Apply a frame-wise map to ``x`` [B, C, L] that may hold no frame.

    A coarse scale gets no new frame in most stream chunks, and
    ``conv1d`` rejects empty inputs.
    """
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[0], channels, 0)
    return fn(x)


def causal_frames(
    x: torch.Tensor, state: dict | None, kernel_size: int, stride: int
) -> torch.Tensor:
    """Input of a causal strided window op: carried history + new frames.

    A causal op with window ``kernel_size`` and ``stride`` gives output i
    from inputs [i stride - kernel_size + 1, i stride] (zeros before 0), so
    after n inputs it has produced ceil(n / stride) outputs. This returns
    the last ``kernel_size - 1`` inputs before ``x`` followed by ``x``,
    starting at the first window not produced yet; a valid (unpadded)
    convolution with that stride over it gives exactly the new outputs.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, n] new input frames.
    state : dict or None
        None: ``x`` is a whole signal from its start (zero history).
        A dict holds ``history`` [B, C, kernel_size - 1] and ``consumed``
        (inputs seen so far); it is updated in place.
    kernel_size : int
        Window length in frames.
    stride : int
        Window hop in frames.

    Returns
    -------
    torch.Tensor
        [B, C, n'] with n' < kernel_size when no new output is due.

    Example
    -------
    >>> state = {}
    >>> first = causal_frames(torch.ones(1, 1, 3), state, 5, 2)
    >>> print(first.shape, state["consumed"])
    torch.Size([1, 1, 7]) 3
    >>> causal_frames(torch.ones(1, 1, 1), state, 5, 2).shape  # input 3
    torch.Size([1, 1, 4])
    """
    B, C, n = x.shape
    if kernel_size == 1:  # no history to carry
        if state is not None:
            state["consumed"] = state.get("consumed", 0) + n
            return x[..., (-(state["consumed"] - n)) % stride :]
        return x
    if state is not None and "history" in state:
        history, consumed = state["history"], state["consumed"]
    else:
        history, consumed = x.new_zeros(B, C, kernel_size - 1), 0
    frames = torch.cat([history, x], dim=-1)  # [B, C, kernel_size - 1 + n]
    if state is not None:
        state["history"] = frames[..., frames.shape[-1] - kernel_size + 1 :]
        state["consumed"] = consumed + n
    # the next output is i = ceil(consumed / stride); its window starts
    # i stride - consumed frames into ``frames``
    return frames[..., (-consumed) % stride :]


def causal_avg_pool(
    x: torch.Tensor, factor: int, state: dict | None = None
) -> torch.Tensor:
    """Causal average pooling by ``factor`` (kernel = stride = factor).

    Output c is the mean of inputs [c factor - factor + 1, c factor], with
    zeros before the first input (left padding factor - 1): the pooled frame
    ends where the strided convolutions' coarse frame c ends.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, n] new frames.
    factor : int
        Down-sampling factor r.
    state : dict or None
        See :func:`causal_frames`.

    Returns
    -------
    torch.Tensor
        [B, C, n'] new pooled frames.

    Example
    -------
    >>> causal_avg_pool(torch.arange(1.0, 6.0).view(1, 1, 5), 2)
    tensor([[[0.5000, 2.5000, 4.5000]]])
    """
    frames = causal_frames(x, state, factor, factor)
    if frames.shape[-1] < factor:
        return x.new_zeros(x.shape[0], x.shape[1], 0)
    return F.avg_pool1d(frames, factor)


def causal_upsample(
    coarse: torch.Tensor,
    num_fine: int,
    factor: int,
    state: dict | None = None,
) -> torch.Tensor:
    """Nearest upsampling by ``factor``: fine frame t reads coarse frame
    floor(t / factor).

    With the causal alignment above, coarse frame c ends at fine frame
    c factor <= t, so the result is causal. When streaming, ``coarse`` holds
    the coarse frames that are new since the last call (ceil(n / factor) of
    them exist after n fine frames); the last earlier one is carried.

    Arguments
    ---------
    coarse : torch.Tensor
        [B, C, m] new coarse frames.
    num_fine : int
        Number of new fine frames to produce.
    factor : int
        Upsampling factor r.
    state : dict or None
        None: whole signals from their start. A dict holds ``last``
        [B, C, 1] (the latest coarse frame) and ``done`` (fine frames
        produced so far); it is updated in place.

    Returns
    -------
    torch.Tensor
        [B, C, num_fine]

    Example
    -------
    >>> causal_upsample(torch.arange(3.0).view(1, 1, 3), 5, 2)
    tensor([[[0., 0., 1., 1., 2.]]])
    """
    B, C, m = coarse.shape
    if state is not None and "last" in state:
        done = state["done"]
        frames = torch.cat([state["last"], coarse], dim=-1)  # [B, C, 1 + m]
        offset = -(-done // factor) - 1  # coarse index of frames[..., 0]
    else:
        frames, done, offset = coarse, 0, 0
    start = done - offset * factor  # fine frame ``done`` in the repeat
    assert start + num_fine <= frames.shape[-1] * factor, (
        "coarse frames missing: scales out of step"
    )
    if state is not None:
        state["last"] = frames[..., -1:]
        state["done"] = done + num_fine
    if factor > 1:  # each coarse frame repeated ``factor`` times
        frames = frames.unsqueeze(-1).expand(-1, -1, -1, factor)
        frames = frames.reshape(B, C, -1)  # [B, C, (offset + ...) factor]
    return frames[..., start : start + num_fine]  # [B, C, num_fine]


# ---------------------------------------------------------------------------
# Causal layers
# ---------------------------------------------------------------------------
class ChannelLayerNorm(nn.Module):
    """Per-frame layer norm over channels (cLN) for [B, C, L] features.

    ``y[:, :, t] = weight * (x_t - mean(x_t)) / sqrt(var(x_t) + eps) +
    bias`` with the statistics over the C channels of frame t only: causal
    and stateless (see the module docstring for why not a cumulative norm).
    Same parameters (``weight``, ``bias``) as ``GlobalLayerNorm``.

    Arguments
    ---------
    num_channels : int
        C.
    eps : float
        Added to the variance (1e-8, as the gLN it replaces).

    Example
    -------
    >>> ChannelLayerNorm(4)(torch.randn(2, 4, 10)).shape
    torch.Size([2, 4, 10])
    """

    def __init__(self, num_channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every frame of ``x`` [B, C, L]."""
        return channel_layer_norm(self, x)


class CausalDepthwiseConvNorm(nn.Module):
    """Causal depthwise convolution followed by a per-frame layer norm.

    Left padding ``kernel_size - 1`` (carried history when streaming):
    output i sees inputs [i stride - kernel_size + 1, i stride]. A stride-2
    layer maps n frames to ceil(n / 2), as S4M's "same" padding does, but
    aligned so that coarse frame i ends at fine frame 2 i.

    Arguments
    ---------
    channels : int
        C, input and output channels (one filter per channel).
    kernel_size : int
        Filter length in frames.
    stride : int
        1 keeps the rate, 2 halves it.
    bias : bool
        Whether the convolution has a bias.

    Example
    -------
    >>> down = CausalDepthwiseConvNorm(8, kernel_size=5, stride=2)
    >>> down(torch.randn(1, 8, 99)).shape
    torch.Size([1, 8, 50])
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int = 1, bias=True
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            stride=stride,
            groups=channels,
            bias=bias,
        )
        self.norm = ChannelLayerNorm(channels)

    def forward(
        self, x: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Filter and normalise new frames ``x`` [B, C, n] -> [B, C, n'].

        ``state``: None for a whole signal, a dict when streaming (see
        :func:`causal_frames`).
        """
        long_signal = state is None and x.shape[-1] > _SHORT_INPUT_FRAMES
        if long_signal and self.kernel_size > 1:
            # a whole signal: conv1d's own zero padding saves a copy; the
            # k - 1 padded outputs at the end are the non-causal ones
            num_out = -(-x.shape[-1] // self.stride)  # ceil(n / stride)
            filtered = F.conv1d(
                x,
                self.conv.weight,
                self.conv.bias,
                stride=self.stride,
                padding=self.kernel_size - 1,
                groups=x.shape[1],
            )
            return self.norm(filtered[..., :num_out])  # [B, C, n']
        frames = causal_frames(x, state, self.kernel_size, self.stride)
        if frames.shape[-1] < self.kernel_size:
            return x.new_zeros(x.shape[0], x.shape[1], 0)
        return self.norm(self._filter(frames))  # [B, C, n']

    def _filter(self, frames: torch.Tensor) -> torch.Tensor:
        """The valid depthwise convolution of ``frames`` [B, C, n].

        Computed three ways for speed only: PyTorch's grouped ``conv1d``
        costs milliseconds per call for 1-tap filters and is 2-4 times
        slower than a batched product of the windows for a few frames, which
        a stream filters hundreds of times per chunk; so 1-tap filters are a
        product, short inputs a window product, and long inputs (training)
        use ``conv1d``.
        """
        weight, bias = self.conv.weight[:, 0], self.conv.bias  # [C, k], [C]
        if self.kernel_size == 1:
            out = frames[..., :: self.stride] * weight  # [B, C, n']
        elif frames.shape[-1] <= _SHORT_INPUT_FRAMES:
            windows = frames.unfold(-1, self.kernel_size, self.stride)
            out = (windows @ weight.unsqueeze(-1)).squeeze(-1)  # [B, C, n']
        else:
            return self.conv(frames)  # [B, C, n']
        return out if bias is None else out + bias.unsqueeze(-1)


class CausalLocalAttention(nn.Module):
    """Causal local-attention fusion (S4M eq. 9-10, the public code's form).

    ``out = cConvNorm_local(x_local) * up(sigmoid(cConvNorm_act(x_global)))
    + up(cConvNorm_emb(x_global))``, with causal depthwise convolutions and
    the causal nearest upsampling ``up`` by ``factor`` (the global input is
    ``factor`` times coarser). Parameter names are those of
    ``speechbrain_s4.layers.LocalAttention``.

    Arguments
    ---------
    channels : int
        C of both inputs.
    kernel_size : int
        Depthwise filter length (1 for the fusion with the global feature,
        5 in the top-down path).
    factor : int
        Rate ratio between the local and the global input.

    Example
    -------
    >>> fuse = CausalLocalAttention(8, kernel_size=5, factor=2)
    >>> fuse(torch.randn(2, 8, 40), torch.randn(2, 8, 20)).shape
    torch.Size([2, 8, 40])
    """

    def __init__(self, channels: int, kernel_size: int, factor: int):
        super().__init__()
        self.factor = factor
        self.local_embedding = CausalDepthwiseConvNorm(
            channels, kernel_size, bias=False
        )
        self.global_embedding = CausalDepthwiseConvNorm(
            channels, kernel_size, bias=False
        )
        self.global_act = CausalDepthwiseConvNorm(
            channels, kernel_size, bias=False
        )

    def forward(
        self,
        x_local: torch.Tensor,
        x_global: torch.Tensor,
        state: dict | None = None,
    ) -> torch.Tensor:
        """Fuse new frames ``x_local`` [B, C, n] and ``x_global`` [B, C, m].

        ``state``: None for whole signals, a dict when streaming.
        """
        C, n = x_local.shape[1], x_local.shape[-1]
        gate = torch.sigmoid(
            self.global_act(x_global, _child(state, "global_act"))
        )  # rho, eq. 9: [B, C, m]
        shift = self.global_embedding(
            x_global, _child(state, "global_embedding")
        )  # tau, eq. 9: [B, C, m]
        local = self.local_embedding(x_local, _child(state, "local_embedding"))
        both = causal_upsample(
            torch.cat([gate, shift], dim=1),
            n,
            self.factor,
            _child(state, "upsample"),
        )  # [B, 2C, n]
        return torch.addcmul(both[:, C:], local, both[:, :C])  # [B, C, n]


class CausalS4Block(nn.Module):
    """Residual unidirectional S4 block: ``x + S4(LayerNorm(x))``.

    The causal counterpart of ``S4ResidualBlock``: the same pre-norm (over
    channels, per frame, eps 1e-5) and an S4 layer with one kernel over the
    past and present. Offline it convolves (FFT); streaming it steps the
    recurrence x_k = dA x_{k-1} + dB u_k, y_k = C x_k + D u_k (S4 paper
    eq. 2-3), which is the same function.

    Arguments
    ---------
    channels : int
        H.
    d_state : int
        S4 state size.

    Example
    -------
    >>> block = CausalS4Block(8, d_state=4)
    >>> block(torch.randn(2, 8, 30)).shape
    torch.Size([2, 8, 30])
    """

    def __init__(self, channels: int, d_state: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = S4(channels, d_state=d_state, bidirectional=False)

    def forward(
        self, x: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Apply to new frames ``x`` [B, H, n].

        ``state``: None convolves the whole signal; a dict holds the SSM
        state ``ssm`` (created at zero) and is updated in place; the layer
        needs ``setup_step()`` first (``CausalS4M.stream`` calls it).
        """
        normed = channel_layer_norm(self.norm, x)  # [B, H, n]
        if state is None:
            return self.layer(normed, residual=x)
        if x.shape[-1] == 0:
            return x
        layer = self.layer
        ssm = state.get("ssm")
        if ssm is None:
            ssm = layer.default_state(x.shape[0]).to(x.dtype)
        # The recurrence x_k = dA x_{k-1} + dB u_k, y_k = C x_k frame by
        # frame, then the rest of S4.step (D skip, GELU, 1x1 conv, GLU)
        # once for all n frames, as S4.forward applies it after its
        # convolution: one read of the 1x1 weights per chunk, not per frame.
        outputs = []
        for t in range(x.shape[-1]):
            y, ssm = layer.kernel.step(normed[..., t], ssm)  # [B, H]
            outputs.append(y)
        state["ssm"] = ssm
        return layer.output(torch.stack(outputs, dim=-1), normed, residual=x)


class CausalMultiScaleS4Block(nn.Module):
    """The shared multi-scale block of S4M (Figure 1-A), made causal.

    Bottom-up: 1x1 projection C -> H, cLN, PReLU; a causal depthwise conv
    gives F_0 and ``depth - 1`` causal stride-2 convs give F_1..F_{depth-1}.
    Global: F_m = sum_i CausalAvgPool_{2^(depth-1-i)}(F_i), a
    unidirectional S4 block and the feed-forward block give F'_m. Fusion:
    X_i = LA_i(F_i, F'_m) (eq. 9-10, kernel 1). Top-down from the coarsest
    scale: E = LA'_i(X_i, E) (kernel 5), each optionally followed by a
    causal S4 block. Output: 1x1 projection H -> C plus the block input.
    Parameter names follow ``MultiScaleS4Block`` (``topdown="fixed"``).

    Arguments
    ---------
    channels : int
        C, the bottleneck width (in and out).
    hidden_channels : int
        H, the width inside the block.
    depth : int
        Number of scales (>= 2).
    d_state : int
        S4 state size.
    decoder_s4 : bool
        Add a causal S4 block after each top-down fusion (S4M, not tiny).

    Example
    -------
    >>> block = CausalMultiScaleS4Block(4, 8, depth=3, d_state=4)
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
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"CausalS4M needs depth >= 2 scales, got {depth}")
        self.depth = depth
        self.hidden_channels = H = hidden_channels
        self.proj = nn.Conv1d(channels, H, 1)
        self.proj_norm = ChannelLayerNorm(H)
        self.proj_act = nn.PReLU()
        self.downsample = nn.ModuleList(
            [CausalDepthwiseConvNorm(H, 5, stride=1)]
            + [
                CausalDepthwiseConvNorm(H, 5, stride=2)
                for _ in range(depth - 1)
            ]
        )
        self.s4 = CausalS4Block(H, d_state)
        self.ff = FeedForwardBlock(H)
        self.fusion = nn.ModuleList(
            [
                CausalLocalAttention(H, 1, factor=2 ** (depth - 1 - i))
                for i in range(depth)
            ]
        )
        self.topdown_fusion = nn.ModuleList(
            [CausalLocalAttention(H, 5, factor=2) for _ in range(depth - 1)]
        )
        self.decoder_s4 = (
            nn.ModuleList([CausalS4Block(H, d_state) for _ in range(depth - 1)])
            if decoder_s4
            else None
        )
        self.res_conv = nn.Conv1d(H, channels, 1)

    def forward(
        self, x: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Apply the block to new frames ``x`` [B, C, n] (n >= 1).

        ``state``: None for a whole signal, a dict (one per pass) when
        streaming.
        """
        H = self.hidden_channels
        projected = self.proj_act(
            self.proj_norm(pointwise_conv1d(self.proj, x))
        )  # [B, H, n]
        # Bottom-up: F_0 .. F_{depth-1}, ceil(n / 2^i) frames each
        scales = [self.downsample[0](projected, _child(state, "downsample.0"))]
        for i in range(1, self.depth):
            scales.append(
                self.downsample[i](scales[-1], _child(state, f"downsample.{i}"))
            )

        # Global feature F_m: causal pooled sum at the coarsest rate
        global_f = scales[-1]  # [B, H, m]
        for i in range(self.depth - 1):
            global_f = global_f + causal_avg_pool(
                scales[i], 2 ** (self.depth - 1 - i), _child(state, f"pool.{i}")
            )
        global_f = self.s4(global_f, _child(state, "s4"))
        global_f = _frames_of(self.ff, global_f, H)  # F'_m [B, H, m]

        # Fuse every scale with F'_m (eq. 9-10)
        fused = [
            la(f, global_f, _child(state, f"fusion.{i}"))
            for i, (la, f) in enumerate(zip(self.fusion, scales, strict=True))
        ]

        # Top-down path, coarsest to finest (Figure 1-C)
        coarse = fused[-1]
        for i in range(self.depth - 2, -1, -1):
            coarse = self.topdown_fusion[i](
                fused[i], coarse, _child(state, f"topdown_fusion.{i}")
            )
            if self.decoder_s4 is not None:
                coarse = self.decoder_s4[i](
                    coarse, _child(state, f"decoder_s4.{i}")
                )
        return pointwise_conv1d(self.res_conv, coarse) + x  # [B, C, n]


class CausalS4MEncoder(nn.Module):
    """Causal waveform front end: Conv1d(1, N, K, stride s = K / 4).

    Frame j covers samples [j s - (K - s), j s + s) (K - s zeros before the
    signal), so it is complete as soon as sample j s + s - 1 has arrived.

    Arguments
    ---------
    kernel_size : int
        K, window in samples (a multiple of 4).
    num_basis : int
        N, number of filters.

    Example
    -------
    >>> encoder = CausalS4MEncoder(kernel_size=32, num_basis=17)
    >>> encoder(torch.randn(2, 8000)).shape
    torch.Size([2, 17, 1000])
    """

    def __init__(self, kernel_size: int, num_basis: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size // 4
        self.conv = nn.Conv1d(
            1, num_basis, kernel_size, stride=self.stride, bias=False
        )
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(
        self, samples: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Encode the complete frames of ``samples`` [B, n] -> [B, N, J].

        ``state``: None for a signal from its start (its last incomplete
        hop is dropped: pad it first); a dict keeps ``history``, the
        samples still needed by later frames.
        """
        overlap = self.kernel_size - self.stride
        if state is not None and "history" in state:
            history = state["history"]
        else:
            history = samples.new_zeros(samples.shape[0], overlap)
        samples = torch.cat([history, samples], dim=-1)  # [B, K - s + ...]
        num_frames = (samples.shape[-1] - overlap) // self.stride
        if state is not None:
            state["history"] = samples[:, num_frames * self.stride :]
        if num_frames == 0:
            return samples.new_zeros(
                samples.shape[0], self.conv.out_channels, 0
            )
        used = samples[:, : overlap + num_frames * self.stride]
        return self.conv(used.unsqueeze(1))  # [B, N, J]


class CausalS4MDecoder(nn.Module):
    """Joint transposed-conv decoder read as overlap-add.

    ConvTranspose1d(S N -> S, K, stride s) as in S4M: frame j adds K
    samples at [j s - (K - s), j s + s), aligned with the encoder window.
    Samples before j s - (K - s) are final once frame j is decoded, the
    K - s after it wait for the next frames (``tail``).

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
    >>> decoder = CausalS4MDecoder(kernel_size=32, num_basis=17, num_spks=2)
    >>> decoder(torch.randn(2, 3, 17, 1000)).shape
    torch.Size([3, 8000, 2])
    """

    #: the decoder takes every speaker at once ([S, B, N, L] -> [B, T', S])
    joint = True

    def __init__(self, kernel_size: int, num_basis: int, num_spks: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size // 4
        self.conv = nn.ConvTranspose1d(
            num_spks * num_basis,
            num_spks,
            kernel_size,
            stride=self.stride,
            bias=False,
        )
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(
        self, masked: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Decode ``masked`` [S, B, N, J] (J >= 1) -> samples [B, m, S].

        ``state``: None for a whole signal (every sample, J s of them, is
        returned); a dict keeps the overlap ``tail`` and the leading
        samples still to ``drop``, and only final samples are returned.
        """
        S, B, N, J = masked.shape
        overlap = self.kernel_size - self.stride
        # channel index = speaker * N + basis, the reference's layout
        stacked = masked.permute(1, 0, 2, 3).reshape(B, S * N, J)
        wav = self.conv(stacked)  # [B, S, (J - 1) s + K]
        if state is not None and "tail" in state:
            tail, drop = state["tail"], state["drop"]
        else:
            tail, drop = wav.new_zeros(B, S, overlap), overlap
        wav = torch.cat(
            [wav[..., :overlap] + tail, wav[..., overlap:]], dim=-1
        )  # sample 0 at time j0 s - (K - s)
        if state is not None:
            state["tail"] = wav[..., J * self.stride :]
            wav = wav[..., : J * self.stride]
        dropped = min(drop, wav.shape[-1])
        if state is not None:
            state["drop"] = drop - dropped
        return wav[..., dropped:].transpose(1, 2)  # [B, m, S]


class CausalS4MMaskNet(nn.Module):
    """Causal mask network: cLN, bottleneck, unrolled shared block, masks.

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
        Causal S4 blocks in the top-down path.

    Example
    -------
    >>> masknet = CausalS4MMaskNet(17, 2, 4, 8, num_blocks=2, depth=3,
    ...                            d_state=4)
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
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_spks = num_spks
        self.num_blocks = num_blocks
        C = bottleneck_channels
        self.norm = ChannelLayerNorm(num_basis)
        self.bottleneck = nn.Conv1d(num_basis, C, 1)
        self.block = CausalMultiScaleS4Block(
            C,
            hidden_channels,
            depth=depth,
            d_state=d_state,
            decoder_s4=decoder_s4,
        )
        # A-FRCNN unrolling: the next pass sees PReLU(DWConv(x0 + x))
        self.unroll = nn.Sequential(nn.Conv1d(C, C, 1, groups=C), nn.PReLU())
        self.mask = nn.Sequential(
            nn.PReLU(), nn.Conv1d(C, num_spks * num_basis, 1)
        )

    def forward(
        self, features: torch.Tensor, state: dict | None = None
    ) -> torch.Tensor:
        """Masks [S, B, N, n] for new encoder frames ``features`` [B, N, n].

        ``state``: None for a whole signal, a dict when streaming (each
        pass of the shared block keeps its own entry).
        """
        B, N, n = features.shape
        x0 = pointwise_conv1d(self.bottleneck, self.norm(features))  # [B, C, n]
        scale, act = self.unroll  # 1-tap depthwise conv: a product is faster
        gain, bias = scale.weight[:, 0], scale.bias.unsqueeze(-1)  # [C, 1]
        # the passes share weights, hence S4 kernels: compute each once
        with shared_kernels(self.block):
            x = self.block(x0, _child(state, "pass.0"))
            for p in range(1, self.num_blocks):
                x = self.block(
                    act((x0 + x) * gain + bias), _child(state, f"pass.{p}")
                )
        act, conv = self.mask
        masks = F.relu(pointwise_conv1d(conv, act(x)).view(B, self.num_spks, N, n))
        return masks.transpose(0, 1)  # [S, B, N, n]


# ---------------------------------------------------------------------------
# The separator and its stream
# ---------------------------------------------------------------------------
@records_arguments
class CausalS4M(nn.Module):
    """Causal S4M separator, offline and streaming: [B, T] -> [B, T, S].

    S4M-tiny (``decoder_s4=False``) or S4M made causal as described in the
    module docstring. ``forward`` processes whole signals (training,
    offline evaluation); :meth:`stream` returns a :class:`CausalS4MStream`
    that gives the same output chunk by chunk. Usable from YAML as
    ``!new:speechbrain_s4.models.s4m_causal.CausalS4M``.

    Arguments
    ---------
    sample_rate : int
        Sampling rate in Hz (the encoder window is in ms).
    num_spks : int
        S.
    kernel_ms : float
        Encoder window in ms (4: the paper's); the latency is this window
        minus one sample.
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
        Causal S4 blocks in the top-down path (S4M) or not (S4M-tiny).

    Example
    -------
    >>> model = CausalS4M(hidden_channels=16, bottleneck_channels=8,
    ...                   num_blocks=1)
    >>> model(torch.randn(2, 1000)).shape
    torch.Size([2, 1000, 2])
    >>> model.latency_ms
    3.875
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
    ):
        super().__init__()
        kernel_size, stride, num_basis = encoder_geometry(
            kernel_ms, sample_rate
        )
        self.sample_rate = int(sample_rate)
        self.num_spks = int(num_spks)
        self.hop_samples = stride
        self.encoder = CausalS4MEncoder(kernel_size, num_basis)
        self.masknet = CausalS4MMaskNet(
            num_basis,
            num_spks,
            bottleneck_channels=bottleneck_channels,
            hidden_channels=hidden_channels,
            num_blocks=num_blocks,
            depth=depth,
            d_state=d_state,
            decoder_s4=decoder_s4,
        )
        self.decoder = CausalS4MDecoder(kernel_size, num_basis, num_spks)

    @property
    def latency_samples(self) -> int:
        """Look-ahead in samples: output t depends on inputs <= t + K - 1."""
        return self.encoder.kernel_size - 1

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in milliseconds (``latency_samples``)."""
        return 1000.0 * self.latency_samples / self.sample_rate

    def forward(self, mix: torch.Tensor, lengths=None) -> torch.Tensor:
        """Separate whole signals ``mix`` [B, T] into estimates [B, T, S].

        ``lengths`` (relative, SpeechBrain's convention) is accepted and
        not needed: the model is causal, so the zero padding after an
        item cannot change its valid samples.
        """
        if mix.dim() != 2 or mix.shape[-1] == 0:
            raise ValueError(
                f"CausalS4M expects a mixture [B, T] with T >= 1, got shape "
                f"{tuple(mix.shape)}"
            )
        T = mix.shape[-1]
        # the signal is followed by silence, as in flush(): complete the
        # last hop and add the frames that still overlap sample T - 1
        padded = F.pad(mix, (0, self._end_padding(T)))  # [B, J s]
        features = self.encoder(padded)  # [B, N, J]
        masks = self.masknet(features)  # [S, B, N, J]
        estimates = self.decoder(features.unsqueeze(0) * masks)  # [B, J s, S]
        return estimates[:, :T]  # [B, T, S]

    def _end_padding(self, num_samples: int) -> int:
        """Zeros after ``num_samples`` samples so that every frame that
        overlaps them is computed: the rest of the last hop, then K - s.

        Output sample t sums frames up to floor(t / s) + K / s - 1; without
        them the last K - s outputs would miss part of their overlap-add,
        and an item would not give the same output alone as followed by
        zero padding in a batch.
        """
        overlap = self.encoder.kernel_size - self.hop_samples
        return -num_samples % self.hop_samples + overlap

    def stream(self) -> CausalS4MStream:
        """Start a stream (model in eval mode): see :class:`CausalS4MStream`.

        Example
        -------
        >>> model = CausalS4M(hidden_channels=16, bottleneck_channels=8,
        ...                   num_blocks=1).eval()
        >>> stream = model.stream()
        >>> stream.push(torch.randn(1, 80)).shape  # 10 ms at 8 kHz
        torch.Size([1, 56, 2])
        >>> stream.flush().shape
        torch.Size([1, 24, 2])
        """
        return CausalS4MStream(self)


class CausalS4MStream:
    """Chunk-by-chunk separation with a :class:`CausalS4M`.

    ``push(chunk)`` takes the next samples [B, n] (any n, ragged chunks
    welcome) and returns every output sample that has become final,
    [B, m, S]; ``flush()`` ends the signal (silence follows, exactly as
    ``forward`` pads it) and returns the rest. Concatenated, the outputs
    equal ``model(whole_signal)`` up to float rounding, and have its
    length. Output sample t is returned by the push that delivers input
    sample t + ``latency_samples`` or earlier (never later); the S4 layers
    run their recurrent view and every other layer carries its last frames,
    one state per pass of the shared block.

    The stream works under ``torch.no_grad`` with the parameters as they
    are when it starts (it calls ``setup_step`` on every S4 layer);
    changing them afterwards makes ``push`` raise.

    Arguments
    ---------
    model : CausalS4M
        The separator, in eval mode.

    Example
    -------
    >>> model = CausalS4M(hidden_channels=16, bottleneck_channels=8,
    ...                   num_blocks=1).eval()
    >>> stream = model.stream()
    >>> chunks = torch.randn(1, 500).split(128, dim=-1)
    >>> out = [stream.push(chunk) for chunk in chunks]
    >>> torch.cat(out + [stream.flush()], dim=1).shape
    torch.Size([1, 500, 2])
    """

    def __init__(self, model: CausalS4M):
        if model.training:
            raise RuntimeError(
                "CausalS4M.stream() needs the model in eval mode; call "
                "model.eval() first (streaming is inference only)"
            )
        self.model = model
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, S4):
                    module.setup_step()
        self._encoder_state: dict = {}
        self._masknet_state: dict = {}
        self._decoder_state: dict = {}
        self._batch_size = None
        self.received = 0  # input samples pushed
        self.emitted = 0  # output samples returned
        self.closed = False

    @property
    def latency_samples(self) -> int:
        """Look-ahead in samples (see ``CausalS4M.latency_samples``)."""
        return self.model.latency_samples

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in milliseconds."""
        return self.model.latency_ms

    def _empty(self, batch_size: int) -> torch.Tensor:
        weight = self.model.decoder.conv.weight
        return weight.new_zeros(batch_size, 0, self.model.num_spks)

    def _process(self, samples: torch.Tensor) -> torch.Tensor:
        """Encode, mask and decode whatever complete frames ``samples``
        finish; return the final output samples [B, m, S]."""
        model = self.model
        features = model.encoder(samples, self._encoder_state)  # [B, N, J]
        if features.shape[-1] == 0:
            return self._empty(samples.shape[0])
        masks = model.masknet(features, self._masknet_state)  # [S, B, N, J]
        return model.decoder(
            features.unsqueeze(0) * masks, self._decoder_state
        )  # [B, m, S]

    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed the next samples ``chunk`` [B, n]; return new output
        [B, m, S] (m may be 0)."""
        if self.closed:
            raise RuntimeError(
                "this stream was flushed; start a new one with model.stream()"
            )
        if chunk.dim() != 2:
            raise ValueError(
                f"push() expects a chunk [B, n] (batch, samples), got shape "
                f"{tuple(chunk.shape)}"
            )
        if self._batch_size is None:
            self._batch_size = chunk.shape[0]
        elif chunk.shape[0] != self._batch_size:
            raise ValueError(
                f"push() got a chunk of batch size {chunk.shape[0]}, the "
                f"stream started with {self._batch_size}; use one stream per "
                "batch layout"
            )
        weight = self.model.decoder.conv.weight
        chunk = chunk.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            out = self._process(chunk)
        self.received += chunk.shape[-1]
        self.emitted += out.shape[1]
        return out

    def flush(self) -> torch.Tensor:
        """End the signal; return the remaining output [B, m', S].

        Before any push, returns [0, 0, S]. The stream cannot be pushed to
        afterwards.
        """
        if self.closed:
            raise RuntimeError("flush() was already called on this stream")
        self.closed = True
        if self._batch_size is None:
            return self._empty(0)
        if self.received == 0:
            return self._empty(self._batch_size)
        # silence after the signal, exactly as forward() pads it; then
        # every output sample before ``received`` is final
        zeros = self.model.decoder.conv.weight.new_zeros(
            self._batch_size, self.model._end_padding(self.received)
        )
        with torch.no_grad():
            out = self._process(zeros)[:, : self.received - self.emitted]
        self.emitted += out.shape[1]
        return out
