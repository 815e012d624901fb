"""Small building blocks shared by the separation models.

One definition of each: the global layer norm, the depthwise conv + norm
unit, the local-attention fusion of TDANet/S4M and the resampling they use.

Inference on CPU (no autograd graph, no padding) runs the norm, conv + norm
and local-attention layers through fused C++ kernels
(``speechbrain_s4.cpu_kernels``), which compute the same function in fewer
passes over memory; training and padded batches use PyTorch's ops.

Padded batches: every block takes an optional ``lengths`` ([B] valid frames
per item). With lengths, statistics and resampling use each item's valid
frames only and padded frames are kept at zero, so an item gives the same
result in a padded batch as alone. Without lengths (``None``) every frame
is valid and the fast batched path runs.

Shape legend: B batch, C channels, L frames.

Authors
 * speechbrain_s4 contributors 2026
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_s4 import cpu_kernels
from speechbrain_s4.ssm import counting

__all__ = [
    "GlobalLayerNorm",
    "global_norm_prelu",
    "channel_layer_norm",
    "DepthwiseConvNorm",
    "LocalAttention",
    "depthwise_conv1d",
    "frame_mask",
    "resample_nearest",
    "adaptive_avg_pool",
]


def frame_mask(lengths, max_len: int):
    """Float mask [B, 1, L] of the valid frames, or None for no padding.

    Arguments
    ---------
    lengths : torch.Tensor or None
        [B] number of valid frames per item.
    max_len : int
        L, the padded length.

    Returns
    -------
    torch.Tensor or None

    Example
    -------
    >>> frame_mask(torch.tensor([2, 3]), 3)
    tensor([[[1., 1., 0.]],
    <BLANKLINE>
            [[1., 1., 1.]]])
    """
    if lengths is None:
        return None
    steps = torch.arange(max_len, device=lengths.device)
    return (steps < lengths[:, None]).unsqueeze(1).float()


def _per_item(fn, x, out_len, lengths_in, lengths_out):
    """Apply a length-dependent resampling to each item's valid frames."""
    if lengths_in is None:
        return fn(x, out_len)
    out = x.new_zeros(x.shape[0], x.shape[1], out_len)
    for b, (n_in, n_out) in enumerate(
        zip(lengths_in.tolist(), lengths_out.tolist())
    ):
        out[b, :, :n_out] = fn(x[b : b + 1, :, :n_in], n_out)[0]
    return out


class GlobalLayerNorm(nn.Module):
    """Global layer norm (gLN, Conv-TasNet): one mean and variance per item.

    Statistics are taken jointly over channels and time (biased variance),
    then a per-channel gain and bias are applied:
    ``y = weight * (x - mean) / sqrt(var + eps) + bias``. This equals
    ``GroupNorm(1, C)``, which is how it is computed (one fused kernel).

    Arguments
    ---------
    num_channels : int
        C, the channel count.
    eps : float
        Added to the variance; S4M/TDANet use 1e-8.

    Example
    -------
    >>> norm = GlobalLayerNorm(4)
    >>> norm(torch.randn(2, 4, 10)).shape
    torch.Size([2, 4, 10])
    """

    def __init__(self, num_channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x, mask=None):
        """Normalise ``x`` [B, C, L]; ``mask`` [B, 1, L] marks valid frames."""
        if mask is None:
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        count = mask.sum(dim=(1, 2), keepdim=True) * x.shape[1]
        mean = (x * mask).sum(dim=(1, 2), keepdim=True) / count
        centred = (x - mean) * mask
        var = centred.pow(2).sum(dim=(1, 2), keepdim=True) / count
        normed = centred / torch.sqrt(var + self.eps)
        return (normed * self.weight[:, None] + self.bias[:, None]) * mask


