"""Fast CPU paths of the small layers S4M is made of.

S4M-tiny's matrix products are a fifth of its CPU time when its layers run
op by op in PyTorch; the rest goes to memory-bound layers over
full-resolution [B, C, L] tensors (depthwise convolutions, global layer
norms, the local-attention fusion of eq. 9-10), each reading and writing
its tensor several times. Two remedies live here:

* fused C++ inference kernels (``csrc/conv_norm.cpp``, compiled on first
  use, ``speechbrain_s4.extensions``): ``conv_norm`` (depthwise conv + gLN
  + PReLU or sigmoid), ``local_attention`` and ``channel_layer_norm`` in
  two passes over memory each; ``avg_pool``, ``gelu_skip`` (an S4 layer's
  D skip and GELU) and ``glu_residual`` (its GLU and the block's residual)
  in one. They have no backward, so they run only where no autograd graph
  is recorded (``torch.no_grad`` / ``inference_mode``: inference,
  validation, the benchmark) and, as the layers' padded-batch paths need
  masks, only for unpadded batches; ``usable`` says when;
* ``pointwise_conv1d``: a 1x1 convolution as one GEMM (``addmm`` /
  ``baddbmm``): alone, 10-25 % faster than ``conv1d``'s CPU path forward
  and 25-40 % with the backward (S4M's shapes); with autograd, so training
  takes it too (there the step time is unchanged within measurement noise).

The layers (``speechbrain_s4.layers``, ``speechbrain_s4.ssm.S4``) choose
the path; results agree with PyTorch's ops to float round-off (in float32
the kernels' exp and erf are polynomials within 1e-7 relative and 1.5e-7
absolute; float64 uses the C library's). ``SPEECHBRAIN_S4_CPU_KERNELS=0`` in the
environment, or ``with enabled(False):``, turns the C++ kernels off (for
comparisons); a build failure turns them off with one warning.

Shape legend: B batch, C channels, L frames, k filter taps.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from speechbrain_s4.extensions import CppExtension

#: the wrappers of the C++ kernels (each checks nothing: callers ask
#: ``usable`` first)
KERNELS = (
    "conv_norm",
    "local_attention",
    "channel_layer_norm",
    "avg_pool",
    "gelu_skip",
    "glu_residual",
)

__all__ = ["usable", "enabled", *KERNELS, "pointwise_conv1d"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "conv_norm.cpp"

_EXTENSION = CppExtension(
    SOURCE,
    what="S4M's fused CPU conv/norm kernels",
    fallback="PyTorch's operations run instead (slower)",
    # lets GCC vectorise the float-to-int conversions of exp (no effect on
    # results: nothing here relies on floating-point traps)
    extra_cflags=["-fno-trapping-math"],
)
_switch = {"on": os.environ.get("SPEECHBRAIN_S4_CPU_KERNELS", "1") != "0"}
_warned = []


@contextlib.contextmanager
def enabled(flag: bool):
    """Turn the fused C++ kernels on or off inside a ``with`` block.

    Arguments
    ---------
    flag : bool
        False makes ``usable`` return False (PyTorch's ops run).

    Example
    -------
    >>> with enabled(False):
    ...     usable(torch.zeros(1, 2, 3))
    False
    """
    previous = _switch["on"]
    _switch["on"] = bool(flag)
    try:
        yield
    finally:
        _switch["on"] = previous


def usable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the fused kernels may compute a layer of input ``x``.

    True for float32/float64 CPU tensors (parameters of the same dtype)
    when no autograd graph is being recorded, CPU autocast is off, the
    kernels are enabled and the extension builds (it is built on the first
    call that gets this far).

    Arguments
    ---------
    x : torch.Tensor
        The layer's input.
    *params : torch.Tensor
        The layer's parameters.

    Returns
    -------
    bool
    """
    if not _switch["on"] or torch.is_grad_enabled():
        return False
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if any(p.dtype != x.dtype or p.device.type != "cpu" for p in params):
        return False
    if _EXTENSION.available():
        return True
    if not _warned:
        _warned.append(True)
        logger.warning("%s", _EXTENSION.state["error"])
    return False


def conv_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    prelu_weight: torch.Tensor | None = None,
    sigmoid: bool = False,
) -> torch.Tensor:
    """act(gLN(DWConv(x))) in two passes over memory (C++).

    Arguments
    ---------
    x : torch.Tensor
        [B, C, L].
    weight : torch.Tensor or None
        [C, k] depthwise filters (zero padding ``padding``, ``stride``);
        None: no filter (gLN and PReLU only).
    bias : torch.Tensor or None
        [C] filter bias.
    stride, padding : int
        Of the filter.
    norm_weight, norm_bias : torch.Tensor
        [C] gLN gain and bias.
    eps : float
        gLN's epsilon (added to the variance).
    prelu_weight : torch.Tensor, optional
        [1] or [C] PReLU slopes: act is PReLU.
    sigmoid : bool
        act is the sigmoid (when no PReLU slopes are given); otherwise none.

    Returns
    -------
    torch.Tensor
        [B, C, L_out], L_out = (L + 2 padding - k) // stride + 1.
    """
    return _EXTENSION.load().conv_norm(
        x.contiguous(),
        weight,
        bias,
        int(stride),
        int(padding),
        norm_weight,
        norm_bias,
        float(eps),
        prelu_weight,
        bool(sigmoid),
    )


