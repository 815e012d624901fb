"""Encoder -> mask network -> decoder, written once for every masking model.

Time-domain masking separators (Conv-TasNet, Luo & Mesgarani, IEEE/ACM TASLP
2019; Sepformer, Subakan et al., ICASSP 2021; S4M, Chen et al., Interspeech
2023) share one template:

1. a learned encoder maps the mixture to features, ``w = E(x)``: [B, N, L];
2. a mask network estimates one non-negative mask per speaker from them,
   ``m_s = M(w)``: [S, B, N, L];
3. each speaker's features are the masked mixture features, ``d_s = m_s * w``;
4. a decoder maps them back to waveforms, ``s_s = D(d_s)``, and the result is
   padded or trimmed to the input length.

SpeechBrain's recipes write steps 1-4 inline in every ``compute_forward``;
here they live in :class:`MaskingSeparator`, so the Brain, inference and
benchmark see one ``forward(mix [B, T]) -> [B, T, S]`` for every model.

Two decoder kinds are supported without the caller saying which model it is:

* a **per-speaker** decoder (SpeechBrain's ``dual_path.Decoder``) maps one
  speaker's features [B, N, L] to a waveform [B, T'] and is applied to each
  speaker in turn;
* a **joint** decoder maps every speaker at once, [S, B, N, L] -> [B, T', S]
  (S4M's decoder mixes all speakers' features in one transposed convolution).
  It says so with the class attribute ``joint = True``.

Shape legend: B = batch, T = input samples, T' = decoder output samples,
N = encoder filters, L = encoder frames, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

import torch
import torch.nn.functional as F
from torch import nn


def fit_length(estimates: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or trim decoded waveforms [B, T', S] to ``length`` samples.

    The encoder's strided convolution drops the samples that do not fill a
    last window, so the decoder returns T' <= T samples (or a few more when
    an encoder pads); the estimates must line up with the mixture sample by
    sample.

    Arguments
    ---------
    estimates : torch.Tensor
        Decoded waveforms [B, T', S].
    length : int
        T, the number of samples wanted.

    Returns
    -------
    torch.Tensor
        The estimates [B, T, S].

    Example
    -------
    >>> fit_length(torch.ones(2, 7, 3), 10).shape
    torch.Size([2, 10, 3])
    """
    missing = length - estimates.shape[1]
    if missing > 0:
        return F.pad(estimates, (0, 0, 0, missing))  # [B, T, S]
    return estimates[:, :length, :]  # [B, T, S]


class MaskingSeparator(nn.Module):
    """A separator built from an encoder, a mask network and a decoder.

    Arguments
    ---------
    encoder : torch.nn.Module
        Mixture [B, T] -> features [B, N, L] (e.g.
        ``speechbrain.lobes.models.dual_path.Encoder``).
    masknet : torch.nn.Module
        Features [B, N, L] -> masks [S, B, N, L] (e.g.
        ``dual_path.Dual_Path_Model`` or ``conv_tasnet.MaskNet``).
    decoder : torch.nn.Module
        Either one speaker's masked features [B, N, L] -> waveform [B, T']
        (``dual_path.Decoder``), or, when its class sets ``joint = True``,
        every speaker's masked features [S, B, N, L] -> waveforms [B, T', S].
    num_spks : int
        S, the number of speakers the mask network separates.
    sample_rate : int
        Sampling rate in Hz the model was built for (read by the inference
        interface and the benchmark; the computation does not use it).

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain.lobes.models.conv_tasnet import MaskNet
    >>> separator = MaskingSeparator(
    ...     encoder=Encoder(kernel_size=16, out_channels=8),
    ...     masknet=MaskNet(N=8, B=8, H=16, P=3, X=2, R=1, C=2),
    ...     decoder=Decoder(
    ...         in_channels=8, out_channels=1, kernel_size=16, stride=8
    ...     ),
    ...     num_spks=2,
    ...     sample_rate=8000,
    ... )
    >>> separator(torch.randn(3, 1001)).shape
    torch.Size([3, 1001, 2])
    """

    def __init__(
        self,
        encoder: nn.Module,
        masknet: nn.Module,
        decoder: nn.Module,
        num_spks: int,
        sample_rate: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.masknet = masknet
        self.decoder = decoder
        self.num_spks = int(num_spks)
        self.sample_rate = int(sample_rate)

    def forward(self, mix: torch.Tensor, lengths=None) -> torch.Tensor:
        """Separate ``mix`` [B, T] into estimates [B, T, S].

        ``lengths`` ([B] relative lengths in (0, 1], SpeechBrain's
        convention) marks zero-padded items. Models whose encoder reports
        ``frame_lengths`` (S4M) then give every item the result it would get
        alone; the stock SpeechBrain lobes have no such notion and ignore it.
        """
        features = self.encoder(mix)  # [B, N, L]
        if lengths is not None and hasattr(self.encoder, "frame_lengths"):
            samples = torch.round(lengths * mix.shape[-1]).long()
            frames = self.encoder.frame_lengths(samples)  # [B]
            masks = self.masknet(features, frames)  # [S, B, N, L]
        else:
            masks = self.masknet(features)  # [S, B, N, L]
        if masks.dim() != 4 or masks.shape[0] != self.num_spks:
            raise ValueError(
                f"{type(self.masknet).__name__} returned masks of shape "
                f"{tuple(masks.shape)}; expected [S={self.num_spks}, B, N, L]. "
                "Give the mask network the same number of speakers as the "
                "separator (num_spks)."
            )
        masked = features.unsqueeze(0) * masks  # [S, B, N, L]
        if getattr(self.decoder, "joint", False):
            estimates = self.decoder(masked)  # [B, T', S]
        else:
            estimates = torch.stack(
                [self.decoder(masked[s]) for s in range(self.num_spks)],
                dim=-1,
            )  # [B, T', S]
        return fit_length(estimates, mix.shape[-1])  # [B, T, S]
