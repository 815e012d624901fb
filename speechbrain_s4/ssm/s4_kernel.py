"""S4 and S4D convolution kernels: the taps K[c, h, l] = C_c dA^l dB of an SSM.

An S4 layer runs H independent single-input single-output state-space models
x' = A x + B u, y = C x + D u (Gu, Goel and Re, "Efficiently Modeling Long
Sequences with Structured State Spaces", ICLR 2022). Discretised with step
dt (x_k = dA x_{k-1} + dB u_k, y_k = C x_k), the output is a convolution of
the input with the kernel K_l = C dA^l dB (paper eq. 4-5). This module
computes that kernel; ``fftconv.fft_conv`` applies it and ``s4.S4`` wraps both
in the layer S4M uses.

Two kernels:

* ``DPLRKernel``: A = Lambda - P P^* (diagonal plus rank one) initialised
  from HiPPO-LegS, bilinear discretisation, kernel via its generating
  function at the roots of unity: Cauchy sums, the Woodbury identity and an
  inverse real FFT (paper section 3.3, Algorithm 1). This is the kernel of
  JusperLee/S4M's vendored ``s4.py`` (``SSKernelNPLR``) and of state-spaces/s4
  ``SSMKernelDPLR`` with ``mode='dplr', init='legs'``.
* ``DiagonalKernel``: A = diag(Lambda), the S4D kernels (Gu et al., "On the
  Parameterization and Initialization of Diagonal State Space Models",
  NeurIPS 2022) with S4D-Lin, -Inv, -LegS and -Real initialisations, ZOH or
  bilinear discretisation, and a Vandermonde product. With ``init='lin',
  disc='zoh'`` it is state-spaces/s4 ``models/s4/s4d.py``'s ``S4DKernel``.

Only half of the N complex modes are stored; the other half are their
complex conjugates, which makes the kernel real.

Shape legend: H channels (d_model), N state size (d_state), M = N / 2 stored
modes, C kernel channels (2 for a bidirectional layer: forward, backward),
L kernel length, F = L // 2 + 1 frequencies, B batch.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
from torch import nn

from speechbrain_s4.ssm.fftconv import fft_length, kernel_spectrum

__all__ = [
    "DPLRKernel",
    "DiagonalKernel",
    "shared_kernels",
    "dplr_bilinear",
    "hippo_legs",
    "hippo_legs_dplr",
    "matrix_power_rows",
]

DIAGONAL_INITS = ("lin", "inv", "legs", "real")
DISCRETISATIONS = ("zoh", "bilinear")

# Re(Lambda) is kept at most -1e-3 at initialisation, as S4M's s4.py does
# (its ``real_tolerance``); the parametrisation -exp(.) keeps it negative
# afterwards. HiPPO-LegS has Re(Lambda) = -1/2, so this never binds here.
_REAL_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------
# HiPPO-LegS and its diagonal-plus-low-rank (DPLR) form
# ---------------------------------------------------------------------------
def hippo_legs(
    d_state: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the HiPPO-LegS matrices (A, B) and its rank-1 term P (float64).

    A[n, k] = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 above the
    diagonal; B[n] = sqrt(2n+1); P[n] = sqrt(n + 1/2), so that A + P P^T =
    -I/2 + S with S skew-symmetric (S4 paper eq. 2 and section 3.2).

    Arguments
    ---------
    d_state : int
        The state size N.

    Returns
    -------
    A : torch.Tensor
        [N, N]
    B : torch.Tensor
        [N]
    P : torch.Tensor
        [N]

    Example
    -------
    >>> A, B, P = hippo_legs(4)
    >>> print(A.shape, B.shape, P.shape)
    torch.Size([4, 4]) torch.Size([4]) torch.Size([4])
    """
    n = torch.arange(d_state, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(torch.outer(q, q), diagonal=-1) - torch.diag(n + 1)
    return A, q.clone(), torch.sqrt(n + 0.5)


def hippo_legs_dplr(
    d_state: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diagonalise the normal part of HiPPO-LegS (complex128, half the modes).

    A + P P^T = -I/2 + S has eigenvalues -1/2 + i w with real w from the
    Hermitian eigendecomposition -i S = V diag(w) V^*. The eigenvalues come in
    conjugate pairs, so only the M = N/2 with negative imaginary part are kept,
    with B and P rotated into that eigenbasis: A ~ Lambda - P P^* (S4 paper
    Theorem 1), where the conjugate modes are implied.

    Arguments
    ---------
    d_state : int
        The state size N (even).

    Returns
    -------
    Lambda : torch.Tensor
        [M] complex eigenvalues, Re = -1/2, Im < 0, ascending imaginary part.
    B : torch.Tensor
        [M] complex, V^* B.
    P : torch.Tensor
        [M] complex, V^* P.

    Example
    -------
    >>> Lambda, B, P = hippo_legs_dplr(8)
    >>> print(Lambda.shape, bool((Lambda.imag < 0).all()))
    torch.Size([4]) True
    """
    _check_state_size(d_state)
    A, B, P = hippo_legs(d_state)
    normal = A + torch.outer(P, P)  # -I/2 + S
    real_part = torch.diagonal(normal).mean()  # -1/2
    skew = normal - real_part * torch.eye(d_state, dtype=torch.float64)
    # -iS is Hermitian: real eigenvalues, orthonormal eigenvectors, ascending
    imag_part, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    num_modes = d_state // 2
    assert bool((imag_part[:num_modes] < 0).all()), "no zero eigenvalue"
    V_star = V[:, :num_modes].conj().T  # [M, N]
    Lambda = real_part + 1j * imag_part[:num_modes]
    return Lambda, V_star @ B.to(V), V_star @ P.to(V)


def diagonal_init(init: str, d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D initialisations of the diagonal A (S4D paper section 4).

    Lambda_n, n = 0..M-1: S4D-Lin -1/2 - i pi n; S4D-Inv
    -1/2 - i (N/pi)(N/(2n+1) - 1); S4D-LegS the eigenvalues of the normal part
    of HiPPO-LegS; S4D-Real -(n+1). The conjugate of every mode is implied, so
    the sign of the imaginary part is a convention (negative here, as in
    ``hippo_legs_dplr``). B is ones, except for LegS (the rotated HiPPO B).

    Arguments
    ---------
    init : str
        One of "lin", "inv", "legs", "real".
    d_state : int
        The state size N (even).

    Returns
    -------
    Lambda : torch.Tensor
        [M] complex128.
    B : torch.Tensor
        [M] complex128.

    Example
    -------
    >>> Lambda, B = diagonal_init("lin", 8)
    >>> print(Lambda.shape, B.shape)
    torch.Size([4]) torch.Size([4])
    """
    _check_state_size(d_state)
    if init not in DIAGONAL_INITS:
        raise ValueError(
            f"unknown S4D init {init!r}; expected one of {DIAGONAL_INITS}"
        )
    num_modes = d_state // 2
    n = torch.arange(num_modes, dtype=torch.float64)
    ones = torch.ones(num_modes, dtype=torch.complex128)
    if init == "lin":
        return torch.complex(-0.5 * torch.ones_like(n), -math.pi * n), ones
    if init == "inv":
        imag = d_state / math.pi * (d_state / (2 * n + 1) - 1)
        return torch.complex(-0.5 * torch.ones_like(n), -imag), ones
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n)), ones
    Lambda, B, _ = hippo_legs_dplr(d_state)
    return Lambda, B


