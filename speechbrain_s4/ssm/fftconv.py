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

__all__ = [
    "fft_conv",
    "fft_length",
    "kernel_spectrum",
    "spectral_conv",
    "spectral_conv_full",
]


def fft_length(length: int) -> int:
    """FFT size for a linear convolution of length L: 2 m, m >= L 5-smooth.

    Zero-padding both signals to 2L or more makes the circular FFT
    convolution linear (no output wraps around to the other end). The exact
    size 2L can have a large prime factor (2 x 1016 = 16 x 127), on which
    FFTs run ten times slower; twice the smallest 5-smooth number
    (2^a 3^b 5^c) of at least L is at most a few percent longer, even (as
    ``irfft`` needs) and always fast.

    Arguments
    ---------
    length : int
        L.

    Returns
    -------
    int

    Example
    -------
    >>> fft_length(1016), fft_length(100), fft_length(7)
    (2048, 200, 16)
    """
    best = 1 << max(length - 1, 0).bit_length()  # a power of two >= L
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < length:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return 2 * best


def kernel_spectrum(k: torch.Tensor, n: int) -> torch.Tensor:
    """Real FFT of size ``n`` of the (two-sided) kernel laid out for ``fft_conv``.

    With two kernel channels, k0 goes to positions 0..L-1 and flip(k1) to
    n-L..n-1: in a size-n circular convolution position n-m is lag -m.

    Arguments
    ---------
    k : torch.Tensor
        [C, H, L] kernel taps, C = 1 (causal) or 2 (forward, backward).
    n : int
        FFT size, at least 2L (``fft_length``).

    Returns
    -------
    torch.Tensor
        [H, n // 2 + 1] complex.
    """
    length = k.shape[-1]
    k = k.to(torch.promote_types(k.dtype, torch.float32))
    if k.shape[0] == 2:
        gap = k.new_zeros(k.shape[1], n - 2 * length)
        k = torch.cat([k[0], gap, k[1].flip(-1)], dim=-1)  # [H, n]
    else:
        k = k[0]  # [H, L], zero-padded by the FFT
    return torch.fft.rfft(k, n=n)  # [H, n/2 + 1]


def spectral_conv(
    u: torch.Tensor, k_f: torch.Tensor, D: torch.Tensor | None = None
) -> torch.Tensor:
    """``fft_conv`` with the kernel's spectrum given (``kernel_spectrum``).

    Arguments
    ---------
    u : torch.Tensor
        [B, H, L] input.
    k_f : torch.Tensor
        [H, n // 2 + 1] kernel spectrum for an FFT size n >= 2L (n even).
    D : torch.Tensor, optional
        [H] skip gains.

    Returns
    -------
    torch.Tensor
        [B, H, L]
    """
    length = u.shape[-1]
    y = spectral_conv_full(u, k_f)[..., :length]  # [B, H, L]
    dtype = y.dtype
    if D is not None:  # one pass instead of a product and a sum
        y = torch.addcmul(y, D.unsqueeze(-1).to(dtype), u.to(dtype))
    return y.to(u.dtype)


def spectral_conv_full(u: torch.Tensor, k_f: torch.Tensor) -> torch.Tensor:
    """The circular convolution of size n behind ``spectral_conv``.

    Its first L samples are the linear convolution (without D u); the rest
    is the zero padding's share. Callers that fuse the trimming with what
    follows (``cpu_kernels.gelu_skip``) take it whole.

    Arguments
    ---------
    u : torch.Tensor
        [B, H, L] input.
    k_f : torch.Tensor
        [H, n // 2 + 1] kernel spectrum for an FFT size n >= 2L (n even).

    Returns
    -------
    torch.Tensor
        [B, H, n] in (at least) float32.

    Example
    -------
    >>> k_f = kernel_spectrum(torch.randn(2, 4, 10), fft_length(10))
    >>> print(spectral_conv_full(torch.randn(3, 4, 10), k_f).shape)
    torch.Size([3, 4, 20])
    """
    n = 2 * (k_f.shape[-1] - 1)
    # FFTs of half-precision inputs are unsupported or inaccurate on CPU:
    # convolve in (at least) float32
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_f = torch.fft.rfft(u.to(dtype), n=n)  # [B, H, n/2 + 1]
    if torch.is_grad_enabled() and (u_f.requires_grad or k_f.requires_grad):
        product = u_f * k_f  # autograd keeps u_f for k_f's gradient
    else:
        # in place: a fresh [B, H, n/2 + 1] complex tensor per call cost
        # more than the product itself on CPU (page faults of new memory)
        product = u_f.mul_(k_f)
    return torch.fft.irfft(product, n=n)  # [B, H, n]


def fft_conv(
    u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None
) -> torch.Tensor:
    """Convolve each channel of u with its kernel, plus the skip D u.

    With one kernel channel the convolution is causal:
    y_t = sum_{s<=t} k0[t-s] u_s. With two it is two-sided, as in S4M's
    ``s4.py`` and state-spaces/s4, where k0 is laid out at positions 0..L-1
    of a length-2L kernel and flip(k1) at L..2L-1, so that
    y_t = sum_{s<=t} k0[t-s] u_s + sum_{s>t} k1[s-t-1] u_s:
    k1[0] sits at lag -1 (a deliberate one-step offset: the present sample is
    only in the forward kernel) and k1[L-1] is never used. The FFT size is
    ``fft_length(L)`` (at least 2L, so the convolution is linear, not
    circular).

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
    _check_shapes(u, k)
    return spectral_conv(u, kernel_spectrum(k, fft_length(u.shape[-1])), D)


def _check_shapes(u, k):
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
