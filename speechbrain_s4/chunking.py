"""Long audio: chunked separation with overlap-add and speaker realignment.

Running a separator on a whole recording makes memory grow with its length
(SpeechBrain users report running out of memory past about two minutes
with Sepformer) and, for attention models, time grow faster than the
length. Here the mixture is cut into chunks of ``chunk`` samples that
overlap by ``overlap`` samples, each chunk is separated on its own, and the
estimates are put back together:

1. **Chunks.** Chunk ``i`` covers ``[i * hop, i * hop + chunk)`` with
   ``hop = chunk - overlap``; the last chunk ends at the end of the mixture
   (it may be shorter). Memory is that of one chunk and time is linear in
   the length.
2. **Speaker realignment.** A separator's speaker order is arbitrary, so
   it can change from one chunk to the next (the permutation problem of
   PIT; Yu et al., ICASSP 2017). Over the ``O`` samples both chunks share,
   the new chunk's estimates are permuted to best match the previous
   chunk's: the permutation ``pi`` maximising the summed normalised
   correlation

       score(pi) = sum_s <p_s, c_pi(s)> / (||p_s|| ||c_pi(s)|| + eps),

   with ``p_s`` the previous chunk's (already aligned) estimate of speaker
   ``s`` and ``c_j`` the new chunk's estimate ``j`` over the overlap. The
   score is invariant to each estimate's scale, as SI-SNR is. A silent
   overlap scores every permutation 0 and keeps the identity.
3. **Overlap-add.** Over the overlap the two chunks are cross-faded with
   complementary raised-cosine weights, ``w_in(t) = sin^2(pi/2 (t + 1/2)/O)``
   for the new chunk and ``1 - w_in(t)`` for the previous one, so the
   weights sum to one and a chunk's edge (where it lacks context) counts
   least.

The defaults per model (:func:`default_chunking`) keep one chunk's
activations well under 1 GB on CPU: S4M works at any length and is light,
so its chunks are long (fewer seams); attention (Sepformer) and SPMamba
need shorter ones.

Shape legend: B = batch, T = samples, S = speakers, O = overlap samples.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

__all__ = [
    "DEFAULT_CHUNKING",
    "FALLBACK_CHUNKING",
    "default_chunking",
    "chunk_bounds",
    "best_speaker_order",
    "crossfade_weights",
    "separate_in_chunks",
]

#: class name of a separator (or of its ``masknet``) ->
#: (chunk seconds, overlap seconds). Looked up in that order; a separator
#: may instead define ``chunk_seconds`` / ``overlap_seconds`` attributes.
DEFAULT_CHUNKING = {
    # S4M (and S4M-tiny): any length works; ~1.3 GB peak RSS at 20 s (8 kHz)
    "S4M": (20.0, 2.0),
    # SPMamba: TF-GridNet-style full-band attention over frames, heavier
    "SPMamba": (8.0, 1.0),
    # Sepformer: attention across dual-path chunks grows quadratically
    "Dual_Path_Model": (10.0, 1.0),
    # Conv-TasNet: a fully convolutional network with a ~1.5 s receptive field
    "MaskNet": (20.0, 2.0),
}

#: chunking for separators not in ``DEFAULT_CHUNKING``
FALLBACK_CHUNKING = (10.0, 1.0)


def default_chunking(separator: nn.Module) -> tuple[float, float]:
    """The (chunk, overlap) lengths in seconds to use for ``separator``.

    Arguments
    ---------
    separator : torch.nn.Module
        A separator (DEVELOPING.md): its own ``chunk_seconds`` and
        ``overlap_seconds`` attributes win, then its class name, then its
        ``masknet``'s class name in ``DEFAULT_CHUNKING``; otherwise
        ``FALLBACK_CHUNKING``.

    Returns
    -------
    tuple of float
        (chunk_seconds, overlap_seconds).

    Example
    -------
    >>> from speechbrain_s4.models import build
    >>> default_chunking(build("s4m-tiny", hidden_channels=8, num_blocks=1))
    (20.0, 2.0)
    """
    if hasattr(separator, "chunk_seconds"):
        return (
            float(separator.chunk_seconds),
            float(getattr(separator, "overlap_seconds", FALLBACK_CHUNKING[1])),
        )
    for owner in (separator, getattr(separator, "masknet", None)):
        if owner is not None and type(owner).__name__ in DEFAULT_CHUNKING:
            return DEFAULT_CHUNKING[type(owner).__name__]
    return FALLBACK_CHUNKING


def chunk_bounds(num_samples: int, chunk: int, overlap: int) -> list:
    """Start and end samples of the chunks covering ``num_samples``.

    Arguments
    ---------
    num_samples : int
        T, the mixture length.
    chunk : int
        Chunk length in samples.
    overlap : int
        Samples shared by consecutive chunks; at most ``chunk // 2``, so
        that an overlap never reaches back into the one before it.

    Returns
    -------
    list of tuple
        ``[(start, end), ...]``; one chunk ``(0, T)`` when ``T <= chunk``.

    Example
    -------
    >>> chunk_bounds(25, chunk=10, overlap=2)
    [(0, 10), (8, 18), (16, 25)]
    """
    if chunk < 1:
        raise ValueError(f"the chunk must hold at least 1 sample, got {chunk}")
    if not 0 <= overlap <= chunk // 2:
        raise ValueError(
            f"the overlap ({overlap} samples) must be between 0 and half the "
            f"chunk ({chunk} samples); shorten the overlap or lengthen the "
            "chunk"
        )
    hop = chunk - overlap
    bounds = []
    start = 0
    while start + chunk < num_samples:
        bounds.append((start, start + chunk))
        start += hop
    bounds.append((start, num_samples))
    return bounds


def best_speaker_order(
    previous: torch.Tensor, current: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Permutation of ``current``'s speakers that best matches ``previous``.

    Maximises the summed normalised correlation over the overlap (module
    docstring, step 2) by trying every permutation (S! of them; S is small).
    Ties keep the first permutation in lexicographic order, i.e. the
    identity when nothing is heard.

    Arguments
    ---------
    previous : torch.Tensor
        [B, O, S] aligned estimates of the previous chunk over the overlap.
    current : torch.Tensor
        [B, O, S] the new chunk's estimates over the same samples.
    eps : float
        Guards the division for silent estimates.

    Returns
    -------
    torch.Tensor
        [B, S] long: ``current[b, :, order[b, s]]`` continues speaker ``s``.

    Example
    -------
    >>> previous = torch.randn(1, 100, 3)
    >>> best_speaker_order(previous, 2 * previous[..., [2, 0, 1]])
    tensor([[1, 2, 0]])
    """
    previous = previous.double()
    current = current.double()
    norms = previous.norm(dim=1).unsqueeze(2) * current.norm(dim=1).unsqueeze(1)
    # similarity[b, s, j] = cos(previous speaker s, current estimate j)
    similarity = torch.einsum("bts,btj->bsj", previous, current) / (
        norms + eps
    )  # [B, S, S]
    num_spks = previous.shape[-1]
    orders = torch.tensor(
        list(itertools.permutations(range(num_spks))),
        device=previous.device,
    )  # [P, S]
    speakers = torch.arange(num_spks, device=previous.device)
    scores = similarity[:, speakers, orders].sum(-1)  # [B, P]
    return orders[scores.argmax(dim=1)]  # [B, S]