def local_attention(
    x_local: torch.Tensor,
    x_global: torch.Tensor,
    local_filter: tuple,
    act_filter: tuple,
    emb_filter: tuple,
    padding: int,
    eps: float,
) -> torch.Tensor:
    """S4M's local attention (eq. 9-10) for an integer up-sampling factor.

    ``gLN(DWConv_l(x_l)) * sigmoid(gLN(DWConv_a(x_g))) + gLN(DWConv_e(x_g))``,
    the two global terms nearest-upsampled from L_g to L frames.

    Arguments
    ---------
    x_local : torch.Tensor
        [B, C, L].
    x_global : torch.Tensor
        [B, C, L_g], L a multiple of L_g.
    local_filter, act_filter, emb_filter : tuple
        (filters [C, k], gLN weight [C], gLN bias [C]) of each term
        (no filter biases).
    padding : int
        (k - 1) // 2, length-preserving.
    eps : float
        gLN's epsilon.

    Returns
    -------
    torch.Tensor
        [B, C, L].
    """
    return _EXTENSION.load().local_attention(
        x_local.contiguous(),
        x_global.contiguous(),
        *local_filter,
        *act_filter,
        *emb_filter,
        int(padding),
        float(eps),
    )


def channel_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm over the channels of ``x`` [B, C, L] at every frame (C++).

    Equals ``layer_norm(x.transpose(1, 2)).transpose(1, 2)`` without the
    transposed copies.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, L].
    weight, bias : torch.Tensor
        [C].
    eps : float

    Returns
    -------
    torch.Tensor
        [B, C, L].
    """
    return _EXTENSION.load().channel_layer_norm(
        x.contiguous(), weight, bias, float(eps)
    )


def avg_pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Average pooling of ``x`` [B, C, L] to ``length`` frames (C++).

    L must be a multiple of ``length``; the windows are then those of
    ``adaptive_avg_pool1d``.

    Arguments
    ---------
    x : torch.Tensor
        [B, C, L].
    length : int

    Returns
    -------
    torch.Tensor
        [B, C, length].
    """
    return _EXTENSION.load().avg_pool(x.contiguous(), int(length))


def gelu_skip(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``GELU(y[..., :L] + D u)`` in one pass (C++): an S4 layer's tail.

    Arguments
    ---------
    y : torch.Tensor
        [B, H, n >= L] the SSM convolution (untrimmed FFT output).
    u : torch.Tensor
        [B, H, L] the layer input.
    D : torch.Tensor
        [H] skip gains.

    Returns
    -------
    torch.Tensor
        [B, H, L], exact (erf) GELU.
    """
    return _EXTENSION.load().gelu_skip(y.contiguous(), u.contiguous(), D)


def glu_residual(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + GLU(z)`` over channels in one pass (C++).

    Arguments
    ---------
    z : torch.Tensor
        [B, 2H, L]; GLU(z) = z[:, :H] * sigmoid(z[:, H:]).
    x : torch.Tensor
        [B, H, L] the residual.

    Returns
    -------
    torch.Tensor
        [B, H, L].
    """
    return _EXTENSION.load().glu_residual(z.contiguous(), x.contiguous())


def pointwise_conv1d(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``nn.Conv1d`` (groups 1) applied to ``x`` [B, C_in, L] as a GEMM.

    ``W [C_out, C_in] @ x_b + bias`` per item, by ``addmm`` (B = 1) or
    ``baddbmm``: the same function as ``conv(x)`` with autograd, faster on
    CPU than ``conv1d``, which goes through an im2col path. Other devices
    and convolutions that are not plain 1x1 ones call ``conv``.

    Arguments
    ---------
    conv : torch.nn.Conv1d
    x : torch.Tensor
        [B, C_in, L].

    Returns
    -------
    torch.Tensor
        [B, C_out, L].

    Example
    -------
    >>> conv = torch.nn.Conv1d(4, 6, 1)
    >>> x = torch.randn(2, 4, 9)
    >>> torch.allclose(pointwise_conv1d(conv, x), conv(x), atol=1e-6)
    True
    """
    if (
        x.device.type != "cpu"
        or x.dim() != 3
        or conv.kernel_size != (1,)
        or conv.stride != (1,)
        or conv.padding != (0,)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or x.dtype != conv.weight.dtype
    ):
        return conv(x)
    weight = conv.weight[..., 0]  # [C_out, C_in]
    batch, _, length = x.shape
    if batch == 1:
        if conv.bias is None:
            return torch.mm(weight, x[0]).unsqueeze(0)
        return torch.addmm(conv.bias[:, None], weight, x[0]).unsqueeze(0)
    weight = weight.expand(batch, *weight.shape)
    if conv.bias is None:
        return torch.bmm(weight, x)
    bias = conv.bias[None, :, None].expand(batch, -1, length)
    return torch.baddbmm(bias, weight, x)