def global_norm_prelu(norm: GlobalLayerNorm, act: nn.PReLU, x, mask=None):
    """``act(norm(x, mask))``, fused into one kernel for CPU inference.

    Arguments
    ---------
    norm : GlobalLayerNorm
    act : nn.PReLU
    x : torch.Tensor
        [B, C, L].
    mask : torch.Tensor, optional
        [B, 1, L] valid frames.

    Returns
    -------
    torch.Tensor
        [B, C, L].

    Example
    -------
    >>> norm, act = GlobalLayerNorm(4), nn.PReLU()
    >>> global_norm_prelu(norm, act, torch.randn(2, 4, 10)).shape
    torch.Size([2, 4, 10])
    """
    if mask is None and cpu_kernels.usable(x, norm.weight, act.weight):
        return cpu_kernels.conv_norm(
            x, None, None, 1, 0, norm.weight, norm.bias, norm.eps, act.weight
        )
    return act(norm(x, mask))


def channel_layer_norm(norm: nn.Module, x):
    """A LayerNorm over C (``norm``) at every frame of ``x`` [B, C, L].

    PyTorch's LayerNorm wants channels last; the C++ kernel of CPU
    inference reads channels-first tensors as they are.

    Arguments
    ---------
    norm : nn.Module
        Its ``weight`` and ``bias`` ([C] or None) and ``eps``: an
        ``nn.LayerNorm`` over (C,) or the causal model's
        ``ChannelLayerNorm``.
    x : torch.Tensor
        [B, C, L].

    Returns
    -------
    torch.Tensor
        [B, C, L].

    Example
    -------
    >>> channel_layer_norm(nn.LayerNorm(4), torch.randn(2, 4, 10)).shape
    torch.Size([2, 4, 10])
    """
    weight, bias = norm.weight, norm.bias
    if weight is not None and bias is not None and cpu_kernels.usable(x, weight):
        return cpu_kernels.channel_layer_norm(x, weight, bias, norm.eps)
    normed = F.layer_norm(x.transpose(1, 2), x.shape[1:2], weight, bias, norm.eps)
    return normed.transpose(1, 2)  # [B, C, L]