# ---------------------------------------------------------------------------
# Discretisation and matrix powers
# ---------------------------------------------------------------------------
def dplr_bilinear(
    dt: torch.Tensor, Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense bilinear discretisation of A = Lambda - P P^* in a real basis.

    dA = (2/dt - A)^-1 (2/dt + A) and dB = (2/dt - A)^-1 2B (S4 paper eq. 3),
    with (2/dt - A)^-1 = D - D P (1 + P^* D P)^-1 P^* D, D = diag(1/(2/dt -
    Lambda)) (Woodbury), over all N modes: the M stored and their conjugates.
    The result is returned in the real basis [Re x; Im x] of the stored
    half-state x (the full state is [x; conj(x)]), where dA and dB are real.
    A row vector of the real basis, c_real = [2 Re c, -2 Im c], gives the
    output y = c_real . x_real = 2 Re(c . x) = (full C) . (full state).

    Arguments
    ---------
    dt : torch.Tensor
        [H] positive steps.
    Lambda : torch.Tensor
        [H, M] complex diagonal.
    P : torch.Tensor
        [H, M] complex rank-1 factor (Q = conj(P)).
    B : torch.Tensor
        [H, M] complex input vector.

    Returns
    -------
    dA : torch.Tensor
        [H, N, N] real.
    dB : torch.Tensor
        [H, N] real.

    Example
    -------
    >>> Lambda, B, P = hippo_legs_dplr(4)
    >>> dA, dB = dplr_bilinear(torch.full((3,), 0.1, dtype=torch.float64),
    ...     Lambda.expand(3, 2), P.expand(3, 2), B.expand(3, 2))
    >>> print(dA.shape, dB.shape)
    torch.Size([3, 4, 4]) torch.Size([3, 4])
    """
    num_modes = Lambda.shape[-1]
    Lambda_full = _conj_extend(Lambda)  # [H, N]
    P_full = _conj_extend(P)  # [H, N]
    Q_full = P_full.conj()  # [H, N]
    two_over_dt = (2.0 / dt).unsqueeze(-1)  # [H, 1]
    D = 1.0 / (two_over_dt - Lambda_full)  # [H, N]
    E = two_over_dt + Lambda_full  # [H, N]
    # (2/dt - A)^-1 = diag(D) - (D P)(Q D)^T / (1 + Q^T D P)
    denom = 1.0 + (Q_full * D * P_full).sum(-1)  # [H]
    inv = (
        torch.diag_embed(D)
        - (D * P_full).unsqueeze(-1)
        * (Q_full * D).unsqueeze(-2)
        / denom[:, None, None]
    )  # [H, N, N]
    # dA = inv (diag(E) - P Q^T); dB = inv 2B
    inv_P = _matvec(inv, P_full)  # [H, N]
    dA_full = inv * E.unsqueeze(-2) - inv_P.unsqueeze(-1) * Q_full.unsqueeze(
        -2
    )  # [H, N, N]
    dB_half = 2 * _matvec(inv[:, :num_modes], _conj_extend(B))  # [H, M]
    # dA_full = [[X, Y], [conj Y, conj X]] in the basis [x; conj x]; change to
    # [Re x; Im x] with T = [[I, iI], [I, -iI]]: T^-1 dA_full T below.
    X = dA_full[:, :num_modes, :num_modes]
    Y = dA_full[:, :num_modes, num_modes:]
    top = torch.cat([(X + Y).real, (Y - X).imag], dim=-1)  # [H, M, N]
    bottom = torch.cat([(X + Y).imag, (X - Y).real], dim=-1)  # [H, M, N]
    dA = torch.cat([top, bottom], dim=-2)  # [H, N, N]
    dB = torch.cat([dB_half.real, dB_half.imag], dim=-1)  # [H, N]
    return dA, dB


def matrix_power_rows(
    rows: torch.Tensor, matrix: torch.Tensor, power: int
) -> torch.Tensor:
    """Return rows @ matrix^power by repeated squaring (log2(power) squarings).

    Only the squarings are matrix products; multiplying the rows in costs a
    vector-matrix product per set bit.

    Arguments
    ---------
    rows : torch.Tensor
        [..., H, N] row vectors.
    matrix : torch.Tensor
        [H, N, N]
    power : int
        Non-negative exponent.

    Returns
    -------
    torch.Tensor
        [..., H, N]

    Example
    -------
    >>> rows = torch.randn(2, 3, 4)
    >>> print(matrix_power_rows(rows, torch.eye(4).expand(3, 4, 4), 5).shape)
    torch.Size([2, 3, 4])
    """
    result = rows
    square = matrix
    while power > 0:
        if power & 1:
            result = (result.unsqueeze(-2) @ square).squeeze(-2)
        power >>= 1
        if power:
            square = square @ square
    return result


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """[..., H, N, K] @ [..., H, K] -> [..., H, N] (a plain matmul: einsum
    costs far more per call for these small operands)."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _conj_extend(x: torch.Tensor) -> torch.Tensor:
    """[..., M] complex -> [..., N]: the stored modes and their conjugates."""
    return torch.cat([x, x.conj()], dim=-1)


def _check_state_size(d_state: int) -> None:
    if not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(
            f"d_state={d_state!r}: the state size must be an even integer "
            ">= 2 (modes come in complex-conjugate pairs)"
        )


def _check_length(length: int) -> int:
    if isinstance(length, torch.Tensor):
        length = int(length)
    if not isinstance(length, int) or length < 1:
        raise ValueError(
            f"kernel length must be an integer >= 1, got {length!r}"
        )
    return length


def _frequency_nodes(
    length: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-angle form of the roots of unity omega_j = exp(-i theta_j), [F].

    theta_j = 2 pi j / L, j = 0..L//2. With phase = exp(i theta/2):
    1 - omega = 2i sin(theta/2) / phase and 1 + omega = 2 cos(theta/2) / phase.

    Returns
    -------
    phase : torch.Tensor
        [F] complex, exp(i theta / 2).
    two_sin : torch.Tensor
        [F] real, 2 sin(theta / 2).
    cos : torch.Tensor
        [F] real, cos(theta / 2) (0 at the Nyquist node).
    """
    j = torch.arange(length // 2 + 1, dtype=torch.float64, device=device)
    half_theta = math.pi * j / length
    phase = torch.polar(torch.ones_like(half_theta), half_theta)
    real_dtype = torch.empty((), dtype=dtype).real.dtype
    return (
        phase.to(dtype),
        (2 * torch.sin(half_theta)).to(real_dtype),
        torch.cos(half_theta).to(real_dtype),
    )


# Elements of the Cauchy matrix formed at a time (32 MB in complex64). It
# bounds the transient memory; much smaller chunks measured slower on CPU.
_CAUCHY_CHUNK_ELEMENTS = 1 << 22


def _cauchy_matrix(
    w: torch.Tensor, two_sin: torch.Tensor, cos: torch.Tensor
) -> torch.Tensor:
    """1 / (2i sin(theta_f/2) - cos(theta_f/2) w_hn), [H, N, F]."""
    return torch.reciprocal(1j * two_sin - cos * w.unsqueeze(-1))


class _CauchySum(torch.autograd.Function):
    """Cauchy sums: sums[a, h, f] = sum_n V[a, h, n] R[h, n, f], where
    R[h, n, f] = 1 / (2i sin(theta_f/2) - cos(theta_f/2) w[h, n]).

    The [H, N, F] Cauchy matrix is formed a block of channels at a time and
    recomputed in backward instead of being saved, so the memory kept for
    autograd is O(H (N + F)) rather than O(H N F) (the transient is one
    block). Backward (PyTorch's conjugate convention for holomorphic maps):
    grad_V = sum_f g conj(R), grad_w = sum_a conj(V) sum_f g cos conj(R^2),
    with R the Cauchy matrix (d R / d w = cos R^2).
    """

    @staticmethod
    def forward(ctx, V, w, two_sin, cos):
        ctx.save_for_backward(V, w, two_sin, cos)
        sums = V.new_empty(V.shape[0], V.shape[1], two_sin.shape[0])
        for rows in _channel_chunks(w.shape, two_sin.shape[0]):
            cauchy = _cauchy_matrix(w[rows], two_sin, cos)  # [h, N, F]
            sums[:, rows] = torch.einsum("ahn,hnf->ahf", V[:, rows], cauchy)
        return sums  # [A, H, F]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        V, w, two_sin, cos = ctx.saved_tensors
        need_V, need_w = ctx.needs_input_grad[:2]
        grad_V = torch.empty_like(V) if need_V else None
        grad_w = torch.empty_like(w) if need_w else None
        for rows in _channel_chunks(w.shape, two_sin.shape[0]):
            cauchy = _cauchy_matrix(w[rows], two_sin, cos)  # [h, N, F]
            g = grad[:, rows]  # [A, h, F]
            if need_V:
                grad_V[:, rows] = torch.einsum("ahf,hnf->ahn", g, cauchy.conj())
            if need_w:
                inner = torch.einsum(
                    "ahf,hnf->ahn", g * cos, (cauchy * cauchy).conj()
                )  # [A, h, N]
                grad_w[rows] = (V[:, rows].conj() * inner).sum(0)
        return grad_V, grad_w, None, None


def _channel_chunks(w_shape: torch.Size, num_freqs: int):
    """Slices over the H channels of about _CAUCHY_CHUNK_ELEMENTS each."""
    channels, modes = w_shape
    step = max(1, _CAUCHY_CHUNK_ELEMENTS // max(1, modes * num_freqs))
    return [slice(h, h + step) for h in range(0, channels, step)]


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def shared_kernels(module: nn.Module):
    """Compute every SSM kernel inside ``module`` once per length in a block.

    A weight-shared network (S4M runs one block 16 times per forward) would
    otherwise recompute the same kernel, and in training backpropagate
    through it, on every pass. Inside the ``with`` block each kernel keeps
    the taps it computed for a length and returns them again; autograd then
    accumulates the gradients of all uses through one kernel graph. The memo
    ends with the block, so parameters updated later are always seen.

    Arguments
    ---------
    module : torch.nn.Module
        The network whose kernels are shared (searched recursively).

    Example
    -------
    >>> kernel = DiagonalKernel(4, 8)
    >>> with shared_kernels(kernel):
    ...     kernel(10) is kernel(10)
    True
    """
    kernels = [
        m
        for m in module.modules()
        if isinstance(m, _SSMKernel) and m._call_memo is None
    ]
    for kernel in kernels:
        kernel._call_memo = {}
    try:
        yield
    finally:
        for kernel in kernels:
            kernel._call_memo = None


class _SSMKernel(nn.Module):
    """Plumbing shared by the kernels: optimiser hints, eval-mode cache.

    ``forward(L)`` returns ``_kernel(L)``. In eval mode under ``no_grad`` the
    last kernel is reused for the same (L, device, dtype) as long as no
    parameter or buffer changed: S4M calls one shared S4 block many times per
    forward at the same length. The check compares each tensor's storage
    address and in-place version counter (bumped by ``load_state_dict``,
    optimiser steps and any other in-place write). Training, or any call with
    gradients enabled, always recomputes.
    """

    def __init__(self):
        super().__init__()
        self._cached = {}  # kind -> (key, taps or spectrum); not state
        self._step_cache = None  # (signature, tensors for step()); not state
        self._call_memo = None  # {key: taps} inside ``shared_kernels``

    def _register_ssm_parameter(
        self, name: str, tensor: torch.Tensor, lr: float | None
    ) -> None:
        """Register a parameter of the SSM matrices with its ``_optim`` hint.

        The hint (weight decay 0, and ``lr`` when given) lets a training
        script put these parameters in their own optimiser group
        (MODELS.md section 2.6, as state-spaces/s4 does).
        """
        param = nn.Parameter(tensor)
        param._optim = {"weight_decay": 0.0}
        if lr is not None:
            param._optim["lr"] = lr
        self.register_parameter(name, param)

    def _signature(self) -> tuple:
        return tuple(
            (t.data_ptr(), t._version)
            for t in itertools.chain(self.parameters(), self.buffers())
        )

    def forward(self, length: int) -> torch.Tensor:
        """Return the kernel taps.

        Arguments
        ---------
        length : int
            Number of taps L.

        Returns
        -------
        torch.Tensor
            [C, H, L]
        """
        length = _check_length(length)
        return self._reused(("taps", length), lambda: self._kernel(length))

    def spectrum(self, length: int) -> torch.Tensor:
        """Real FFT of the taps as ``fft_conv`` lays them out.

        Reused like the taps (eval cache, ``shared_kernels``), so a
        weight-shared network transforms its kernel once per forward.

        Arguments
        ---------
        length : int
            Number of taps L; the FFT size is ``fftconv.fft_length(L)``.

        Returns
        -------
        torch.Tensor
            [H, n // 2 + 1] complex.
        """
        length = _check_length(length)
        return self._reused(
            ("spectrum", length),
            lambda: kernel_spectrum(self(length), fft_length(length)),
        )

    def _reused(self, what: tuple, compute) -> torch.Tensor:
        """``compute()``, or its earlier result when it can be reused."""
        device_type = self.log_dt.device.type
        if torch.is_autocast_enabled(device_type):
            # complex maths has no half-precision kernels, and the Cauchy
            # sums need float32 anyway: kernels ignore autocast
            with torch.autocast(device_type, enabled=False):
                return self._reused(what, compute)
        key = (*what, self.log_dt.device, self.log_dt.dtype)
        if self._call_memo is not None:
            if key not in self._call_memo:
                self._call_memo[key] = self._cached_or_new(key, compute)
            return self._call_memo[key]
        return self._cached_or_new(key, compute)

    def _cached_or_new(self, key: tuple, compute) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return compute()
        key = (*key, self._signature())
        cached = self._cached.get(key[0])
        if cached is not None and cached[0] == key:
            return cached[1]
        value = compute()
        self._cached[key[0]] = (key, value)
        return value

    def _kernel(self, length: int) -> torch.Tensor:
        raise NotImplementedError

    def _checked_step_cache(self):
        if self._step_cache is None:
            raise RuntimeError(
                "call setup_step() before step(): it builds the discrete "
                "matrices from the current parameters"
            )
        signature, tensors = self._step_cache
        if signature != self._signature():
            raise RuntimeError(
                "the parameters changed since setup_step(); call setup_step() "
                "again so that step() uses the current weights"
            )
        return tensors

    @property
    def d_model(self) -> int:
        return self.log_dt.shape[0]


class DPLRKernel(_SSMKernel):
    """S4 kernel with A = Lambda - P P^* from HiPPO-LegS, bilinear in time.

    For each of H channels and C kernel channels it returns the first L taps
    of the impulse response K_l = C dA^l dB. Following S4 (Algorithm 1), the
    generating function sum_{l<L} K_l omega^l = C~ (I - dA omega)^-1 dB with
    C~ = C (I - dA^L) is evaluated at the roots of unity omega_j =
    exp(-2 pi i j / L). With the bilinear dA, dB it equals
    (2/(1+omega)) C~ (g - A)^-1 B, g = (2/dt)(1-omega)/(1+omega) (eq. 6), and
    Woodbury turns the resolvent of Lambda - P P^* into four Cauchy sums
    k_ab = sum_n a_n b_n / (g - Lambda_n):
    K^ = (2/(1+omega)) [k_C~B - k_C~P k_QB / (1 + k_QP)], Q = conj(P).
    An inverse real FFT gives the taps. Here the sums are taken in half-angle
    form: with omega = exp(-i theta), 1 - omega = 2i sin(theta/2) e^(-i theta/2)
    and 1 + omega = 2 cos(theta/2) e^(-i theta/2), so
    kappa_ab = dt sum_n a_n b_n / (2i sin(theta/2) - cos(theta/2) dt Lambda_n)
    and K^ = e^(i theta/2) [kappa_C~B - c kappa_C~P kappa_QB / (1 + c
    kappa_QP)], c = cos(theta/2). This is the same function without the pole of
    2/(1+omega) at the Nyquist node omega = -1, and the real part of each
    denominator, -c dt Re(Lambda_n), is formed without cancellation.

    Cost: O(H N L) for the Cauchy sums, whose [H, N, L/2] matrix is formed a
    block of channels at a time and recomputed in backward (autograd keeps
    O(H (N + L))), plus O(H N^3 log L) for C~ (dense dA^L by squaring).

    **The parameter is the true C.** C~ for the length being computed is a
    local, differentiable tensor; forward never writes to a parameter or
    buffer (S4M's ``s4.py`` instead overwrites C with C~ under no_grad, see
    ``speechbrain_s4.convert.convert_s4_layer_state_dict``).

    ``conj_symmetric=True`` (default) sums over all N modes (the M stored and
    their conjugates): the kernel is the true SSM impulse response and does
    not depend on any internal length; L = 40 gives the first 40 taps of
    L = 120. ``conj_symmetric=False`` reproduces S4M's CPU fallback
    (``cauchy_naive`` without pykeops or the CUDA extension), which sums
    only the M stored modes. That kernel is not the SSM impulse response and
    depends on the internal FFT length, which S4M sets to the first input
    length L0 (its ``L`` buffer) and doubles until it covers a longer input.
    The buffer ``base_length`` (only in this mode; 0 = unset, internal length
    = L) holds L0 and ``internal_length`` applies the doubling rule without
    mutating anything. It exists only so that original checkpoints produced
    on CPU without pykeops load faithfully; it has no recurrent view.

    Arguments
    ---------
    d_model : int
        Number of channels H (one SSM each).
    d_state : int
        State size N (even); M = N/2 complex modes are stored.
    channels : int
        Kernel channels C, each with its own C vector (2 for bidirectional).
    dt_min, dt_max : float
        log(dt) is drawn uniformly in [log dt_min, log dt_max] per channel.
    conj_symmetric : bool
        True: the true kernel; False: S4M's CPU Cauchy fallback (see above).
    lr : float, optional
        Learning-rate hint for log_dt, A (inv_w_real, w_imag), B and P.

    Example
    -------
    >>> kernel = DPLRKernel(d_model=4, d_state=8, channels=2)
    >>> print(kernel(50).shape)
    torch.Size([2, 4, 50])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conj_symmetric: bool = True,
        lr: float | None = None,
    ):
        super().__init__()
        _check_state_size(d_state)
        _check_sizes(d_model, channels, dt_min, dt_max)
        self.d_state = d_state
        self.channels = channels
        self.conj_symmetric = conj_symmetric
        dtype = torch.get_default_dtype()
        Lambda, B, P = hippo_legs_dplr(d_state)  # [M] each, complex128
        num_modes = d_state // 2
        real = Lambda.real.clamp(max=-_REAL_TOLERANCE)
        # Re(Lambda) = -exp(inv_w_real), Im(Lambda) = w_imag (S4M's names)
        self._register_ssm_parameter(
            "log_dt", _log_uniform(d_model, dt_min, dt_max).to(dtype), lr
        )
        self._register_ssm_parameter(
            "inv_w_real",
            torch.log(-real).expand(d_model, num_modes).to(dtype).clone(),
            lr,
        )
        self._register_ssm_parameter(
            "w_imag",
            Lambda.imag.expand(d_model, num_modes).to(dtype).clone(),
            lr,
        )
        # complex [H, M] stored as real views [H, M, 2]
        self._register_ssm_parameter(
            "B", _real_view(B.expand(d_model, num_modes), dtype), lr
        )
        self._register_ssm_parameter(
            "P", _real_view(P.expand(d_model, num_modes), dtype), lr
        )
        # C ~ complex standard normal (Re, Im ~ N(0, 1/2)), [C, H, M, 2]
        C = torch.randn(channels, d_model, num_modes, dtype=torch.complex128)
        self.C = nn.Parameter(_real_view(C, dtype))
        if not conj_symmetric:
            self.register_buffer("base_length", torch.tensor(0))

    def _complex_parameters(self):
        """dt [H], Lambda [H, M], B [H, M], P [H, M], C [C, H, M]."""
        dt = torch.exp(self.log_dt)
        Lambda = torch.complex(-torch.exp(self.inv_w_real), self.w_imag)
        B = torch.view_as_complex(self.B)
        P = torch.view_as_complex(self.P)
        C = torch.view_as_complex(self.C)
        return dt, Lambda, B, P, C

    def internal_length(self, length: int) -> int:
        """FFT length the kernel of ``length`` taps is computed at.

        ``length`` itself with the conjugate-symmetric sum. In the naive mode,
        S4M's rule: ``base_length`` (L0) doubled until it covers ``length``,
        or ``length`` when ``base_length`` is 0.

        Arguments
        ---------
        length : int
            Number of taps L.

        Returns
        -------
        int

        Example
        -------
        >>> kernel = DPLRKernel(4, 8, conj_symmetric=False)
        >>> _ = kernel.base_length.fill_(50)
        >>> print(kernel.internal_length(80), kernel.internal_length(30))
        100 50
        """
        length = _check_length(length)
        if self.conj_symmetric:
            return length
        internal = int(self.base_length)
        if internal <= 0:
            return length
        while internal < length:
            internal *= 2
        return internal

    def discrete_system(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return dense (dA, dB, C) in the real basis [Re x; Im x].

        The full N-dimensional system (stored modes and conjugates), so that
        K_l = C dA^l dB exactly (``dplr_bilinear`` explains the basis).

        Returns
        -------
        dA : torch.Tensor
            [H, N, N] real.
        dB : torch.Tensor
            [H, N] real.
        C : torch.Tensor
            [C, H, N] real, the true C (never C~).

        Example
        -------
        >>> dA, dB, C = DPLRKernel(4, 8).discrete_system()
        >>> print(dA.shape, dB.shape, C.shape)
        torch.Size([4, 8, 8]) torch.Size([4, 8]) torch.Size([1, 4, 8])
        """
        dt, Lambda, B, P, C = self._complex_parameters()
        dA, dB = dplr_bilinear(dt, Lambda, P, B)
        return dA, dB, _real_rows(C)

    def c_tilde(self, length: int) -> torch.Tensor:
        """Return C~ = C (I - dA^L), the C whose kernel has period L.

        This is what S4M stores in its ``C`` parameter after a forward at
        internal length L; here it is a differentiable function of C.

        Arguments
        ---------
        length : int
            The internal length L.

        Returns
        -------
        torch.Tensor
            [C, H, M] complex.

        Example
        -------
        >>> print(DPLRKernel(4, 8, channels=2).c_tilde(50).shape)
        torch.Size([2, 4, 4])
        """
        length = _check_length(length)
        dt, Lambda, B, P, C = self._complex_parameters()
        dA, _ = dplr_bilinear(dt, Lambda, P, B)  # [H, N, N]
        C_dA_L = matrix_power_rows(_real_rows(C), dA, length)  # [C, H, N]
        return C - _complex_from_rows(C_dA_L)  # [C, H, M]

    def _kernel(self, length: int) -> torch.Tensor:
        internal = self.internal_length(length)
        dt, Lambda, B, P, C = self._complex_parameters()
        C_tilde = self.c_tilde(internal)  # [C, H, M]
        # rows a in {C~_0 .. C~_{C-1}, Q}, columns b in {B, P}
        left = torch.cat([C_tilde, P.conj().unsqueeze(0)], dim=0)  # [C+1, H, M]
        right = torch.stack([B, P], dim=0)  # [2, H, M]
        products = left.unsqueeze(1) * right.unsqueeze(0)  # [C+1, 2, H, M]
        dt_Lambda = dt.unsqueeze(-1) * Lambda  # [H, M]
        if self.conj_symmetric:
            products = _conj_extend(products)  # [C+1, 2, H, N]
            dt_Lambda = _conj_extend(dt_Lambda)  # [H, N]
        phase, two_sin, cos = _frequency_nodes(
            internal, dt_Lambda.dtype, dt_Lambda.device
        )  # [F] each
        # kappa_ab = dt sum_n a_n b_n / (2i sin(theta/2) - cos(theta/2) dt
        # Lambda_n); the real part of each denominator is exactly
        # -cos(theta/2) dt Re(Lambda_n), formed without cancellation
        rows, _, channels, modes = products.shape
        sums = _CauchySum.apply(
            (products * dt.unsqueeze(-1)).reshape(2 * rows, channels, modes),
            dt_Lambda,
            two_sin,
            cos,
        ).view(rows, 2, channels, -1)  # [C+1, 2, H, F]
        k_CB, k_CP = sums[:-1].unbind(1)  # [C, H, F] each
        k_QB, k_QP = sums[-1].unbind(0)  # [H, F] each
        # Woodbury rank-1 correction with the bilinear factor folded in
        spectrum = phase * (
            k_CB - cos * k_CP * k_QB / (1 + cos * k_QP)
        )  # [C, H, F]
        taps = torch.fft.irfft(spectrum, n=internal)  # [C, H, internal]
        return taps if internal == length else taps[..., :length]  # [C, H, L]

    # -- recurrent view -----------------------------------------------------
    def setup_step(self) -> None:
        """Build dA, dB and C for ``step`` from the current parameters.

        Example
        -------
        >>> kernel = DPLRKernel(4, 8)
        >>> kernel.setup_step()
        >>> y, state = kernel.step(torch.randn(3, 4), kernel.default_state(3))
        >>> print(y.shape, state.shape)
        torch.Size([3, 4]) torch.Size([3, 4, 8])
        """
        if not self.conj_symmetric:
            raise RuntimeError(
                "DPLRKernel(conj_symmetric=False) reproduces S4M's CPU Cauchy "
                "fallback, which is not the kernel of any recurrence; build "
                "the layer with conj_symmetric=True to step it"
            )
        if self.channels != 1:
            raise RuntimeError(
                f"step() needs a single causal kernel channel, this kernel has "
                f"{self.channels} (a bidirectional layer cannot be streamed)"
            )
        dA, dB, C = self.discrete_system()
        self._step_cache = (self._signature(), (dA, dB, C[0]))

    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero state [B, H, N] (real basis [Re x; Im x] of the M modes)."""
        return self.log_dt.new_zeros(batch_size, self.d_model, self.d_state)

    def step(
        self, u: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step x_k = dA x_{k-1} + dB u_k, y_k = C x_k.

        Arguments
        ---------
        u : torch.Tensor
            [B, H] input at step k.
        state : torch.Tensor
            [B, H, N] the state x_{k-1}.

        Returns
        -------
        y : torch.Tensor
            [B, H], without the D skip.
        state : torch.Tensor
            [B, H, N] the state x_k.
        """
        dA, dB, C = self._checked_step_cache()
        state = _matvec(dA, state) + dB * u.unsqueeze(-1)  # [B, H, N]
        return (state * C).sum(-1), state


class DiagonalKernel(_SSMKernel):
    """S4D kernel: A = diag(Lambda), kernel by a Vandermonde product.

    K_l = 2 Re sum_m C_m dB_m dA_m^l over the M stored modes (the factor 2
    and the real part add the conjugate modes; S4D paper eq. 6), with
    dA_m^l = exp(l log dA_m): exponentiated, never multiplied up, so the cost
    and memory are O(H N L). Discretisations (S4D paper section 3.1):
    ZOH dA = exp(dt Lambda), dB = (exp(dt Lambda) - 1)/Lambda B; bilinear
    dA = (1 + dt Lambda/2)/(1 - dt Lambda/2), dB = dt B/(1 - dt Lambda/2).
    ``init='lin', disc='zoh'`` with B fixed at one is state-spaces/s4's
    minimal ``s4d.py`` kernel; here B is trained, as in their
    ``SSMKernelDiag``.

    Arguments
    ---------
    d_model : int
        Number of channels H.
    d_state : int
        State size N (even); M = N/2 complex modes are stored.
    channels : int
        Kernel channels C (2 for bidirectional).
    init : str
        "lin", "inv", "legs" or "real" (see ``diagonal_init``).
    disc : str
        "zoh" or "bilinear".
    dt_min, dt_max : float
        log(dt) is drawn uniformly in [log dt_min, log dt_max] per channel.
    lr : float, optional
        Learning-rate hint for log_dt, A (inv_w_real, w_imag) and B.

    Example
    -------
    >>> kernel = DiagonalKernel(d_model=4, d_state=8, init="inv")
    >>> print(kernel(50).shape)
    torch.Size([1, 4, 50])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        init: str = "legs",
        disc: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = None,
    ):
        super().__init__()
        _check_state_size(d_state)
        _check_sizes(d_model, channels, dt_min, dt_max)
        if disc not in DISCRETISATIONS:
            raise ValueError(
                f"unknown discretisation disc={disc!r}; expected one of "
                f"{DISCRETISATIONS}"
            )
        self.d_state = d_state
        self.channels = channels
        self.init = init
        self.disc = disc
        dtype = torch.get_default_dtype()
        Lambda, B = diagonal_init(init, d_state)  # [M] each
        num_modes = d_state // 2
        real = Lambda.real.clamp(max=-_REAL_TOLERANCE)
        self._register_ssm_parameter(
            "log_dt", _log_uniform(d_model, dt_min, dt_max).to(dtype), lr
        )
        self._register_ssm_parameter(
            "inv_w_real",
            torch.log(-real).expand(d_model, num_modes).to(dtype).clone(),
            lr,
        )
        self._register_ssm_parameter(
            "w_imag",
            Lambda.imag.expand(d_model, num_modes).to(dtype).clone(),
            lr,
        )
        self._register_ssm_parameter(
            "B", _real_view(B.expand(d_model, num_modes), dtype), lr
        )
        C = torch.randn(channels, d_model, num_modes, dtype=torch.complex128)
        self.C = nn.Parameter(_real_view(C, dtype))

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return log(dA) and dB of the stored modes.

        Returns
        -------
        log_dA : torch.Tensor
            [H, M] complex (principal log; dA = exp(log_dA)).
        dB : torch.Tensor
            [H, M] complex.

        Example
        -------
        >>> log_dA, dB = DiagonalKernel(4, 8).discretize()
        >>> print(log_dA.shape, dB.shape)
        torch.Size([4, 4]) torch.Size([4, 4])
        """
        dt = torch.exp(self.log_dt).unsqueeze(-1)  # [H, 1]
        Lambda = torch.complex(-torch.exp(self.inv_w_real), self.w_imag)
        B = torch.view_as_complex(self.B)  # [H, M]
        dt_Lambda = dt * Lambda  # [H, M]
        if self.disc == "zoh":
            return dt_Lambda, (torch.exp(dt_Lambda) - 1) / Lambda * B
        denom = 1 - dt_Lambda / 2
        return torch.log((1 + dt_Lambda / 2) / denom), dt * B / denom

    def discrete_system(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the diagonal (dA, dB, C) of the stored modes.

        K_l = 2 Re sum_m C_m dA_m^l dB_m.

        Returns
        -------
        dA : torch.Tensor
            [H, M] complex diagonal.
        dB : torch.Tensor
            [H, M] complex.
        C : torch.Tensor
            [C, H, M] complex.

        Example
        -------
        >>> dA, dB, C = DiagonalKernel(4, 8).discrete_system()
        >>> print(dA.shape, C.shape)
        torch.Size([4, 4]) torch.Size([1, 4, 4])
        """
        log_dA, dB = self.discretize()
        return torch.exp(log_dA), dB, torch.view_as_complex(self.C)

    def _kernel(self, length: int) -> torch.Tensor:
        log_dA, dB = self.discretize()  # [H, M]
        C = torch.view_as_complex(self.C)  # [C, H, M]
        steps = torch.arange(
            length, device=log_dA.device, dtype=log_dA.real.dtype
        )
        vandermonde = torch.exp(log_dA.unsqueeze(-1) * steps)  # [H, M, L]
        taps = torch.einsum("chm,hml->chl", C * dB, vandermonde)  # [C, H, L]
        return 2 * taps.real

    # -- recurrent view -----------------------------------------------------
    def setup_step(self) -> None:
        """Build the diagonal dA, dB and C for ``step``.

        Example
        -------
        >>> kernel = DiagonalKernel(4, 8)
        >>> kernel.setup_step()
        >>> y, state = kernel.step(torch.randn(3, 4), kernel.default_state(3))
        >>> print(y.shape, state.shape)
        torch.Size([3, 4]) torch.Size([3, 4, 4])
        """
        if self.channels != 1:
            raise RuntimeError(
                f"step() needs a single causal kernel channel, this kernel has "
                f"{self.channels} (a bidirectional layer cannot be streamed)"
            )
        dA, dB, C = self.discrete_system()
        self._step_cache = (self._signature(), (dA, dB, C[0]))

    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero state [B, H, M] complex (the stored modes)."""
        C = torch.view_as_complex(self.C)  # [C, H, M], for dtype and device
        return C.new_zeros(batch_size, self.d_model, self.d_state // 2)

    def step(
        self, u: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step x_k = dA x_{k-1} + dB u_k, y_k = 2 Re(C x_k).

        Arguments
        ---------
        u : torch.Tensor
            [B, H] input at step k.
        state : torch.Tensor
            [B, H, M] complex state x_{k-1}.

        Returns
        -------
        y : torch.Tensor
            [B, H], without the D skip.
        state : torch.Tensor
            [B, H, M] the state x_k.
        """
        dA, dB, C = self._checked_step_cache()
        state = dA * state + dB * u.unsqueeze(-1)
        return 2 * (state * C).sum(-1).real, state


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _check_sizes(
    d_model: int, channels: int, dt_min: float, dt_max: float
) -> None:
    if not isinstance(d_model, int) or d_model < 1:
        raise ValueError(f"d_model={d_model!r}: expected an integer >= 1")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels={channels!r}: expected an integer >= 1")
    if not 0 < dt_min <= dt_max:
        raise ValueError(
            f"dt_min={dt_min!r}, dt_max={dt_max!r}: expected "
            "0 < dt_min <= dt_max"
        )


def _log_uniform(size: int, low: float, high: float) -> torch.Tensor:
    """log(dt) ~ U[log low, log high] (S4 paper appendix C.2), float64."""
    log_low, log_high = math.log(low), math.log(high)
    return (
        torch.rand(size, dtype=torch.float64) * (log_high - log_low) + log_low
    )


def _real_view(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Complex [...] -> contiguous real [..., 2] of the given real dtype."""
    return torch.view_as_real(x.contiguous()).to(dtype).contiguous()


def _real_rows(C: torch.Tensor) -> torch.Tensor:
    """Complex rows [..., M] -> real-basis rows [2 Re C, -2 Im C], [..., N]."""
    return torch.cat([2 * C.real, -2 * C.imag], dim=-1)


def _complex_from_rows(rows: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_real_rows``: [..., N] real -> [..., M] complex."""
    num_modes = rows.shape[-1] // 2
    return torch.complex(rows[..., :num_modes], -rows[..., num_modes:]) / 2
