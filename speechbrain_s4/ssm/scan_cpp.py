"""The fused C++ CPU selective scan: the "cpp" backend of ``selective_scan``.

Mamba's selective scan (Gu and Dao, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", arXiv:2312.00752, eq. 2a-2b and 4) as one C++
kernel per direction, ``csrc/selective_scan.cpp``:

* forward: one pass over u, delta, B, C and z; for each batch row and block
  of channels the N states stay in SIMD registers while the time loop runs,
  and Delta's bias and softplus, the D skip and the SiLU gate are computed
  in the same pass. The decays exp(Delta_t A) use a vectorised polynomial
  exp (about 1 ulp), never cumulative sums, so the result equals the
  sequential loop to round-off at any length;
* backward: the adjoint recurrence run backwards (the equations are in the
  source), recomputing each chunk of ``CHECKPOINT_STEPS`` states from the
  checkpoints the forward keeps, as the "torch" backend does.

Float32 (and bf16/fp16 inputs, upcast) computes in float32, float64 in
float64. Work is split into (batch row, channel range) items run by
torch's OpenMP pool, so ``torch.set_num_threads`` applies; the split
depends only on the shapes, so the result does not depend on the number of
threads.

The extension is compiled on first use (needs a C++ compiler, ninja and
the Python headers; about 20 s) and cached by torch, with ``-march=native``
(``speechbrain_s4.extensions.CppExtension``).

Shape legend: B batch, D channels, L time, N state size, G groups of
channels sharing B and C.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from speechbrain_s4.extensions import CppExtension
from speechbrain_s4.ssm.scan import (
    _check_inputs,
    _compute_dtype,
    _no_autocast,
)

__all__ = ["extension_available", "load_extension", "selective_scan_cpp"]

#: The kernel's source, shipped as package data.
SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"

#: The forward keeps the state every CHECKPOINT_STEPS steps for the backward
#: (1/CHECKPOINT_STEPS of the [B, D, L, N] states, as much memory as u when
#: N = 16), which recomputes one chunk of states and decays at a time. At 16
#: steps a chunk's states and decays of one block of channels (2 x 16 KB)
#: stay in the L1 cache; 32 steps made the backward ~20% slower.
CHECKPOINT_STEPS = 16

#: Work items per call the split into (batch row, channel range) items aims
#: at (for up to this many threads); fewer, larger items are faster, as the
#: backward adds up dB_t and dC_t over an item's channels once per item.
MIN_ITEMS = 8

_EXTENSION = CppExtension(
    SOURCE, what="selective_scan backend 'cpp'", fallback="use backend='torch'"
)
#: the extension's load state (tests replace it to simulate a failed build)
_state = _EXTENSION.state
_missing_build_tools = _EXTENSION.missing_build_tools


# ---------------------------------------------------------------------------
# Building and loading the extension
# ---------------------------------------------------------------------------
def load_extension():
    """Compile (first use) or load the C++ kernel; return its module.

    Returns
    -------
    module
        The extension, with ``scan_forward`` and ``scan_backward``.

    Raises
    ------
    ImportError
        When a build tool is missing (the message names each one and how to
        install it) or the compilation fails (with the compiler's message).
        A failure is remembered: later calls raise at once
        (``speechbrain_s4.extensions.CppExtension``).
    """
    return _EXTENSION.load()


def extension_available() -> bool:
    """True when the C++ kernel builds or loads (it is built if needed).

    Example
    -------
    >>> isinstance(extension_available(), bool)
    True
    """
    return _EXTENSION.available()


# ---------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------
def selective_scan_cpp(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The selective scan (eq. 2a-2b) by the fused C++ CPU kernel.

    Same arguments, semantics and precision rules as ``selective_scan``
    (mamba_ssm v1.2); ``selective_scan(..., backend="cpp")`` calls this.
    Channels-last data ([B, D, L] views of [B, L, D] tensors, as the Mamba
    mixer passes them) is read in place; other layouts are copied once. The
    output has the memory layout of ``u``.

    Arguments
    ---------
    u : torch.Tensor
        [B, D, L], on CPU.
    delta : torch.Tensor
        [B, D, L], raw step sizes.
    A : torch.Tensor
        [D, N], real.
    B : torch.Tensor
        [B, N, L], [B, G, N, L] or [D, N].
    C : torch.Tensor
        [B, N, L], [B, G, N, L] or [D, N].
    D : torch.Tensor, optional
        [D].
    z : torch.Tensor, optional
        [B, D, L].
    delta_bias : torch.Tensor, optional
        [D].
    delta_softplus : bool
        Softplus on delta + delta_bias.
    return_last_state : bool
        Also return the final state [B, D, N].

    Returns
    -------
    out : torch.Tensor
        [B, D, L] in the dtype of ``u``.
    last_state : torch.Tensor
        [B, D, N] in the compute dtype, only when ``return_last_state``.

    Example
    -------
    >>> u, delta = torch.randn(2, 8, 37), torch.rand(2, 8, 37)
    >>> B, C = torch.randn(2, 4, 37), torch.randn(2, 4, 37)
    >>> out = selective_scan_cpp(u, delta, -torch.rand(8, 4), B, C)
    >>> out.shape
    torch.Size([2, 8, 37])
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(
            "selective_scan backend 'cpp' is a CPU kernel, got tensors on "
            f"{u.device}; use backend='cuda' (or 'auto') for GPU tensors"
        )
    dtype_in = u.dtype
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    def channels_last(seq):  # [B, D, L] -> [B, L, D], contiguous channels
        if seq is None:
            return None
        seq = seq.to(dtype).transpose(1, 2)
        return seq if seq.stride(2) == 1 else seq.contiguous()

    def projection(proj):  # [B, G, N, L] (any strides) or [N, D]
        proj = proj.to(dtype)
        if proj.dim() == 2:
            return proj.t().contiguous()
        return proj[:, None] if proj.dim() == 3 else proj

    def vector(vec):
        return None if vec is None else vec.to(dtype).contiguous()

    with _no_autocast("cpu"):
        out, last = _CppScan.apply(
            channels_last(u),
            channels_last(delta),
            A.to(dtype).t().contiguous(),  # [N, D]
            projection(B),
            projection(C),
            vector(D),
            channels_last(z),
            vector(delta_bias),
            delta_softplus,
        )
        out = out.transpose(1, 2).to(dtype_in)  # [B, D, L]
        if u.is_contiguous():  # the output follows u's memory layout
            out = out.contiguous()
    if not return_last_state:
        return out
    return out, last.transpose(1, 2).contiguous()  # [B, D, N]


class _CppScan(torch.autograd.Function):
    """out = (y + D u) SiLU(z), y the selective scan, by the C++ kernel.

    Inputs: u, delta (raw), z [B, L, D] with contiguous channels; A [N, D];
    B, C [B, G, N, L] (any strides) or time-invariant [N, D]; D and
    delta_bias [D] (D, z and delta_bias may be None). Outputs: out [B, L, D]
    and the last state [B, N, D]. The kernel returns dA, dD, ddelta_bias
    and time-invariant dB, dC as sums per batch row, and time-varying dB_t,
    dC_t as sums per channel range; they are added up here.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        kernel = load_extension()
        needs_grad = any(ctx.needs_input_grad)
        groups = math.lcm(*(p.shape[1] for p in (B, C) if p.dim() == 4))
        ctx.blocking = (
            CHECKPOINT_STEPS,
            _channels_per_item(u.shape[0], u.shape[2], groups),
        )
        out, last, checkpoints = kernel.scan_forward(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            delta_softplus,
            *ctx.blocking,
            needs_grad,
        )
        ctx.set_materialize_grads(False)
        ctx.delta_softplus = delta_softplus
        if needs_grad:
            ctx.save_for_backward(
                u, delta, A, B, C, D, z, delta_bias, checkpoints
            )
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        grads = load_extension().scan_backward(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            ctx.delta_softplus,
            checkpoints,
            dout.to(u.dtype),
            None if dlast is None else dlast.to(u.dtype).contiguous(),
            *ctx.blocking,
        )
        du, ddelta, dz, dA, dB, dC, dD, dbias = grads
        return (
            du,
            ddelta,
            dA.sum(0),  # [N, D]
            _projection_grad(dB, B),
            _projection_grad(dC, C),
            None if D is None else dD.sum(0),
            None if z is None else dz,
            None if delta_bias is None else dbias.sum(0),
            None,
        )


def _channels_per_item(batch, d_inner, groups):
    """Channels per work item: whole groups, or pieces of them (multiples
    of 16 channels) when there are fewer than MIN_ITEMS (batch row, group)
    pairs."""
    group_size = d_inner // groups
    pieces = -(-MIN_ITEMS // (batch * groups))  # ceil
    pieces = max(1, min(pieces, -(-group_size // 16)))
    return 16 * -(-group_size // (16 * pieces))


def _projection_grad(partial, proj):
    """Add up the kernel's partial sums of dB or dC.

    Time-invariant: [B, N, D] per batch row -> [N, D]. Time-varying:
    [B, J, L, N] per channel range, the J ranges ordered by channel, so
    that each of the G groups owns J / G consecutive ones -> [B, G, N, L].
    """
    if proj.dim() == 2:
        return partial.sum(0)
    batch, ranges, length, d_state = partial.shape
    groups = proj.shape[1]
    per_group = partial.view(batch, groups, ranges // groups, length, d_state)
    return per_group.sum(2).transpose(2, 3)  # [B, G, N, L]
