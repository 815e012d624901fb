"""The Mamba mixer, its pre-norm residual block and the bidirectional wrapper.

Mamba (Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv:2312.00752, Figure 3 and section 3.4) mixes a sequence
x [B, L, d_model] as

    x, z   = in_proj(x)                  (the gate z is the second half)
    x      = SiLU(causal depthwise conv(x))
    dt, B, C = x_proj(x)                 (split in this order)
    Delta  = softplus(dt_proj(dt))       (the bias goes in as delta_bias)
    y      = selective_scan(x, Delta, A = -exp(A_log), B, C, D, z)
    out    = out_proj(y)

with parameter names, shapes and initialisation exactly as
``mamba_ssm.modules.mamba_simple.Mamba`` (v1.2), so checkpoints load as they
are. ``Block`` is mamba_ssm's pre-norm residual block with one layer,
x + Mamba(RMSNorm(x)); ``BiMamba`` is SPMamba's bidirectional ``MambaBlock``
(Li et al., "SPMamba: State-space model is all you need in speech
separation", arXiv:2404.02063): one stack of blocks on x, one with its own
weights on the time-reversed x, outputs concatenated.

Shape legend: B batch, L time, d = d_model, D = d_inner = expand * d,
N = d_state, R = dt_rank, W = d_conv, K directions (1 or 2).

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_s4.ssm import counting
from speechbrain_s4.ssm.scan import BACKENDS, selective_scan

__all__ = ["BiMamba", "Block", "Mamba", "RMSNorm"]

DT_INITS = ("random", "constant")

# BiMamba splits its batch into groups of sequences whose [B, L, 2 D]
# tensors hold about this many elements (2 MB in float32): small enough to
# be reused by the allocator instead of page-faulted in, large enough for
# efficient matmuls.
_GROUP_ELEMENTS = 2**19


def _at_least_float32(tensor):
    """float32 for half tensors, unchanged for float32/float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / sqrt(mean(x^2) + eps) * weight.

    Computed in float32 (float64 stays float64) and cast back, like
    mamba_ssm's ``rms_norm_ref``; no bias, weight initialised to ones.

    Arguments
    ---------
    d : int
        Size of the last dimension.
    eps : float
        Added to the mean square.

    Example
    -------
    >>> norm = RMSNorm(16)
    >>> norm(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x [..., d]."""
        x32 = _at_least_float32(x)
        rms = torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        return (x32 * rms * _at_least_float32(self.weight)).to(x.dtype)


class Mamba(nn.Module):
    """The Mamba mixer (mamba_ssm ``Mamba``, v1.2), [B, L, d] -> [B, L, d].

    Arguments
    ---------
    d_model : int
        Model width d.
    d_state : int
        SSM state size N.
    d_conv : int
        Width W of the causal depthwise convolution.
    expand : int
        Expansion factor E; d_inner D = E * d.
    dt_rank : int or "auto"
        Rank R of the Delta projection; "auto" is ceil(d / 16).
    dt_min, dt_max : float
        Range of the initial step sizes (log-uniform).
    dt_init : str
        "random" (uniform in +-R^-1/2 * dt_scale) or "constant" for the
        dt_proj weight.
    dt_scale : float
        Scale of the dt_proj weight initialisation.
    dt_init_floor : float
        Smallest initial step size.
    conv_bias : bool
        Bias in the depthwise convolution.
    bias : bool
        Biases in in_proj and out_proj.
    backend : str
        selective_scan backend: "auto", "ref", "torch" or "cuda".

    Example
    -------
    >>> mixer = Mamba(d_model=16, d_state=4)
    >>> mixer(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if dt_init not in DT_INITS:
            raise ValueError(
                f"Mamba: unknown dt_init {dt_init!r}; expected one of "
                f"{', '.join(DT_INITS)}"
            )
        if backend not in BACKENDS:
            raise ValueError(
                f"Mamba: unknown backend {backend!r}; expected one of "
                f"{', '.join(BACKENDS)}"
            )
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.backend = backend

        # Same creation order as mamba_ssm, so a seed gives the same weights.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        # Padding W - 1 on both sides and keeping the first L outputs is
        # the causal (left-padded) convolution; forward pads only the left.
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(
            self.d_inner, self.dt_rank + 2 * d_state, bias=False
        )
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # dt_proj.weight keeps the variance of Delta independent of R.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # Initial Delta = softplus(bias) log-uniform in [dt_min, dt_max]:
        # the bias is softplus^-1(dt) = dt + log(1 - exp(-dt)).
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # mamba_ssm's _init_weights must not zero this bias.
        self.dt_proj.bias._no_reinit = True

        # S4D-Real: A = -(1, 2, ..., N) for every channel, kept in float32
        # and without weight decay, like D.
        A = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix x [B, L, d] -> [B, L, d]."""
        return _run_mixers([self], [x])[0]

    def allocate_state(
        self, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero streaming state for ``step``.

        Arguments
        ---------
        batch_size : int
            Number of streams B.

        Returns
        -------
        conv_state : torch.Tensor
            The last W inputs of the convolution, [B, D, W].
        ssm_state : torch.Tensor
            The SSM state h, [B, D, N] (at least float32).

        Example
        -------
        >>> conv_state, ssm_state = Mamba(16, d_state=4).allocate_state(3)
        >>> conv_state.shape, ssm_state.shape
        (torch.Size([3, 32, 4]), torch.Size([3, 32, 4]))
        """
        weight = self.conv1d.weight
        conv_state = weight.new_zeros(batch_size, self.d_inner, self.d_conv)
        ssm_state = _at_least_float32(self.A_log).new_zeros(
            batch_size, self.d_inner, self.d_state
        )
        return conv_state, ssm_state

    def step(
        self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One time step of ``forward`` (MODELS.md 3.7), for streaming.

        Arguments
        ---------
        x_t : torch.Tensor
            Input frame, [B, d].
        state : tuple of torch.Tensor
            (conv_state [B, D, W], ssm_state [B, D, N]) from
            ``allocate_state`` or the previous step; not modified.

        Returns
        -------
        y_t : torch.Tensor
            Output frame, [B, d].
        state : tuple of torch.Tensor
            The updated (conv_state, ssm_state).

        Example
        -------
        >>> mixer = Mamba(16, d_state=4)
        >>> y, state = mixer.step(torch.randn(3, 16), mixer.allocate_state(3))
        >>> y.shape
        torch.Size([3, 16])
        """
        conv_state, ssm_state = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # [B, D] each
        # shift the new input into the window of the last W inputs
        conv_state = torch.cat([conv_state[:, :, 1:], x[:, :, None]], dim=-1)
        x = (conv_state * self.conv1d.weight[:, 0]).sum(-1)  # [B, D]
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = self.x_proj(x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dtype = ssm_state.dtype
        x, z, B, C = x.to(dtype), z.to(dtype), B.to(dtype), C.to(dtype)
        delta = F.softplus(
            F.linear(dt, self.dt_proj.weight).to(dtype)
            + self.dt_proj.bias.to(dtype)
        )  # [B, D]
        A = -torch.exp(self.A_log.to(dtype))  # [D, N]
        # eq. (2a): h <- exp(Delta A) h + Delta x B
        ssm_state = (
            torch.exp(delta[:, :, None] * A) * ssm_state
            + (delta * x)[:, :, None] * B[:, None, :]
        )  # [B, D, N]
        y = (ssm_state * C[:, None, :]).sum(-1) + self.D.to(dtype) * x  # [B, D]
        y = (y * F.silu(z)).to(x_t.dtype)
        return self.out_proj(y), (conv_state, ssm_state)


def _run_mixers(mixers, inputs):
    """Run K Mamba mixers on their inputs with ONE selective scan.

    The K scans are stacked along the channel axis ([B, L, K D]): each
    channel keeps its own A, D and Delta bias, and B, C become K groups of
    D channels each (the grouped layout of ``selective_scan``). The
    projections stay per mixer. With K = 1 this is exactly ``Mamba.forward``;
    with the two directions of a BiMamba it replaces two scans by one, which
    halves the number of time steps the CPU scan runs.

    Without autograd, the per-mixer projections write straight into the
    stacked tensors (matmuls into strided column blocks), which saves the
    copies that stacking costs; with autograd the same values are stacked
    with ``torch.cat``.

    Arguments
    ---------
    mixers : list of Mamba
        K mixers with the same sizes.
    inputs : list of torch.Tensor
        K inputs [B, L, d], each in the time order its mixer scans.

    Returns
    -------
    list of torch.Tensor
        K outputs [B, L, d].
    """
    first, K = mixers[0], len(mixers)
    needs_grad = torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs)
        or any(p.requires_grad for m in mixers for p in m.parameters())
    )
    if needs_grad or torch.is_autocast_enabled(inputs[0].device.type):
        x, z, dt, B, C = _projections_autograd(mixers, inputs)
    else:
        x, z, dt, B, C = _projections_inference(mixers, inputs)
    # x, z, dt [B, L, K D]; B, C [B, L, K, N]
    A = -torch.exp(torch.cat([_at_least_float32(m.A_log) for m in mixers]))
    y = selective_scan(
        x.transpose(1, 2),  # [B, K D, L] views of channels-last data
        dt.transpose(1, 2),
        A,  # [K D, N]
        B.permute(0, 2, 3, 1) if K > 1 else B[:, :, 0].transpose(1, 2),
        C.permute(0, 2, 3, 1) if K > 1 else C[:, :, 0].transpose(1, 2),
        D=torch.cat([_at_least_float32(m.D) for m in mixers]),
        z=z.transpose(1, 2),
        delta_bias=torch.cat(
            [_at_least_float32(m.dt_proj.bias) for m in mixers]
        ),
        delta_softplus=True,
        backend=first.backend,
    ).transpose(1, 2)  # [B, L, K D]
    d_inner = first.d_inner
    return [
        m.out_proj(y[..., k * d_inner : (k + 1) * d_inner])
        for k, m in enumerate(mixers)
    ]


def _conv_weights(mixers):
    """The K depthwise convolutions stacked: weight [K D, 1, W], bias."""
    weight = torch.cat([m.conv1d.weight for m in mixers])
    if mixers[0].conv1d.bias is None:
        return weight, None
    return weight, torch.cat([m.conv1d.bias for m in mixers])


def _projections_autograd(mixers, inputs):
    """x, z, raw Delta [B, L, K D] and B, C [B, L, K, N] (differentiable)."""
    first = mixers[0]
    d_inner, d_state, dt_rank = first.d_inner, first.d_state, first.dt_rank

    def stack(tensors):  # along channels
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=-1)

    projected = [
        m.in_proj(x) for m, x in zip(mixers, inputs, strict=True)
    ]  # [B, L, 2D]
    x = stack([p[..., :d_inner] for p in projected])  # [B, L, K D]
    z = stack([p[..., d_inner:] for p in projected])  # [B, L, K D]
    x = F.silu(_causal_depthwise_conv(x, *_conv_weights(mixers)))

    dt_parts, B_parts, C_parts = [], [], []
    for k, m in enumerate(mixers):
        x_k = x[..., k * d_inner : (k + 1) * d_inner]
        dt, B, C = m.x_proj(x_k).split([dt_rank, d_state, d_state], dim=-1)
        dt_parts.append(dt)  # [B, L, R]
        B_parts.append(B)  # [B, L, N]
        C_parts.append(C)
    # Delta before its bias: one matmul with a block-diagonal weight
    dt_weight = torch.block_diag(*[m.dt_proj.weight for m in mixers])
    delta = F.linear(stack(dt_parts), dt_weight)  # [B, L, K D]
    B = torch.stack(B_parts, dim=2)  # [B, L, K, N]
    C = torch.stack(C_parts, dim=2)
    return x, z, delta, B, C


def _projections_inference(mixers, inputs):
    """``_projections_autograd`` without stacking copies (no autograd).

    Every per-mixer matmul writes its [B L, D] (or [B L, R + 2N]) result
    into its column block of the stacked output (row stride K D).
    """
    first = mixers[0]
    d_inner, d_state, dt_rank = first.d_inner, first.d_state, first.dt_rank
    K = len(mixers)
    batch, length = inputs[0].shape[:2]
    tokens = batch * length
    x_in = inputs[0].new_empty(tokens, 2, K, d_inner)  # (x | z, mixer)
    x_dbl = inputs[0].new_empty(tokens, K, dt_rank + 2 * d_state)
    delta = inputs[0].new_empty(tokens, K, d_inner)
    for k, (m, x) in enumerate(zip(mixers, inputs, strict=True)):
        x = x.reshape(tokens, -1)
        for half in range(2):  # x, then the gate z
            rows = slice(half * d_inner, (half + 1) * d_inner)
            weight = m.in_proj.weight[rows].t()
            if m.in_proj.bias is None:
                torch.mm(x, weight, out=x_in[:, half, k])
            else:
                torch.addmm(
                    m.in_proj.bias[rows], x, weight, out=x_in[:, half, k]
                )
    x_in = x_in.view(batch, length, 2, K * d_inner)
    x = _causal_depthwise_conv(x_in[:, :, 0], *_conv_weights(mixers))
    x = F.silu(x, inplace=True)  # [B, L, K D]
    flat = x.view(tokens, K, d_inner)
    for k, m in enumerate(mixers):
        torch.mm(flat[:, k], m.x_proj.weight.t(), out=x_dbl[:, k])
        torch.mm(x_dbl[:, k, :dt_rank], m.dt_proj.weight.t(), out=delta[:, k])
    x_dbl = x_dbl.view(batch, length, K, -1)
    B = x_dbl[..., dt_rank : dt_rank + d_state]  # [B, L, K, N]
    C = x_dbl[..., dt_rank + d_state :]
    delta = delta.view(batch, length, K * d_inner)
    return x, x_in[:, :, 1], delta, B, C


def _causal_depthwise_conv(x, weight, bias):
    """Depthwise convolution over time, left-padded by W - 1 (causal).

    Channels-last and written as W shifted multiply-adds into one output
    (no padded copy): the inputs come from a Linear and the scan wants
    channels-last too, so this avoids two transposes around ``F.conv1d``.

    Arguments
    ---------
    x : torch.Tensor
        [B, L, C].
    weight : torch.Tensor
        [C, 1, W] (nn.Conv1d depthwise layout).
    bias : torch.Tensor or None
        [C].

    Returns
    -------
    torch.Tensor
        [B, L, C]: out_t = bias + sum_w weight[:, 0, w] x_{t - W + 1 + w}.
    """
    length, width = x.shape[1], weight.shape[-1]
    if counting.active():  # no operation counter sees the shifted sums
        counting.note("conv", x.shape[0] * length * x.shape[2] * width)
    taps = weight[:, 0]  # [C, W]
    # the tap on x_t, then the taps on x_{t - s} for shifts s = 1 .. W - 1
    if bias is None:
        out = x * taps[:, -1]
    else:
        out = torch.addcmul(bias, x, taps[:, -1])
    for shift in range(1, min(width, length)):
        out[:, shift:].addcmul_(x[:, : length - shift], taps[:, -1 - shift])
    return out


class Block(nn.Module):
    """mamba_ssm's pre-norm residual block, one layer: x + Mamba(RMSNorm(x)).

    Submodules are named ``mixer`` and ``norm`` as in mamba_ssm (v1.2,
    ``fused_add_norm=False``), so its state dict keys are ``mixer.*`` and
    ``norm.weight``. The Mamba arguments are the mixer's (see ``Mamba``).

    Arguments
    ---------
    d_model : int
        Model width d.
    d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
    dt_init_floor, conv_bias, bias, backend :
        Passed to ``Mamba``.
    norm_eps : float
        RMSNorm epsilon.

    Example
    -------
    >>> block = Block(16, d_state=4, expand=4)
    >>> block(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.mixer = Mamba(
            d_model,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_rank=dt_rank,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_init_floor=dt_init_floor,
            conv_bias=conv_bias,
            bias=bias,
            backend=backend,
        )
        self.norm = RMSNorm(d_model, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, d] -> x + Mamba(RMSNorm(x)) [B, L, d]."""
        return x + self.mixer(self.norm(x))

    def allocate_state(self, batch_size: int):
        """The mixer's zero streaming state (see ``Mamba.allocate_state``)."""
        return self.mixer.allocate_state(batch_size)

    def step(self, x_t: torch.Tensor, state):
        """One time step: x_t [B, d] -> (x_t + mixer step, new state)."""
        y_t, state = self.mixer.step(self.norm(x_t), state)
        return x_t + y_t, state


class BiMamba(nn.Module):
    """SPMamba's bidirectional block (``MambaBlock``): [B, L, d] -> [B, L, 2d].

    ``forward_blocks`` (n_layer pre-norm Blocks) run on x and
    ``backward_blocks`` (their own weights) on the time-reversed x; the
    output is cat([forward, flip(backward)], -1). As in SPMamba, the
    out_proj weights are redrawn by mamba_ssm's ``_init_weights(n_layer)``
    (kaiming-uniform(a=sqrt 5) / sqrt(n_layer)) and the Delta bias is kept.

    At each layer the two directions run as one selective scan with the
    channels of both stacked (``_run_mixers``); the result equals running
    the two Blocks separately.

    Arguments
    ---------
    d_model : int
        Model width d.
    n_layer : int
        Blocks per direction.
    d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
    dt_init_floor, conv_bias, bias, backend, norm_eps :
        Passed to every ``Block``.

    Example
    -------
    >>> bimamba = BiMamba(16, d_state=4, expand=4)
    >>> bimamba(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        d_model: int,
        n_layer: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        block_args = {
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "dt_rank": dt_rank,
            "dt_min": dt_min,
            "dt_max": dt_max,
            "dt_init": dt_init,
            "dt_scale": dt_scale,
            "dt_init_floor": dt_init_floor,
            "conv_bias": conv_bias,
            "bias": bias,
            "backend": backend,
            "norm_eps": norm_eps,
        }
        self.n_layer = n_layer
        self.forward_blocks = nn.ModuleList(
            Block(d_model, **block_args) for _ in range(n_layer)
        )
        self.backward_blocks = nn.ModuleList(
            Block(d_model, **block_args) for _ in range(n_layer)
        )
        self.apply(lambda module: _init_weights(module, n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, d] -> [B, L, 2d] (forward, then backward direction).

        A large batch runs in groups of sequences: the mixers' [B, L, 2 D]
        temporaries then stay a few MB (fresh tensors of tens of MB cost
        more in page faults than the arithmetic on them).
        """
        d_inner = self.forward_blocks[0].mixer.d_inner
        group = max(1, _GROUP_ELEMENTS // (2 * d_inner * max(1, x.shape[1])))
        if x.shape[0] <= group:
            return self._forward(x)
        return torch.cat([self._forward(part) for part in x.split(group)])

    def _forward(self, x):
        forward_x, backward_x = x, x.flip(1)  # backward runs in reversed time
        for forward_block, backward_block in zip(
            self.forward_blocks, self.backward_blocks, strict=True
        ):
            forward_out, backward_out = _run_mixers(
                [forward_block.mixer, backward_block.mixer],
                [
                    forward_block.norm(forward_x),
                    backward_block.norm(backward_x),
                ],
            )
            forward_x = forward_x + forward_out
            backward_x = backward_x + backward_out
        return torch.cat([forward_x, backward_x.flip(1)], dim=-1)


def _init_weights(module, n_layer):
    """mamba_ssm ``_init_weights`` (mixer_seq_simple, v1.2), as SPMamba uses it.

    Linear biases not marked ``_no_reinit`` become zero; every
    ``out_proj.weight`` is redrawn kaiming-uniform(a=sqrt 5) and divided by
    sqrt(n_layer) (one residual per layer). Applied with ``Module.apply``, in
    the same module order, so a seed reproduces the reference weights.
    """
    if isinstance(module, nn.Linear) and module.bias is not None:
        if not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    for name, param in module.named_parameters():
        if name == "out_proj.weight":
            nn.init.kaiming_uniform_(param, a=math.sqrt(5))
            with torch.no_grad():
                param /= math.sqrt(n_layer)
