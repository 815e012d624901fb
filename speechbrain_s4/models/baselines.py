"""Stock SpeechBrain separators with SpeechBrain's WSJ0Mix recipe sizes.

The baselines the S4 models are compared against, built from SpeechBrain's
own lobes (``speechbrain.lobes.models.dual_path`` and ``conv_tasnet``), not
re-implemented:

* **Sepformer** (Subakan et al., "Attention is all you need in speech
  separation", ICASSP 2021): a 16-sample conv encoder (stride 8), a
  dual-path masking network whose intra- and inter-chunk blocks are
  8-layer transformers (chunks of 250 frames, 2 repeats), and a transposed
  conv decoder; 25.7 M parameters, the values of SpeechBrain's
  ``recipes/WSJ0Mix/separation/hparams/sepformer.yaml``;
* **Conv-TasNet** (Luo and Mesgarani, "Conv-TasNet: surpassing ideal
  time-frequency magnitude masking for speech separation", IEEE/ACM TASLP
  2019, Fig. 1): the same encoder and decoder around a temporal
  convolutional network of R = 4 repeats of X = 6 dilated blocks
  (non-causal, gLN); 6.58 M parameters with SpeechBrain's B = 256, wider
  than the paper's 5.1 M model (B = Sc = 128).

Both are ``MaskingSeparator`` subclasses (mixture [B, T] -> estimates
[B, T, S]) recording their constructor arguments, so the registry
(``build("sepformer")``), the benchmark and inference folders treat them
like every other model. The constructor arguments carry the names of the
keys of ``hparams/models/sepformer.yaml`` and ``convtasnet.yaml``, which
build the same modules explicitly from the lobes; a test checks that both
definitions give identical state-dict keys and shapes.

Shape legend: B batch, T samples, S speakers, N encoder filters, L frames.

Authors
 * speechbrain_s4 contributors 2026
"""

from speechbrain.lobes.models.conv_tasnet import MaskNet
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
    SBTransformerBlock,
)

from speechbrain_s4.models.arguments import records_arguments
from speechbrain_s4.models.masking import MaskingSeparator

__all__ = ["ConvTasNet", "Sepformer"]


def _decoder(encoder_filters: int, kernel_size: int) -> Decoder:
    """The transposed-conv decoder both recipes share: one speaker's
    features [B, N, L] -> waveform [B, T'], stride kernel_size / 2 (the
    encoder's, which SpeechBrain's Encoder hard-wires)."""
    return Decoder(
        in_channels=encoder_filters,
        out_channels=1,
        kernel_size=kernel_size,
        stride=kernel_size // 2,
        bias=False,
    )


@records_arguments
class Sepformer(MaskingSeparator):
    """SpeechBrain's Sepformer as a separator: mixture [B, T] -> [B, T, S].

    Arguments
    ---------
    sample_rate : int
        Hz; recorded for the inference interface and the benchmark (the
        model works on samples: the recipe uses the same sizes at 8 and
        16 kHz).
    num_spks : int
        S, speakers to separate.
    kernel_size : int
        Encoder window in samples (stride kernel_size / 2).
    encoder_filters : int
        N, encoder filters = transformer width.
    chunk_size : int
        K, dual-path chunk length in encoder frames.
    num_repeats : int
        Intra + inter block pairs (``Dual_Path_Model``'s ``num_layers``).
    num_layers : int
        Transformer layers in every intra / inter block.
    nhead : int
        Attention heads.
    d_ffn : int
        Feed-forward width of each transformer layer.

    Example
    -------
    >>> import torch
    >>> model = Sepformer(encoder_filters=8, chunk_size=10, num_repeats=1,
    ...                   num_layers=1, nhead=2, d_ffn=16)
    >>> model(torch.randn(2, 801)).shape
    torch.Size([2, 801, 2])
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        num_spks: int = 2,
        kernel_size: int = 16,
        encoder_filters: int = 256,
        chunk_size: int = 250,
        num_repeats: int = 2,
        num_layers: int = 8,
        nhead: int = 8,
        d_ffn: int = 1024,
    ):
        def transformer():
            return SBTransformerBlock(
                num_layers=num_layers,
                d_model=encoder_filters,
                nhead=nhead,
                d_ffn=d_ffn,
                dropout=0,
                use_positional_encoding=True,
                norm_before=True,
            )

        super().__init__(
            encoder=Encoder(kernel_size=kernel_size, out_channels=encoder_filters),
            masknet=Dual_Path_Model(
                num_spks=num_spks,
                in_channels=encoder_filters,
                out_channels=encoder_filters,
                num_layers=num_repeats,
                K=chunk_size,
                intra_model=transformer(),
                inter_model=transformer(),
                norm="ln",
                linear_layer_after_inter_intra=False,
                skip_around_intra=True,
            ),
            decoder=_decoder(encoder_filters, kernel_size),
            num_spks=num_spks,
            sample_rate=sample_rate,
        )


@records_arguments
class ConvTasNet(MaskingSeparator):
    """SpeechBrain's Conv-TasNet as a separator: mixture [B, T] -> [B, T, S].

    The mask network is ``conv_tasnet.MaskNet(N, B, H, P, X, R, C)`` with
    the paper's letters given below; masks use a ReLU.

    Arguments
    ---------
    sample_rate : int
        Hz; recorded only (the model works on samples).
    num_spks : int
        S = C, speakers to separate.
    kernel_size : int
        L, encoder window in samples (stride L / 2).
    encoder_filters : int
        N, encoder filters.
    bottleneck_channels : int
        B, bottleneck and residual channels.
    hidden_channels : int
        H, channels inside each convolutional block.
    block_kernel_size : int
        P, depthwise kernel of each block.
    blocks_per_repeat : int
        X, blocks with dilations 1, 2, ..., 2^(X-1).
    num_repeats : int
        R, repeats of those X blocks.
    norm_type : str
        "gLN" (global layer norm, non-causal), "cLN" or "BN", as
        SpeechBrain's ``choose_norm`` reads it.
    causal : bool
        Causal (left-padded) dilated convolutions.

    Example
    -------
    >>> import torch
    >>> model = ConvTasNet(encoder_filters=8, bottleneck_channels=8,
    ...                    hidden_channels=16, blocks_per_repeat=2,
    ...                    num_repeats=1)
    >>> model(torch.randn(2, 801)).shape
    torch.Size([2, 801, 2])
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        num_spks: int = 2,
        kernel_size: int = 16,
        encoder_filters: int = 256,
        bottleneck_channels: int = 256,
        hidden_channels: int = 512,
        block_kernel_size: int = 3,
        blocks_per_repeat: int = 6,
        num_repeats: int = 4,
        norm_type: str = "gLN",
        causal: bool = False,
    ):
        if norm_type not in ("gLN", "cLN", "BN"):
            # SpeechBrain's choose_norm falls back to BatchNorm for any
            # other (misspelt) name
            raise ValueError(
                f"unknown norm_type {norm_type!r}; expected one of gLN, cLN, BN"
            )
        super().__init__(
            encoder=Encoder(kernel_size=kernel_size, out_channels=encoder_filters),
            masknet=MaskNet(
                N=encoder_filters,
                B=bottleneck_channels,
                H=hidden_channels,
                P=block_kernel_size,
                X=blocks_per_repeat,
                R=num_repeats,
                C=num_spks,
                norm_type=norm_type,
                causal=causal,
                mask_nonlinear="relu",
            ),
            decoder=_decoder(encoder_filters, kernel_size),
            num_spks=num_spks,
            sample_rate=sample_rate,
        )