class DepthwiseConvNorm(nn.Module):
    """Depthwise 1-D convolution followed by a global layer norm.

    The unit of S4M's multi-scale encoder (stride 2 down-sampling) and of
    its local-attention layers (stride 1, no bias). "Same" padding of
    ``(kernel_size - 1) // 2``, so a stride-2 layer maps L to ceil(L / 2)
    frames for odd kernels.

    Arguments
    ---------
    channels : int
        C, input and output channels (one filter per channel).
    kernel_size : int
        Filter length in frames.
    stride : int
        1 keeps the length, 2 halves it.
    bias : bool
        Whether the convolution has a bias.

    Example
    -------
    >>> down = DepthwiseConvNorm(8, kernel_size=5, stride=2)
    >>> down(torch.randn(1, 8, 99)).shape
    torch.Size([1, 8, 50])
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int = 1, bias=True
    ):
        super().__init__()
        self.conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=channels,
            bias=bias,
        )
        self.norm = GlobalLayerNorm(channels)

    def forward(self, x, mask=None):
        """Filter and normalise ``x`` [B, C, L] (zero on padded frames).

        ``mask`` marks the valid frames of the OUTPUT.
        """
        conv, norm = self.conv, self.norm
        if mask is None and cpu_kernels.usable(x, conv.weight, norm.weight):
            (k,), (stride,), (pad,) = conv.kernel_size, conv.stride, conv.padding
            out = cpu_kernels.conv_norm(
                x, conv.weight[:, 0], conv.bias, stride, pad,
                norm.weight, norm.bias, norm.eps,
            )
            if counting.active():  # no operation counter sees the kernel
                counting.note("conv", out.numel() * k)
            return out
        return norm(depthwise_conv1d(conv, x), mask)


def depthwise_conv1d(conv: nn.Conv1d, x):
    """Run a depthwise ``nn.Conv1d`` on ``x`` [B, C, L], fast on CPU.

    PyTorch's CPU convolution is slow for depthwise filters: a kernel of 1
    falls back to one small convolution per channel (thousands of calls per
    S4M forward) and oneDNN's stride-1 depthwise kernel is slower than
    summing shifted copies. Those two cases are therefore computed as a
    per-channel scale and as a sum of ``kernel_size`` shifted products; other
    strides use the library convolution. The results are the same up to
    float round-off. With autograd on, stride-1 kernels longer than 1 use the
    library convolution, whose backward is faster.

    Arguments
    ---------
    conv : nn.Conv1d
        A depthwise convolution (``groups == in_channels == out_channels``)
        with zero padding.
    x : torch.Tensor
        [B, C, L].

    Returns
    -------
    torch.Tensor
        [B, C, L_out].

    Example
    -------
    >>> conv = nn.Conv1d(4, 4, 5, padding=2, groups=4)
    >>> x = torch.randn(2, 4, 9)
    >>> torch.allclose(depthwise_conv1d(conv, x), conv(x), atol=1e-6)
    True
    """
    (k,), (stride,), (pad,) = conv.kernel_size, conv.stride, conv.padding
    if k == 1 and stride == 1:
        if counting.active():
            counting.note("conv", x.numel())
        out = x * conv.weight[:, 0]  # [B, C, L]
        return out if conv.bias is None else out + conv.bias[:, None]
    if stride != 1 or x.device.type != "cpu" or torch.is_grad_enabled():
        # the shifted sum's backward (k slices, k products) is slower than
        # the library's; it only pays off for inference
        return conv(x)
    weight = conv.weight[:, 0]  # [C, k]
    length = x.shape[-1] + 2 * pad - k + 1
    if counting.active():  # no operation counter sees the shifted sums
        counting.note("conv", x.shape[0] * x.shape[1] * length * k)
    padded = F.pad(x, (pad, pad)) if pad else x
    out = padded[..., :length] * weight[:, :1]  # [B, C, L_out]
    for j in range(1, k):
        out = torch.addcmul(out, padded[..., j : j + length], weight[:, j : j + 1])
    return out if conv.bias is None else out + conv.bias[:, None]


def resample_nearest(x, length: int, lengths_in=None, lengths_out=None):
    """Nearest-neighbour resampling along time to ``length`` frames.

    PyTorch's legacy "nearest" rule (source frame ``floor(j * L_in / L_out)``)
    which both references use, for up- and down-sampling alike.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, L_in].
    length : int
        L_out.
    lengths_in, lengths_out : torch.Tensor, optional
        [B] valid frames of each item before and after; when given, each
        item's valid part is resampled on its own.

    Returns
    -------
    torch.Tensor
        [B, C, L_out].

    Example
    -------
    >>> resample_nearest(torch.arange(3.0).view(1, 1, 3), 6)
    tensor([[[0., 0., 1., 1., 2., 2.]]])
    """
    return _per_item(_nearest, x, length, lengths_in, lengths_out)


def _nearest(x, length):
    if x.shape[-1] == length:
        return x
    if length % x.shape[-1] == 0:  # exact factor: a broadcast copy is faster
        ratio = length // x.shape[-1]
        return x.unsqueeze(-1).expand(*x.shape, ratio).flatten(-2)
    return F.interpolate(x, size=length, mode="nearest")


def _avg_pool(x, length):
    if x.shape[-1] == length:
        return x
    if x.shape[-1] % length == 0:  # exact factor: PyTorch's windows tile
        if cpu_kernels.usable(x):  # one pass; torch's reduction is 3x slower
            return cpu_kernels.avg_pool(x, length)
        ratio = x.shape[-1] // length
        return x.unflatten(-1, (length, ratio)).mean(-1)
    return F.adaptive_avg_pool1d(x, length)


def adaptive_avg_pool(x, length: int, lengths_in=None, lengths_out=None):
    """Adaptive average pooling along time to ``length`` frames.

    PyTorch's windows ``[floor(j L_in / L_out), ceil((j + 1) L_in / L_out))``.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, L_in].
    length : int
        L_out.
    lengths_in, lengths_out : torch.Tensor, optional
        [B] valid frames of each item before and after pooling.

    Returns
    -------
    torch.Tensor
        [B, C, L_out].

    Example
    -------
    >>> adaptive_avg_pool(torch.arange(4.0).view(1, 1, 4), 2)
    tensor([[[0.5000, 2.5000]]])
    """
    return _per_item(_avg_pool, x, length, lengths_in, lengths_out)


class LocalAttention(nn.Module):
    """Local-attention fusion of a local and a global feature (S4M eq. 9-10).

    ``out = ConvNorm_local(x_local) * sigmoid(ConvNorm_act(x_global))
    + ConvNorm_emb(x_global)``, where the two global terms are resampled
    (nearest) to the local length after their convolutions. The sigmoid term
    is the gate rho and the additive term is tau of the paper; as in the
    public code, they are produced by depthwise convolutions of the global
    input instead of separate parameters, and the local input is filtered
    too.

    Arguments
    ---------
    channels : int
        C of both inputs.
    kernel_size : int
        Depthwise filter length (1 for the fusion with the global feature,
        5 in the top-down path).

    Example
    -------
    >>> fuse = LocalAttention(8, kernel_size=5)
    >>> fuse(torch.randn(2, 8, 40), torch.randn(2, 8, 20)).shape
    torch.Size([2, 8, 40])
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.local_embedding = DepthwiseConvNorm(
            channels, kernel_size, bias=False
        )
        self.global_embedding = DepthwiseConvNorm(
            channels, kernel_size, bias=False
        )
        self.global_act = DepthwiseConvNorm(channels, kernel_size, bias=False)

    def forward(self, x_local, x_global, lengths_local=None, lengths_global=None):
        """Fuse ``x_local`` [B, C, L_l] with ``x_global`` [B, C, L_g].

        ``lengths_local`` / ``lengths_global`` ([B] valid frames) are given
        for padded batches (both or neither).
        """
        length, global_length = x_local.shape[-1], x_global.shape[-1]
        if (
            lengths_local is None
            and lengths_global is None
            and length % global_length == 0
            and self._fusable(x_local)
        ):
            return self._fused(x_local, x_global)
        mask_l = frame_mask(lengths_local, length)
        mask_g = frame_mask(lengths_global, global_length)
        gate = torch.sigmoid(self.global_act(x_global, mask_g))  # rho, eq. 9
        shift = self.global_embedding(x_global, mask_g)  # tau, eq. 9
        local = self.local_embedding(x_local, mask_l)
        if lengths_local is None and length % global_length == 0:
            # exact up-sampling factor: broadcast instead of materialising
            # the up-sampled gate and shift (the hot path of S4M)
            ratio = length // global_length
            out = torch.addcmul(
                shift.unsqueeze(-1),
                local.unflatten(-1, (global_length, ratio)),
                gate.unsqueeze(-1),
            )  # [B, C, L_g, ratio]
            return out.flatten(-2)
        lens = (lengths_global, lengths_local)
        # padded frames stay zero: local is zero there and so is the
        # per-item resampled shift
        return local * resample_nearest(gate, length, *lens) + resample_nearest(
            shift, length, *lens
        )

    def _terms(self):
        return (self.local_embedding, self.global_act, self.global_embedding)

    def _fusable(self, x):
        """The kernel's assumptions (length-preserving filters, no filter
        biases, one epsilon) and what ``cpu_kernels.usable`` asks.

        The parameters are checked through the first filter: a module's
        parameters share a dtype and device unless set one by one.
        """
        units = self._terms()
        first = units[0].conv
        if any(
            u.conv.bias is not None
            or u.conv.kernel_size[0] % 2 == 0
            or u.conv.stride != (1,)
            or u.conv.kernel_size != first.kernel_size
            or u.norm.eps != units[0].norm.eps
            for u in units
        ):
            return False
        return cpu_kernels.usable(x, first.weight)

    def _fused(self, x_local, x_global):
        """The whole layer in one C++ kernel (CPU inference, no padding)."""
        filters = [
            (unit.conv.weight[:, 0], unit.norm.weight, unit.norm.bias)
            for unit in self._terms()
        ]
        conv = self.local_embedding.conv
        (k,), (pad,) = conv.kernel_size, conv.padding
        if counting.active():  # no operation counter sees the kernel
            counting.note("conv", (x_local.numel() + 2 * x_global.numel()) * k)
        return cpu_kernels.local_attention(
            x_local, x_global, *filters, pad, self.local_embedding.norm.eps
        )
