"""SPMamba: TF-GridNet with bidirectional Mamba instead of BLSTMs.

Li et al., "SPMamba: State-space model is all you need in speech
separation", arXiv:2404.02063 (2024), Figure 1, built on TF-GridNet (Wang et
al., "TF-GridNet: Making time-frequency domain models great again for
monaural speaker separation", ICASSP 2023). The code follows the public
reference implementation (``JusperLee/SPMamba``, ``look2hear/models/
SPMamba.py``, specified in MODELS.md section 5) and reads like the figure:

1. the mixture is divided by its standard deviation (unbiased, over all
   samples; the estimates are multiplied back at the end);
2. an STFT (periodic Hann window, centred, reflect padding) gives the real
   and imaginary parts as two channels, [B, 2, L, F];
3. a 3x3 Conv2d and a one-group GroupNorm embed them into C channels;
4. ``n_layers`` GridNet blocks, each made of
   * the intra-frame path (along frequency, paper section 3.3 "time-domain
     feature module"): channel layer norm, unfold ``emb_ks`` neighbouring
     bins into one C * emb_ks vector, a bidirectional Mamba (BMamba, paper
     section 3.2), a transposed 1-D convolution back to C channels, and a
     residual;
   * the inter-frame path (along time, the paper's "frequency-domain feature
     module"): the same on the frame sequence of every bin;
   * full-band multi-head self-attention over frames (TF-GridNet's, with
     per-head 1x1 convolutions, PReLU and layer norms over (channels,
     frequency)), and a residual;
5. a 3x3 ConvTranspose2d maps the C channels to the real and imaginary
   parts of each speaker's spectrum (complex spectral mapping, not masking);
6. the inverse STFT returns each speaker's waveform at the input length.

Differences from the reference, all outside the fixture's domain:

* silence: the reference divides by the std without an epsilon (an all-zero
  input gives NaN). Here the input is divided by the std only when it is
  positive, and the output is multiplied by the std, so silence gives zeros
  (and finite gradients); any other input is computed exactly as before;
* inputs shorter than ``emb_ks`` frames are zero-padded in the blocks (the
  reference fails on them); inputs of at most n_fft / 2 samples, which the
  reflect-padded STFT cannot take, raise a ValueError;
* zero-padded items of a batch (``lengths``) are separated alone, so they
  get their stand-alone result; the STFTs run in float32 under autocast;
* the attention heads' 1x1 convolutions, PReLUs and layer norms are stored
  stacked ([H * E, C] instead of H separate [E, C]); ``speechbrain_s4.
  convert.load_reference_checkpoint`` maps the reference's keys;
* the paths' transposed convolutions run as a matmul and an overlap-add
  (same sums, faster on CPU), and in training each path is recomputed in
  the backward pass instead of keeping its activations
  (``checkpoint_mamba``).

Cost of 1 s at 8 kHz: 116.4 GMACs (``speechbrain_s4.macs.count_macs``,
MODELS.md 1.4: Mamba about 110 G, the paths' folds 6 G, attention 0.5 G);
on one CPU thread about 2x the CPU time of SpeechBrain's Sepformer with the
compiled "cpp" selective scan and 5x with the pure-PyTorch "torch" scan
(``speechbrain-s4 benchmark``). Training on 4 s crops peaks at 3.8 GB of
memory.

Shape legend: B batch, T samples, S speakers, C embedding channels
(emb_dim), L STFT frames, F frequency bins (n_fft / 2 + 1), K unfold kernel
(emb_ks), H attention heads, E query/key channels per head.

Authors
 * speechbrain_s4 contributors 2026
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from speechbrain_s4.models.arguments import records_arguments
from speechbrain_s4.ssm.mamba import BiMamba

__all__ = [
    "SPMamba",
    "GridNetBlock",
    "BMambaPath",
    "FullBandAttention",
    "HeadProjection",
    "ChannelNorm",
    "ChannelFrequencyNorm",
    "stft_geometry",
]


def stft_geometry(sample_rate: int) -> tuple[int, int]:
    """The reference STFT for a sampling rate: 32 ms window, 8 ms hop.

    That is n_fft 256 / hop 64 at 8 kHz and 512 / 128 at 16 kHz, the
    configurations of the reference recipes (MODELS.md 5.5); n_fft is kept
    even so that the spectrum has n_fft / 2 + 1 bins.

    Arguments
    ---------
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    tuple of int
        (n_fft, hop_length) in samples.

    Example
    -------
    >>> stft_geometry(8000), stft_geometry(16000)
    ((256, 64), (512, 128))
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    n_fft = 2 * max(1, round(0.016 * sample_rate))
    return n_fft, max(1, n_fft // 4)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of [B, C, L, F] (TF-GridNet's
    ``LayerNormalization4D``): statistics per (frame, bin), biased variance,
    eps inside the square root, a gain and bias per channel.

    Arguments
    ---------
    channels : int
        C.
    eps : float
        Added to the variance.

    Example
    -------
    >>> norm = ChannelNorm(16)
    >>> norm(torch.randn(2, 16, 10, 33)).shape
    torch.Size([2, 16, 10, 33])
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x [B, C, L, F] over C."""
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, L, F]
        var = x.var(dim=1, unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]


class ChannelFrequencyNorm(nn.Module):
    """Layer norm over (channels, frequency) of each frame (TF-GridNet's
    ``LayerNormalization4DCF``), for G groups of channels at once.

    x [B, G * C, L, F] is normalised per (batch, group, frame) over the
    group's C channels and F bins; gain and bias are [G, C, F]. With G = 1
    this is the reference norm; G = H normalises the H attention heads
    separately, as the reference does with one norm per head.

    Arguments
    ---------
    groups : int
        G.
    channels : int
        C, channels per group.
    n_freqs : int
        F.
    eps : float
        Added to the variance.

    Example
    -------
    >>> norm = ChannelFrequencyNorm(2, 4, 33)
    >>> norm(torch.randn(3, 8, 10, 33)).shape
    torch.Size([3, 8, 10, 33])
    """

    def __init__(
        self, groups: int, channels: int, n_freqs: int, eps: float = 1e-5
    ):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(groups, channels, n_freqs))
        self.bias = nn.Parameter(torch.zeros(groups, channels, n_freqs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x [B, G * C, L, F] per group and frame."""
        batch, _, frames, n_freqs = x.shape
        x = x.view(batch, self.groups, -1, frames, n_freqs)  # [B, G, C, L, F]
        mean = x.mean(dim=(2, 4), keepdim=True)  # [B, G, 1, L, 1]
        var = x.var(dim=(2, 4), unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        x_hat = x_hat * self.weight[:, :, None] + self.bias[:, :, None]
        return x_hat.view(batch, -1, frames, n_freqs)


class GroupPReLU(nn.Module):
    """PReLU with one slope per group of channels of [B, G * C, L, F].

    The reference gives every attention head its own single-slope
    ``nn.PReLU()``; stacking the heads keeps one slope per head.

    Arguments
    ---------
    groups : int
        G, number of slopes.
    init : float
        Initial slope (PyTorch's 0.25).

    Example
    -------
    >>> act = GroupPReLU(2)
    >>> act(torch.randn(3, 8, 10, 33)).shape
    torch.Size([3, 8, 10, 33])
    """

    def __init__(self, groups: int, init: float = 0.25):
        super().__init__()
        self.weight = nn.Parameter(torch.full((groups,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """max(0, x) + slope * min(0, x), slope per group."""
        slope = self.weight.repeat_interleave(x.shape[1] // len(self.weight))
        return F.prelu(x, slope)


class HeadProjection(nn.Module):
    """Queries, keys or values of all heads: 1x1 Conv2d, PReLU, layer norm.

    For each head h the reference computes LN_(E,F)(PReLU_h(Conv1x1_h(x)))
    (MODELS.md 5.2 step 1); here the H convolutions are one Conv2d with
    H * E outputs (head-major), followed by per-head PReLU slopes and
    per-head norms over (E, F).

    Arguments
    ---------
    in_channels : int
        C.
    heads : int
        H.
    head_channels : int
        E (queries and keys) or C / H (values).
    n_freqs : int
        F.
    eps : float
        Norm epsilon.

    Example
    -------
    >>> proj = HeadProjection(16, heads=4, head_channels=4, n_freqs=33)
    >>> proj(torch.randn(2, 16, 10, 33)).shape
    torch.Size([2, 16, 10, 33])
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        head_channels: int,
        n_freqs: int,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, heads * head_channels, 1)
        self.act = GroupPReLU(heads)
        self.norm = ChannelFrequencyNorm(heads, head_channels, n_freqs, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, L, F] -> [B, H * E, L, F]."""
        return self.norm(self.act(self.conv(x)))


class FullBandAttention(nn.Module):
    """TF-GridNet's full-band self-attention over frames, plus a residual.

    Each frame's (channel, frequency) map is one token: per head,
    scores = Q K^T / sqrt(E F) over the L frames, softmax over keys, times
    V; the heads are concatenated (head-major channels) and projected by a
    1x1 Conv2d, PReLU and a (C, F) layer norm (MODELS.md 5.2). No mask, no
    positional encoding.

    Arguments
    ---------
    channels : int
        C (divisible by the number of heads).
    n_freqs : int
        F.
    heads : int
        H.
    approx_qk_dim : int
        Approximate size E * F of a query; E = ceil(approx_qk_dim / F).
    eps : float
        Norm epsilon.

    Example
    -------
    >>> attention = FullBandAttention(16, n_freqs=33, heads=4, approx_qk_dim=64)
    >>> attention(torch.randn(2, 16, 10, 33)).shape
    torch.Size([2, 16, 10, 33])
    """

    def __init__(
        self,
        channels: int,
        n_freqs: int,
        heads: int = 4,
        approx_qk_dim: int = 512,
        eps: float = 1e-5,
    ):
        super().__init__()
        if channels % heads:
            raise ValueError(
                f"the attention needs emb_dim divisible by attn_n_head; got "
                f"emb_dim={channels}, attn_n_head={heads}"
            )
        self.heads = heads
        self.qk_channels = math.ceil(approx_qk_dim / n_freqs)  # E
        self.query = HeadProjection(
            channels, heads, self.qk_channels, n_freqs, eps
        )
        self.key = HeadProjection(
            channels, heads, self.qk_channels, n_freqs, eps
        )
        self.value = HeadProjection(
            channels, heads, channels // heads, n_freqs, eps
        )
        self.output = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            GroupPReLU(1),
            ChannelFrequencyNorm(1, channels, n_freqs, eps),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, L, F] -> x + attention(x) [B, C, L, F]."""
        batch, channels, frames, n_freqs = x.shape
        H = self.heads

        def tokens(t):  # [B, H * c, L, F] -> [B, H, L, c * F]
            t = t.view(batch, H, -1, frames, n_freqs).transpose(2, 3)
            return t.reshape(batch, H, frames, -1)

        query = tokens(self.query(x))  # [B, H, L, E F]
        key = tokens(self.key(x))  # [B, H, L, E F]
        value = tokens(self.value(x))  # [B, H, L, C/H F]
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
        mixed = scores.softmax(dim=-1) @ value  # [B, H, L, C/H F]
        mixed = mixed.view(batch, H, frames, channels // H, n_freqs)
        mixed = mixed.transpose(2, 3).reshape(x.shape)  # [B, C, L, F]
        return x + self.output(mixed)


class BMambaPath(nn.Module):
    """One GridNet path: norm, unfold, BMamba, transposed-conv fold, residual.

    Along the last axis of x [B, C, L, F] (the intra-frame path; the block
    transposes x for the inter-frame path): the channel layer norm, then
    every position gets the C * K vector of its K neighbours (feature index
    c * K + k, stride ``hop``), the bidirectional Mamba maps the sequences
    of those vectors to 2 C K features, and ConvTranspose1d(2 C K, C, K,
    stride ``hop``) folds them back to C channels at every position
    (MODELS.md 5.2 steps 1-5).

    Arguments
    ---------
    channels : int
        C.
    kernel_size : int
        K, neighbours per unfolded vector.
    hop : int
        Unfold stride.
    d_state, expand : int
        Mamba state size N and expansion E.
    eps : float
        Norm epsilon (also RMSNorm's).
    backend : str
        selective_scan backend.

    Example
    -------
    >>> path = BMambaPath(4, kernel_size=2, hop=1, d_state=4, expand=2)
    >>> path(torch.randn(2, 4, 10, 33)).shape
    torch.Size([2, 4, 10, 33])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        hop: int,
        d_state: int = 16,
        expand: int = 4,
        eps: float = 1e-5,
        backend: str = "auto",
    ):
        super().__init__()
        self.kernel_size, self.hop = kernel_size, hop
        d_model = channels * kernel_size
        self.norm = ChannelNorm(channels, eps)
        self.mamba = BiMamba(
            d_model,
            n_layer=1,
            d_state=d_state,
            d_conv=4,
            expand=expand,
            backend=backend,
            norm_eps=eps,
        )
        self.fold = nn.ConvTranspose1d(
            2 * d_model, channels, kernel_size, stride=hop
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, L, F] -> x + path(x), along F (positions F' = (F - K) /
        hop + 1 must be whole, which ``GridNetBlock`` ensures)."""
        batch, channels, frames, n_freqs = x.shape
        K = self.kernel_size
        normed = self.norm(x).transpose(1, 2)  # [B, L, C, F]
        windows = normed.unfold(3, K, self.hop)  # [B, L, C, F', K]
        positions = windows.shape[3]
        sequences = windows.permute(0, 1, 3, 2, 4).reshape(
            batch * frames, positions, channels * K
        )  # [B L, F', C K]
        mixed = self.mamba(sequences)  # [B L, F', 2 C K]
        # ConvTranspose1d as a matmul and an overlap-add (3x faster on CPU
        # than the library call): position p's 2 C K features give C values
        # for each of the K positions p * hop + k it spans
        taps = mixed @ self.fold.weight.flatten(1)  # [B L, F', C K]
        taps = taps.view(batch * frames, positions, channels, K)
        folded = taps.new_zeros(batch * frames, n_freqs, channels)
        span = (positions - 1) * self.hop + 1
        for k in range(K):
            folded[:, k : k + span : self.hop] += taps[..., k]  # [B L, F, C]
        folded = folded.view(batch, frames, n_freqs, channels)
        folded = folded.permute(0, 3, 1, 2)  # [B, C, L, F]
        return x + folded + self.fold.bias[:, None, None]


class GridNetBlock(nn.Module):
    """Intra-frame path, inter-frame path, full-band attention (Fig. 1).

    L and F are zero-padded so that the unfold windows tile them ((size - K)
    divisible by the hop, and at least K) and cropped back before the
    attention, as in the reference.

    Arguments
    ---------
    channels : int
        C.
    n_freqs : int
        F.
    kernel_size : int
        K (emb_ks).
    hop : int
        Unfold stride (emb_hs).
    heads : int
        Attention heads H.
    approx_qk_dim : int
        Approximate query size E * F.
    d_state, expand : int
        Mamba state size and expansion.
    eps : float
        Norm epsilon.
    backend : str
        selective_scan backend.
    checkpoint_mamba : bool
        In training, keep only each path's input and recompute the path
        (norm, BMamba, fold) in the backward pass.

    Example
    -------
    >>> block = GridNetBlock(4, n_freqs=33, kernel_size=2, hop=1, heads=2,
    ...                      approx_qk_dim=64, d_state=4, expand=2)
    >>> block(torch.randn(2, 4, 10, 33)).shape
    torch.Size([2, 4, 10, 33])
    """

    def __init__(
        self,
        channels: int,
        n_freqs: int,
        kernel_size: int = 8,
        hop: int = 1,
        heads: int = 4,
        approx_qk_dim: int = 512,
        d_state: int = 16,
        expand: int = 4,
        eps: float = 1e-5,
        backend: str = "auto",
        checkpoint_mamba: bool = False,
    ):
        super().__init__()
        self.kernel_size, self.hop = kernel_size, hop
        path_args = {
            "channels": channels,
            "kernel_size": kernel_size,
            "hop": hop,
            "d_state": d_state,
            "expand": expand,
            "eps": eps,
            "backend": backend,
        }
        self.checkpoint_mamba = checkpoint_mamba
        self.intra = BMambaPath(**path_args)
        self.inter = BMambaPath(**path_args)
        self.attention = FullBandAttention(
            channels, n_freqs, heads, approx_qk_dim, eps
        )

    def _padded(self, size):
        """Smallest size >= K covering ``size`` with whole unfold hops."""
        K, hop = self.kernel_size, self.hop
        return K + max(0, math.ceil((size - K) / hop)) * hop

    def _run(self, path, x):
        """path(x), recomputed in the backward pass when checkpointing.

        The checkpointed forward runs without autograd (re-entrant
        checkpointing: no graph is built, so the allocator does not
        fragment around thousands of graph nodes), and the backward pass
        recomputes the path with autograd, one path at a time. Re-entrant
        checkpointing only sends gradients through inputs that require
        them, so a path whose input does not (e.g. a frozen embedding) runs
        uncheckpointed; it supports ``backward()``, not ``autograd.grad``.
        """
        if (
            self.checkpoint_mamba
            and torch.is_grad_enabled()
            and x.requires_grad
        ):
            return torch.utils.checkpoint.checkpoint(
                path, x, use_reentrant=True
            )
        return path(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, L, F] -> [B, C, L, F]."""
        frames, n_freqs = x.shape[2:]
        pad_l = self._padded(frames) - frames
        pad_f = self._padded(n_freqs) - n_freqs
        if pad_l or pad_f:
            x = F.pad(x, (0, pad_f, 0, pad_l))
        x = self._run(self.intra, x)  # along F
        x = self._run(self.inter, x.transpose(2, 3)).transpose(2, 3)  # along L
        if pad_l or pad_f:
            x = x[:, :, :frames, :n_freqs]
        return self.attention(x)


@records_arguments
class SPMamba(nn.Module):
    """SPMamba separator: mixture [B, T] -> estimates [B, T, S].

    Arguments
    ---------
    sample_rate : int
        Sampling rate in Hz; sets the default STFT (``stft_geometry``).
    num_spks : int
        S, speakers to separate.
    n_fft : int, optional
        STFT size (= window length); None: 256 at 8 kHz, 512 at 16 kHz.
    hop_length : int, optional
        STFT hop; None: n_fft / 4.
    n_layers : int
        GridNet blocks.
    emb_dim : int
        C, embedding channels.
    emb_ks : int
        K, unfold kernel of the Mamba paths.
    emb_hs : int
        Unfold stride.
    attn_n_head : int
        H, attention heads.
    attn_approx_qk_dim : int
        Approximate query size; E = ceil(attn_approx_qk_dim / F).
    d_state : int
        Mamba state size N.
    expand : int
        Mamba expansion (d_inner = expand * C * K).
    eps : float
        Epsilon of every norm.
    backend : str
        selective_scan backend ("auto": mamba_ssm's CUDA kernel for CUDA
        tensors when installed, the exact CPU scan otherwise).
    checkpoint_mamba : bool
        In training, keep only the inputs of the intra- and inter-frame
        paths and recompute each path in the backward pass: without it the
        BMamba activations take about 30 KB per time step and direction pair
        (~25 GB for a forward+backward on 4 s at 8 kHz); with it, one
        path's at a time (peak RSS 3.8 GB for 4 s). About a third more
        compute; same results. Gradients need ``backward()`` (re-entrant
        checkpointing, see ``GridNetBlock``).

    Example
    -------
    >>> model = SPMamba(n_fft=64, hop_length=16, n_layers=1, emb_dim=4,
    ...                 emb_ks=2, attn_n_head=2, attn_approx_qk_dim=64)
    >>> model(torch.randn(2, 801)).shape
    torch.Size([2, 801, 2])
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        num_spks: int = 2,
        n_fft: int | None = None,
        hop_length: int | None = None,
        n_layers: int = 6,
        emb_dim: int = 16,
        emb_ks: int = 8,
        emb_hs: int = 1,
        attn_n_head: int = 4,
        attn_approx_qk_dim: int = 512,
        d_state: int = 16,
        expand: int = 4,
        eps: float = 1e-5,
        backend: str = "auto",
        checkpoint_mamba: bool = True,
    ):
        super().__init__()
        n_fft = stft_geometry(sample_rate)[0] if n_fft is None else n_fft
        hop_length = max(1, n_fft // 4) if hop_length is None else hop_length
        if n_fft < 2 or n_fft % 2:
            raise ValueError(
                f"SPMamba needs an even n_fft >= 2 (F = n_fft / 2 + 1 bins), "
                f"got n_fft={n_fft}"
            )
        self.sample_rate = int(sample_rate)
        self.num_spks = int(num_spks)
        self.n_fft, self.hop_length = n_fft, hop_length
        n_freqs = n_fft // 2 + 1
        self.register_buffer(
            "window", torch.hann_window(n_fft), persistent=False
        )  # periodic Hann
        self.embed = nn.Sequential(
            nn.Conv2d(2, emb_dim, 3, padding=1),
            nn.GroupNorm(1, emb_dim, eps=eps),
        )
        self.blocks = nn.ModuleList(
            GridNetBlock(
                emb_dim,
                n_freqs,
                kernel_size=emb_ks,
                hop=emb_hs,
                heads=attn_n_head,
                approx_qk_dim=attn_approx_qk_dim,
                d_state=d_state,
                expand=expand,
                eps=eps,
                backend=backend,
                checkpoint_mamba=checkpoint_mamba,
            )
            for _ in range(n_layers)
        )
        self.head = nn.ConvTranspose2d(emb_dim, 2 * num_spks, 3, padding=1)

    @property
    def min_input_samples(self) -> int:
        """Shortest mixture the reflect-padded STFT takes: n_fft / 2 + 1."""
        return self.n_fft // 2 + 1

    def forward(self, mix: torch.Tensor, lengths=None) -> torch.Tensor:
        """Separate ``mix`` [B, T] into estimates [B, T, S].

        ``lengths`` ([B] relative lengths in (0, 1], SpeechBrain's
        convention) marks zero-padded items: each of them is separated alone
        on its valid samples (the attention and the backward Mamba would
        otherwise see its padding), and its estimates are zero past them.
        """
        if mix.dim() != 2:
            raise ValueError(
                f"SPMamba expects a mixture [B, T], got {list(mix.shape)}"
            )
        if lengths is None:
            return self._separate(mix)
        samples = torch.round(lengths * mix.shape[-1]).long().tolist()
        full = [i for i, n in enumerate(samples) if n >= mix.shape[-1]]
        estimates = mix.new_zeros(*mix.shape, self.num_spks)  # [B, T, S]
        if full:
            estimates[full] = self._separate(mix[full])
        for i, n in enumerate(samples):
            if n < mix.shape[-1]:
                estimates[i, :n] = self._separate(mix[i : i + 1, :n])[0]
        return estimates

    def _separate(self, mix):
        """[B, T] -> [B, T, S] (every sample valid)."""
        batch, n_samples = mix.shape
        if n_samples <= self.n_fft // 2:
            raise ValueError(
                f"SPMamba needs more than n_fft / 2 = {self.n_fft // 2} "
                f"samples (the STFT pads by reflection), got {n_samples}; "
                "pad the mixture with zeros"
            )
        # The STFTs run in float32 whatever the model's precision, as in
        # the reference (half-precision FFTs are inexact or unsupported).
        with torch.autocast(mix.device.type, enabled=False):
            mix32 = mix.float()
            # Divide by the unbiased std (MODELS.md 5.1 step 2); silence
            # (std 0) is left as it is and multiplied by 0 at the end.
            var = mix32.var(dim=-1, keepdim=True)  # [B, 1]
            silent = var <= 0
            std = torch.where(silent, torch.ones_like(var), var).sqrt()
            spec = torch.stft(
                mix32 / std,
                self.n_fft,
                self.hop_length,
                window=self.window.float(),
                center=True,
                pad_mode="reflect",
                normalized=False,
                onesided=True,
                return_complex=True,
            ).transpose(1, 2)  # [B, L, F]
        x = torch.stack([spec.real, spec.imag], dim=1)  # [B, 2, L, F]
        x = self.embed(x.to(self.head.weight.dtype))  # [B, C, L, F]
        for block in self.blocks:
            x = block(x)  # [B, C, L, F]
        x = self.head(x)  # [B, 2 S, L, F]
        frames, n_freqs = x.shape[2:]
        with torch.autocast(mix.device.type, enabled=False):
            x = x.float().view(batch * self.num_spks, 2, frames, n_freqs)
            spec = torch.complex(x[:, 0], x[:, 1]).transpose(1, 2)  # [BS, F, L]
            waves = torch.istft(
                spec,
                self.n_fft,
                self.hop_length,
                window=self.window.float(),
                center=True,
                normalized=False,
                onesided=True,
                length=n_samples,
            )  # [B S, T]
            waves = waves.view(batch, self.num_spks, n_samples)
            scale = torch.where(silent, torch.zeros_like(std), std)  # [B, 1]
            waves = waves * scale[:, :, None]
        return waves.transpose(1, 2).to(mix.dtype)  # [B, T, S]
