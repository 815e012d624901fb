"""The S4 layer as S4M uses it: SSM convolution, GELU, 1x1 conv and GLU.

S4 (Gu, Goel and Re, "Efficiently Modeling Long Sequences with Structured
State Spaces", ICLR 2022) maps each of H channels through its own linear
state-space model. The layer here is the one JusperLee/S4M builds with
``S4(d_model, d_state=16, bidirectional=True, transposed=True)`` from its
vendored ``s4.py`` (MODELS.md section 2.5):

    k = kernel(L)                 # [C, H, L], C = 2 when bidirectional
    y = k * u + D u               # FFT convolution, two-sided when C = 2
    y = dropout(GELU(y))          # exact erf GELU
    y = GLU(Conv1d(H, 2H, 1)(y))  # first half * sigmoid(second half)

A unidirectional layer also has a recurrent view (``setup_step``,
``default_state``, ``step``) that streams the same function one sample at a
time.

Shape legend: B batch, H channels (d_model), L length, N state size.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_s4 import cpu_kernels
from speechbrain_s4.cpu_kernels import pointwise_conv1d
from speechbrain_s4.ssm.fftconv import spectral_conv_full
from speechbrain_s4.ssm.s4_kernel import (
    DIAGONAL_INITS,
    DISCRETISATIONS,
    DiagonalKernel,
    DPLRKernel,
)

__all__ = ["S4"]

MODES = ("dplr", "diag")


class S4(nn.Module):
    """S4 layer: SSM convolution + D skip, GELU, dropout, 1x1 conv, GLU.

    Arguments
    ---------
    d_model : int
        Number of channels H.
    d_state : int
        State size N of each channel's SSM (even).
    bidirectional : bool
        Two kernels, one over the past and present and one over the future
        (see ``fft_conv`` for the one-step offset of the backward kernel).
    mode : str
        "dplr" (S4, HiPPO-LegS, ``DPLRKernel``) or "diag" (S4D,
        ``DiagonalKernel``).
    init : str
        "legs" for dplr; "lin", "inv", "legs" or "real" for diag.
    disc : str
        "bilinear" or "zoh" (diag only; dplr is bilinear).
    dt_min, dt_max : float
        Range of the log-uniform initial step sizes.
    conj_symmetric : bool
        True (default): the true SSM kernel. False: S4M's CPU Cauchy fallback,
        only to reproduce checkpoints produced that way (dplr only; see
        ``DPLRKernel``).
    dropout : float
        Dropout after the GELU.
    lr : float, optional
        Learning-rate hint (``_optim``) for the SSM parameters.

    Example
    -------
    >>> layer = S4(d_model=8, d_state=16, bidirectional=True)
    >>> print(layer(torch.randn(2, 8, 50)).shape)
    torch.Size([2, 8, 50])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        bidirectional: bool = False,
        mode: str = "dplr",
        init: str = "legs",
        disc: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conj_symmetric: bool = True,
        dropout: float = 0.0,
        lr: float | None = None,
    ):
        super().__init__()
        channels = 2 if bidirectional else 1
        if mode == "dplr":
            if init != "legs":
                raise ValueError(
                    f"S4(mode='dplr') supports init='legs' only, got "
                    f"init={init!r}; use mode='diag' for {DIAGONAL_INITS}"
                )
            if disc != "bilinear":
                raise ValueError(
                    f"S4(mode='dplr') is discretised with disc='bilinear', got "
                    f"disc={disc!r}; use mode='diag' for {DISCRETISATIONS}"
                )
            self.kernel = DPLRKernel(
                d_model,
                d_state,
                channels=channels,
                dt_min=dt_min,
                dt_max=dt_max,
                conj_symmetric=conj_symmetric,
                lr=lr,
            )
        elif mode == "diag":
            if not conj_symmetric:
                raise ValueError(
                    "conj_symmetric=False reproduces S4M's CPU Cauchy fallback "
                    "of the DPLR kernel and exists only for mode='dplr'"
                )
            self.kernel = DiagonalKernel(
                d_model,
                d_state,
                channels=channels,
                init=init,
                disc=disc,
                dt_min=dt_min,
                dt_max=dt_max,
                lr=lr,
            )
        else:
            raise ValueError(
                f"unknown S4 mode={mode!r}; expected one of {MODES}"
            )
        self.d_model = d_model
        self.bidirectional = bidirectional
        self.D = nn.Parameter(torch.randn(d_model))  # skip gains, N(0, 1)
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)

    def forward(
        self, u: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the layer.

        Arguments
        ---------
        u : torch.Tensor
            [B, H, L] input, channels first.
        residual : torch.Tensor, optional
            [B, H, L] added to the output (a residual block's skip path;
            on CPU inference the sum is fused with the GLU).

        Returns
        -------
        torch.Tensor
            [B, H, L]
        """
        if u.dim() != 3 or u.shape[1] != self.d_model:
            raise ValueError(
                f"S4 expects input [B, H={self.d_model}, L] (channels first), "
                f"got shape {tuple(u.shape)}"
            )
        # y = k * u (+ D u below; fftconv.fft_conv), with the kernel's
        # spectrum reused across calls where possible
        k_f = self.kernel.spectrum(u.shape[-1])  # [H, n/2 + 1]
        return self.output(spectral_conv_full(u, k_f), u, residual)

    def output(
        self,
        y: torch.Tensor,
        u: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer after its SSM convolution: D skip, GELU, dropout, 1x1
        conv, GLU (and a residual's sum).

        Arguments
        ---------
        y : torch.Tensor
            [B, H, n >= L] the SSM's output without the D skip; its first L
            frames are used (an FFT convolution's untrimmed output, or the
            recurrent view's outputs, n = L).
        u : torch.Tensor
            [B, H, L] the layer input.
        residual : torch.Tensor, optional
            [B, H, L] added to the output.

        Returns
        -------
        torch.Tensor
            [B, H, L]
        """
        length = u.shape[-1]
        fused = cpu_kernels.usable(u, self.D) and (
            self.dropout.p == 0 or not self.dropout.training
        )
        if fused and y.dtype == u.dtype:  # trim, D skip and GELU in one pass
            h = cpu_kernels.gelu_skip(y, u, self.D)
        else:  # in (at least) float32, back to the input's dtype
            h = torch.addcmul(
                y[..., :length], self.D.unsqueeze(-1).to(y.dtype), u.to(y.dtype)
            ).to(u.dtype)
            h = self.dropout(F.gelu(h))  # [B, H, L]
        z = pointwise_conv1d(self.output_linear, h)  # [B, 2H, L]
        if residual is None:
            return F.glu(z, dim=1)  # [B, H, L]
        if fused and residual.dtype == z.dtype:
            return cpu_kernels.glu_residual(z, residual)
        return residual + F.glu(z, dim=1)

    # -- recurrent view -----------------------------------------------------
    def setup_step(self) -> None:
        """Prepare ``step`` from the current parameters (unidirectional only).

        Call it again after the parameters change; ``step`` refuses stale
        matrices.

        Example
        -------
        >>> layer = S4(d_model=4, d_state=8).eval()
        >>> layer.setup_step()
        >>> state = layer.default_state(2)
        >>> y, state = layer.step(torch.randn(2, 4), state)
        >>> print(y.shape)
        torch.Size([2, 4])
        """
        if self.bidirectional:
            raise RuntimeError(
                "a bidirectional S4 layer looks at future samples and has no "
                "recurrent view; build it with bidirectional=False to stream"
            )
        self.kernel.setup_step()

    def default_state(self, batch_size: int) -> torch.Tensor:
        """Zero initial state for ``step``: [B, H, N] (real for dplr, complex
        [B, H, N/2] for diag).

        Arguments
        ---------
        batch_size : int
            B.

        Returns
        -------
        torch.Tensor
        """
        return self.kernel.default_state(batch_size)

    def step(
        self, u: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Process one time step; equal to ``forward`` on the whole sequence.

        Arguments
        ---------
        u : torch.Tensor
            [B, H] input at step t.
        state : torch.Tensor
            The SSM state after step t-1 (``default_state`` at t = 0).

        Returns
        -------
        y : torch.Tensor
            [B, H] output at step t.
        state : torch.Tensor
            The SSM state after step t.
        """
        y, state = self.kernel.step(u, state)  # [B, H]
        y = self.dropout(F.gelu(y + self.D * u))  # [B, H]
        y = F.linear(
            y, self.output_linear.weight[..., 0], self.output_linear.bias
        )  # [B, 2H]
        return F.glu(y, dim=-1), state  # [B, H]