def crossfade_weights(overlap: int, dtype=torch.float32, device=None):
    """Fade-in weights ``sin^2(pi/2 (t + 1/2) / O)`` of the new chunk.

    The previous chunk gets ``1 - w``, so the two always sum to one.

    Arguments
    ---------
    overlap : int
        O, samples.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        [O], increasing from near 0 to near 1.

    Example
    -------
    >>> w = crossfade_weights(4)
    >>> w.shape, bool(torch.allclose(w + w.flip(0), torch.ones(4)))
    (torch.Size([4]), True)
    """
    t = (
        torch.arange(overlap, dtype=torch.float64, device=device) + 0.5
    ) / overlap
    return torch.sin(0.5 * torch.pi * t).pow(2).to(dtype)


def separate_in_chunks(
    separate: Callable[[torch.Tensor], torch.Tensor],
    mix: torch.Tensor,
    chunk: int,
    overlap: int,
    progress: bool | None = None,
) -> torch.Tensor:
    """Separate a long mixture chunk by chunk (module docstring, steps 1-3).

    Arguments
    ---------
    separate : callable
        Mixture chunk [B, t] -> estimates [B, t, S] (any ``t <= chunk``);
        e.g. a separator module.
    mix : torch.Tensor
        [B, T] mixtures.
    chunk : int
        Chunk length in samples.
    overlap : int
        Overlap between consecutive chunks in samples (<= chunk // 2).
    progress : bool, optional
        Show a tqdm progress bar over the chunks; None (default) shows it
        when there is more than one chunk and stderr is a terminal.

    Returns
    -------
    torch.Tensor
        [B, T, S] estimates, on ``mix``'s device.

    Example
    -------
    >>> def halves(chunk):  # a stand-in "separator"
    ...     return torch.stack([chunk / 2, chunk / 2], dim=-1)
    >>> separate_in_chunks(halves, torch.randn(2, 1000), 300, 50).shape
    torch.Size([2, 1000, 2])
    """
    if mix.dim() != 2:
        raise ValueError(
            f"the mixture must be [B, T], got shape {tuple(mix.shape)}"
        )
    bounds = chunk_bounds(mix.shape[1], chunk, overlap)
    if len(bounds) > 1 and overlap < 1:
        raise ValueError(
            "chunks without overlap cannot be realigned (speakers could swap "
            "at every seam); give an overlap of at least one sample"
        )
    if progress is None:  # tqdm's None: shown only on a terminal
        disable = True if len(bounds) == 1 else None
    else:
        disable = not progress
    output = None
    previous_end = 0
    with torch.no_grad():
        for start, end in tqdm(
            bounds,
            desc="separating",
            unit="chunk",
            disable=disable,
        ):
            estimates = separate(mix[:, start:end])  # [B, t, S]
            if estimates.shape[:2] != (mix.shape[0], end - start):
                raise ValueError(
                    f"the separator returned shape {tuple(estimates.shape)} "
                    f"for a chunk of shape {(mix.shape[0], end - start)}; "
                    "expected [B, t, S]"
                )
            if output is None:
                output = mix.new_zeros(
                    mix.shape[0], mix.shape[1], estimates.shape[-1]
                )  # [B, T, S]
            shared = previous_end - start  # O for this seam (0 at the start)
            if shared > 0:
                previous = output[:, start:previous_end]  # [B, O, S]
                order = best_speaker_order(previous, estimates[:, :shared])
                estimates = torch.gather(
                    estimates,
                    2,
                    order.unsqueeze(1).expand(-1, estimates.shape[1], -1),
                )  # [B, t, S], speakers in the previous chunk's order
                fade_in = crossfade_weights(
                    shared, estimates.dtype, estimates.device
                ).view(1, -1, 1)  # [1, O, 1]
                output[:, start:previous_end] = (
                    previous * (1 - fade_in) + estimates[:, :shared] * fade_in
                )
            output[:, previous_end:end] = estimates[:, shared:]
            previous_end = end
    return output
