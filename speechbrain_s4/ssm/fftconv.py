"""Causal or two-sided convolution of a signal with SSM kernels by FFT.

The convolution view of an S4 layer (Gu, Goel and Re, "Efficiently Modeling
Long Sequences with Structured State Spaces", ICLR 2022, eq. 4-5):
y = K * u + D u, computed in O(L log L) with real FFTs. A bidirectional S4
layer (S4M's) has two kernels: the forward one acts on the past and the
present, the backward one on the future.

Shape legend: B batch, H channels, L length, C kernel channels (1 or 2).

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import torch

__all__ = ["fft_conv"]


def fft_conv(
    u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None
) -> torch.Tensor:
    """Convolve each channel of u with its kernel, plus the skip D u.

    With one kernel channel the convolution is causal:
    y_t = sum_{s<=t} k0[t-s] u_s. With two it is two-sided, as in S4M's
    ``s4.py`` and state-spaces/s4: k0 is laid out at positions 0..L-1 of a
    length-2L kernel and flip(k1) at L..2L-1. In a size-2L circular convolution
    position 2L-m is lag -m, so
    y_t = sum_{s<=t} k0[t-s] u_s + sum_{s>t} k1[s-t-1] u_s:
    k1[0] sits at lag -1 (a deliberate one-step offset: the present sample is
    only in the forward kernel) and k1[L-1] is never used.

    Arguments
    ---------
    u : torch.Tensor
        [B, H, L] input.
    k : torch.Tensor
        [C, H, L] kernel taps, C = 1 (causal) or C = 2 (forward, backward).
    D : torch.Tensor, optional
        [H] skip gains.

    Returns
    -------
    torch.Tensor
        [B, H, L]

    Example
    -------
    >>> u = torch.randn(3, 4, 10)
    >>> print(fft_conv(u, torch.randn(2, 4, 10), torch.randn(4)).shape)
    torch.Size([3, 4, 10])
    """
    if u.dim() != 3:
        raise ValueError(f"u must be [B, H, L], got shape {tuple(u.shape)}")
    _, channels, length = u.shape
    if (
        k.dim() != 3
        or k.shape[1:] != (channels, length)
        or k.shape[0] not in (1, 2)
    ):
        raise ValueError(
            f"kernel must be [C, H, L] = [1 or 2, {channels}, {length}] for "
            f"u of shape {tuple(u.shape)}, got {tuple(k.shape)}"
        )
    if k.shape[0] == 2:
        k = torch.cat([k[0], k[1].flip(-1)], dim=-1)  # [H, 2L]
    else:
        k = k[0]  # [H, L]
    # Zero-padding both to 2L makes the circular FFT convolution linear: no
    # output sample wraps around to taps from the other end of the signal.
    n = 2 * length
    # FFTs of half-precision inputs are unsupported or inaccurate on CPU:
    # convolve in (at least) float32 and return in the input's dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_f = torch.fft.rfft(u.to(dtype), n=n)  # [B, H, L+1]
    k_f = torch.fft.rfft(k.to(dtype), n=n)  # [H, L+1]
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :length]  # [B, H, L]
    if D is not None:
        y = y + D.unsqueeze(-1) * u  # [B, H, L]
    return y.to(u.dtype)
