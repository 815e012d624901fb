"""Original checkpoints -> state dicts of this package's modules.

The reference models (JusperLee/S4M, JusperLee/SPMamba) name and shape their
parameters differently from ours, and S4M's vendored ``s4.py`` stores a
length-dependent C~ = C (I - dA^L) instead of the SSM's C (S4, Gu, Goel and
Re, ICLR 2022, section 3.3). Each function here maps one reference state dict
to ours, validating keys and shapes so that a wrong checkpoint fails loudly
rather than loading half of its weights.

Checkpoint files may be a bare state dict, a dict holding it under
``state_dict`` (with ``model_name`` and ``model_args``, as the reference
repositories' ``best_model.pth`` serialise it; the name is ignored, since
SPMamba's released files carry the outdated "TFGridNetMamba"), or a
PyTorch Lightning ``*.ckpt`` whose keys are prefixed ``audio_model.``.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import math
import os
import re

import torch
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_s4.ssm.s4_kernel import (
    _complex_from_rows,
    _real_rows,
    dplr_bilinear,
)

__all__ = [
    "load_reference_checkpoint",
    "convert_s4m_state_dict",
    "convert_s4_layer_state_dict",
    "convert_spmamba_state_dict",
]

logger = get_logger(__name__)

_S4_KERNEL = "kernel.kernel."
# Above this condition number of I - dA^L, recovering C from a float32 C~
# visibly amplifies C~'s rounding (the S4 layer fixture is at about 30).
_ILL_CONDITIONED = 1e4
_S4_REFERENCE_KEYS = (
    "D",
    _S4_KERNEL + "log_dt",
    _S4_KERNEL + "inv_w_real",
    _S4_KERNEL + "w_imag",
    _S4_KERNEL + "B",
    _S4_KERNEL + "P",
    _S4_KERNEL + "C",
    _S4_KERNEL + "L",
    "output_linear.0.weight",
    "output_linear.0.bias",
)


def convert_s4_layer_state_dict(
    reference_state_dict: dict, conj_symmetric: bool
) -> dict:
    """Map one S4M ``s4.py`` S4 layer's state dict to ``ssm.S4``'s.

    The reference layer is ``S4(d_model=H, d_state=N, bidirectional=...,
    transposed=True)`` with the DPLR (``nplr``) kernel, rank 1 and one SSM per
    channel, as S4M builds it. Its ``kernel.kernel.C`` holds
    C~ = C (I - dA^L) for the internal length L in ``kernel.kernel.L`` (or the
    original C when L = 0, before any forward). The true C is recovered in
    float64 as C = C~ (I - dA^L)^-1 with the dense bilinear dA of the full
    N-dimensional state; this is ill-conditioned only if dA has an eigenvalue
    of modulus close to 1.

    Arguments
    ---------
    reference_state_dict : dict
        The layer's keys ``D`` [1, H], ``kernel.kernel.{log_dt [H],
        inv_w_real [H, N/2], w_imag [H, N/2], B [1, H, N/2, 2],
        P [1, H, N/2, 2], C [C, H, N/2, 2], L []}``,
        ``output_linear.0.{weight [2H, H, 1], bias [2H]}``.
    conj_symmetric : bool
        Whether the target ``S4`` uses the conjugate-symmetric kernel. With
        False the reference's internal length is kept as the kernel's
        ``base_length`` buffer, which that mode needs to reproduce S4M's CPU
        outputs; with True it is only used to recover C.

    Returns
    -------
    dict
        Keys ``D`` [H], ``kernel.{log_dt, inv_w_real, w_imag, B [H, N/2, 2],
        P [H, N/2, 2], C [C, H, N/2, 2]}`` (C the true C), and
        ``kernel.base_length`` when ``conj_symmetric`` is False,
        ``output_linear.{weight, bias}``; same dtypes as the input.

    Raises
    ------
    KeyError
        If keys are missing or unexpected.
    ValueError
        If a tensor has the wrong shape.

    Example
    -------
    >>> from speechbrain_s4.ssm import S4
    >>> reference = {
    ...     "D": torch.randn(1, 4),
    ...     "kernel.kernel.log_dt": torch.full((4,), -3.0),
    ...     "kernel.kernel.inv_w_real": torch.full((4, 2), -0.69),
    ...     "kernel.kernel.w_imag": -torch.rand(4, 2),
    ...     "kernel.kernel.B": torch.randn(1, 4, 2, 2),
    ...     "kernel.kernel.P": torch.randn(1, 4, 2, 2),
    ...     "kernel.kernel.C": torch.randn(2, 4, 2, 2),
    ...     "kernel.kernel.L": torch.tensor(20),
    ...     "output_linear.0.weight": torch.randn(8, 4, 1),
    ...     "output_linear.0.bias": torch.randn(8),
    ... }
    >>> layer = S4(4, d_state=4, bidirectional=True)
    >>> layer.load_state_dict(convert_s4_layer_state_dict(reference, True))
    <All keys matched successfully>
    >>> print(layer(torch.randn(1, 4, 20)).shape)
    torch.Size([1, 4, 20])
    """
    _check_keys(reference_state_dict)
    sd = reference_state_dict
    k = _S4_KERNEL
    # the sizes H, N/2 and C are read from log_dt, inv_w_real and C
    for key, legend in (
        (k + "log_dt", "[H]"),
        (k + "inv_w_real", "[H, N/2]"),
        (k + "C", "[C, H, N/2, 2]"),
    ):
        if sd[key].dim() != legend.count(",") + 1:
            raise ValueError(
                f"S4 layer state dict: {key} has shape {tuple(sd[key].shape)}, "
                f"expected {legend}"
            )
    H = sd[k + "log_dt"].shape[0]
    M = sd[k + "inv_w_real"].shape[-1]
    channels = sd[k + "C"].shape[0]
    _check_shapes(
        sd,
        {
            "D": (1, H),
            k + "log_dt": (H,),
            k + "inv_w_real": (H, M),
            k + "w_imag": (H, M),
            k + "B": (1, H, M, 2),
            k + "P": (1, H, M, 2),
            k + "C": (channels, H, M, 2),
            k + "L": (),
            "output_linear.0.weight": (2 * H, H, 1),
            "output_linear.0.bias": (2 * H,),
        },
    )
    length = int(sd[k + "L"])
    if length < 0:
        raise ValueError(f"{k}L = {length}: the internal length must be >= 0")

    C = sd[k + "C"]
    if length > 0:
        C = _recover_c(
            C_tilde=torch.view_as_complex(C.double().contiguous()),
            log_dt=sd[k + "log_dt"].double(),
            inv_w_real=sd[k + "inv_w_real"].double(),
            w_imag=sd[k + "w_imag"].double(),
            B=torch.view_as_complex(sd[k + "B"][0].double().contiguous()),
            P=torch.view_as_complex(sd[k + "P"][0].double().contiguous()),
            length=length,
        )
        C = torch.view_as_real(C).to(sd[k + "C"].dtype).contiguous()

    converted = {
        "D": sd["D"][0].clone(),
        "kernel.log_dt": sd[k + "log_dt"].clone(),
        "kernel.inv_w_real": sd[k + "inv_w_real"].clone(),
        "kernel.w_imag": sd[k + "w_imag"].clone(),
        "kernel.B": sd[k + "B"][0].clone(),
        "kernel.P": sd[k + "P"][0].clone(),
        "kernel.C": C.clone(),
        "output_linear.weight": sd["output_linear.0.weight"].clone(),
        "output_linear.bias": sd["output_linear.0.bias"].clone(),
    }
    if not conj_symmetric:
        converted["kernel.base_length"] = sd[k + "L"].clone()
    return converted


def _recover_c(
    C_tilde, log_dt, inv_w_real, w_imag, B, P, length
) -> torch.Tensor:
    """C = C~ (I - dA^L)^-1 in float64, all N modes; returns [C, H, N/2]."""
    Lambda = torch.complex(-torch.exp(inv_w_real), w_imag)  # [H, M]
    dA, _ = dplr_bilinear(torch.exp(log_dt), Lambda, P, B)  # [H, N, N]
    N = dA.shape[-1]
    eye = torch.eye(N, dtype=dA.dtype, device=dA.device).expand_as(dA)
    dA_L = torch.linalg.matrix_power(dA, length)  # [H, N, N]
    condition = torch.linalg.cond(eye - dA_L).max().item()
    if condition > _ILL_CONDITIONED:
        logger.warning(
            "recovering the S4 C from C~ = C (I - dA^%d): I - dA^L has "
            "condition number %.1e, so the rounding error of the stored C~ "
            "is amplified up to that much in C and in the kernels computed "
            "from it",
            length,
            condition,
        )
    # C_real (I - dA^L) = C~_real  <=>  (I - dA^L)^T C_real^T = C~_real^T
    C_tilde_rows = _real_rows(C_tilde).permute(1, 2, 0)  # [H, N, C]
    C_rows = torch.linalg.solve((eye - dA_L).transpose(-1, -2), C_tilde_rows)
    return _complex_from_rows(C_rows.permute(2, 0, 1))  # [C, H, M]


def _check_keys(state_dict: dict) -> None:
    missing = [key for key in _S4_REFERENCE_KEYS if key not in state_dict]
    unexpected = sorted(set(state_dict) - set(_S4_REFERENCE_KEYS))
    if missing or unexpected:
        raise KeyError(
            "not a state dict of one S4M s4.py S4 layer (DPLR kernel, rank 1): "
            f"missing keys {missing}, unexpected keys {unexpected}; pass the "
            "layer's own entries with the prefix up to the layer stripped"
        )


def _check_shapes(state_dict: dict, expected: dict) -> None:
    wrong = [
        f"{key}: {tuple(state_dict[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if tuple(state_dict[key].shape) != shape
    ]
    if wrong:
        raise ValueError(
            "S4 layer state dict has mis-shaped entries (H = len(log_dt), "
            "N/2 = inv_w_real.shape[-1]; S4M's layer has rank 1 and one SSM "
            "per channel): " + "; ".join(wrong)
        )


# -- whole models --------------------------------------------------------------

#: JusperLee/S4M ``S4M(...)`` keyword arguments and their defaults
S4M_REFERENCE_DEFAULTS = {
    "out_channels": 128,
    "in_channels": 512,
    "num_blocks": 16,
    "upsampling_depth": 4,
    "enc_kernel_size": 21,
    "num_sources": 2,
    "sample_rate": 16000,
}

#: reference S4M key prefix -> ours (first match wins). The S4 layers are
#: mapped by ``convert_s4_layer_state_dict``; GlobLN's gamma/beta become
#: weight/bias.
S4M_PREFIXES = (
    ("encoder.weight", "encoder.conv.weight"),
    ("ln.", "masknet.norm."),
    ("bottleneck.", "masknet.bottleneck."),
    ("sm.unet.proj_1x1.conv.", "masknet.block.proj."),
    ("sm.unet.proj_1x1.norm.", "masknet.block.proj_norm."),
    ("sm.unet.proj_1x1.act.", "masknet.block.proj_act."),
    ("sm.unet.spp_dw.", "masknet.block.downsample."),
    ("sm.unet.loc_glo_fus.", "masknet.block.fusion."),
    ("sm.unet.last_layer.", "masknet.block.topdown_fusion."),
    ("sm.unet.res_conv.", "masknet.block.res_conv."),
    ("sm.unet.s4.norm.", "masknet.block.s4.norm."),
    ("sm.unet.dec_s4.", "masknet.block.decoder_s4."),
    ("sm.unet.ff.norm.", "masknet.block.ff.norm."),
    ("sm.unet.ff.layer.ff.0.0.", "masknet.block.ff.fc1."),
    ("sm.unet.ff.layer.ff.2.", "masknet.block.ff.fc2."),
    ("sm.concat_block.", "masknet.unroll."),
    ("mask_net.", "masknet.mask."),
    ("decoder.weight", "decoder.conv.weight"),
)

#: S4 layers inside S4M: the mid block and our decoder blocks (S4M proper;
#: ``sm.unet.dec_s4.{i}`` in the reference naming of MODELS.md 4.8)
_S4M_S4_LAYER = re.compile(r"^(sm\.unet\.(?:s4|dec_s4\.\d+))\.layer\.")


def convert_s4m_state_dict(reference_state_dict: dict, conj_symmetric=True):
    """Map a JusperLee/S4M state dict to ``speechbrain_s4.models.s4m.S4M``.

    Arguments
    ---------
    reference_state_dict : dict
        ``S4M.state_dict()`` of the public code (116 entries for the default
        configuration; MODELS.md 4.5).
    conj_symmetric : bool
        Whether the target S4 layers use the exact (conjugate-symmetric)
        kernel; False keeps the reference's internal S4 lengths, which the
        CPU-fallback kernel depends on.

    Returns
    -------
    dict
        Our state dict (keys of ``S4M(topdown="faithful")``).

    Raises
    ------
    KeyError
        Naming the first keys that do not belong to an S4M checkpoint.
    """
    converted, s4_layers, unknown = {}, {}, []
    for key, value in reference_state_dict.items():
        layer = _S4M_S4_LAYER.match(key)
        if layer:
            s4_layers.setdefault(layer.group(1), {})[key[layer.end() :]] = value
            continue
        for old, new in S4M_PREFIXES:
            if key.startswith(old):
                ours = new + key[len(old) :]
                break
        else:
            unknown.append(key)
            continue
        # GlobLN stores gamma/beta; ours (and every torch norm) weight/bias
        ours = re.sub(r"\.gamma$", ".weight", ours)
        ours = re.sub(r"\.beta$", ".bias", ours)
        converted[ours] = value
    if unknown:
        raise KeyError(
            f"not an S4M (JusperLee/S4M) state dict: unexpected keys "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    for prefix, layer_sd in s4_layers.items():
        ours = prefix.replace("sm.unet.s4", "masknet.block.s4").replace(
            "sm.unet.dec_s4.", "masknet.block.decoder_s4."
        )
        for key, value in convert_s4_layer_state_dict(
            layer_sd, conj_symmetric
        ).items():
            converted[f"{ours}.layer.{key}"] = value
    return converted


def _build_s4m(state_dict, conj_symmetric, reference_kwargs):
    from speechbrain_s4.models.s4m import S4M

    kw = _reference_kwargs("s4m", S4M_REFERENCE_DEFAULTS, reference_kwargs)
    w_imag = state_dict.get("sm.unet.s4.layer.kernel.kernel.w_imag")
    d_state = 16 if w_imag is None else 2 * w_imag.shape[-1]
    model = S4M(
        sample_rate=kw["sample_rate"],
        num_spks=kw["num_sources"],
        kernel_ms=kw["enc_kernel_size"],
        bottleneck_channels=kw["out_channels"],
        hidden_channels=kw["in_channels"],
        num_blocks=kw["num_blocks"],
        depth=kw["upsampling_depth"],
        d_state=d_state,
        decoder_s4=any(k.startswith("sm.unet.dec_s4.") for k in state_dict),
        topdown="faithful",
        conj_symmetric=conj_symmetric,
        align_frames=False,
    )
    return model, convert_s4m_state_dict(state_dict, conj_symmetric)


def _s4m_reference_name(model: nn.Module, key: str) -> str:
    """Our S4M key -> the reference's name for it (for error messages)."""
    from speechbrain_s4.layers import GlobalLayerNorm

    module_name, _, leaf = key.rpartition(".")
    if isinstance(model.get_submodule(module_name), GlobalLayerNorm):
        leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    key = f"{module_name}.{leaf}"
    s4 = re.match(r"^masknet\.block\.(s4|decoder_s4\.\d+)\.layer\.(.*)$", key)
    if s4:
        rest = re.sub(r"^kernel\.", "kernel.kernel.", s4.group(2))
        rest = re.sub(r"^output_linear\.", "output_linear.0.", rest)
        rest = rest.replace("kernel.kernel.base_length", "kernel.kernel.L")
        block = s4.group(1).replace("decoder_s4.", "dec_s4.")
        return f"sm.unet.{block}.layer.{rest}"
    for old, new in S4M_PREFIXES:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def _reference_kwargs(arch, defaults, given):
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown {arch} reference argument(s) {unknown}; the original "
            f"constructor takes {sorted(defaults)}"
        )
    return {**defaults, **given}


#: JusperLee/SPMamba ``SPMamba(...)`` keyword arguments: the values of the
#: reference recipes' 8 kHz configuration (MODELS.md 5.5). ``input_dim``,
#: ``lstm_hidden_units`` and ``use_builtin_complex`` do not change the
#: computation; the sizes are read from the checkpoint when not given.
SPMAMBA_REFERENCE_DEFAULTS = {
    "input_dim": 64,
    "n_srcs": 2,
    "n_fft": 256,
    "stride": 64,
    "window": "hann",
    "n_imics": 1,
    "n_layers": 6,
    "lstm_hidden_units": 256,
    "attn_n_head": 4,
    "attn_approx_qk_dim": 512,
    "emb_dim": 16,
    "emb_ks": 8,
    "emb_hs": 1,
    "activation": "prelu",
    "eps": 1e-5,
    "use_builtin_complex": False,
    "sample_rate": 8000,
}

#: the per-head attention modules of the reference, stacked in ours
_SPMAMBA_HEAD = re.compile(
    r"^blocks\.(\d+)\.attn_conv_([QKV])_(\d+)\.([012])\.(\w+)$"
)
_SPMAMBA_QKV = {"Q": "query", "K": "key", "V": "value"}
_SPMAMBA_STAGES = {"0": "conv", "1": "act", "2": "norm"}
#: reference key prefix -> ours, for everything but the attention heads
_SPMAMBA_PREFIXES = (
    ("conv.", "embed."),
    ("deconv.", "head."),
    ("intra_norm.", "intra.norm."),
    ("inter_norm.", "inter.norm."),
    ("intra_mamba.", "intra.mamba."),
    ("inter_mamba.", "inter.mamba."),
    ("intra_linear.", "intra.fold."),
    ("inter_linear.", "inter.fold."),
    ("attn_concat_proj.", "attention.output."),
)


def convert_spmamba_state_dict(reference_state_dict: dict) -> dict:
    """Map a JusperLee/SPMamba state dict to ``models.spmamba.SPMamba``.

    The keys are renamed (MODELS.md 5.6 -> ours); the layer norms' gains and
    biases lose their singleton axes ([1, C, 1, 1] -> [C] over channels,
    [1, E, 1, F] -> [E, F] over channels and frequency); the H attention
    heads' 1x1 convolutions, PReLU slopes and norms are stacked head-major
    (``attn_conv_Q_h.0.weight`` [E, C, 1, 1] for h = 0..H-1 ->
    ``attention.query.conv.weight`` [H E, C, 1, 1]). Nothing else changes:
    the BMamba blocks keep mamba_ssm's names.

    Arguments
    ---------
    reference_state_dict : dict
        ``SPMamba.state_dict()`` of the public code (684 entries for the six
        layers of the paper).

    Returns
    -------
    dict
        Our state dict.

    Raises
    ------
    KeyError
        Naming the first keys that do not belong to an SPMamba checkpoint,
        or attention heads with a missing member.

    Example
    -------
    >>> heads = {
    ...     f"blocks.0.attn_conv_Q_{h}.0.weight": torch.zeros(4, 16, 1, 1)
    ...     for h in range(4)
    ... }
    >>> heads["deconv.weight"] = torch.zeros(16, 4, 3, 3)
    >>> converted = convert_spmamba_state_dict(heads)
    >>> converted["blocks.0.attention.query.conv.weight"].shape
    torch.Size([16, 16, 1, 1])
    >>> converted["head.weight"].shape
    torch.Size([16, 4, 3, 3])
    """
    converted, heads, unknown = {}, {}, []
    for key, value in reference_state_dict.items():
        head = _SPMAMBA_HEAD.match(key)
        if head:
            block, qkv, index, stage, leaf = head.groups()
            name = (
                f"blocks.{block}.attention.{_SPMAMBA_QKV[qkv]}."
                f"{_SPMAMBA_STAGES[stage]}.{_norm_leaf(leaf)}"
            )
            heads.setdefault(name, {})[int(index)] = (key, value)
            continue
        ours = _spmamba_ours(key)
        if ours is None:
            unknown.append(key)
            continue
        if re.search(r"\.(intra|inter)\.norm\.", ours):
            value = value.reshape(-1)  # [1, C, 1, 1] -> [C]
        elif ours.startswith("blocks.") and ".attention.output.2." in ours:
            value = value[:, :, 0]  # [1, C, 1, F] -> [1, C, F]
        converted[ours] = value
    if unknown:
        raise KeyError(
            f"not an SPMamba (JusperLee/SPMamba) state dict: unexpected keys "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    for name, parts in heads.items():
        if sorted(parts) != list(range(len(parts))):
            raise KeyError(
                f"SPMamba state dict: the attention heads of {name} are "
                f"incomplete (found heads {sorted(parts)})"
            )
        keys, values = zip(*(parts[h] for h in range(len(parts))), strict=True)
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(
                "SPMamba state dict: the attention heads disagree in shape: "
                + ", ".join(
                    f"{k} {tuple(v.shape)}"
                    for k, v in zip(keys, values, strict=True)
                )
            )
        if ".norm." in name:  # [1, E, 1, F] per head -> [H, E, F]
            converted[name] = torch.stack([v[0, :, 0] for v in values])
        else:  # conv [E, C, 1, 1] / [E], PReLU [1] -> stacked head-major
            converted[name] = torch.cat(values)
    return converted


def _norm_leaf(leaf):
    return {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)


def _spmamba_ours(key):
    """Our name for a reference key outside the attention heads, or None."""
    block = re.match(r"^(blocks\.\d+\.)(.*)$", key)
    prefix, rest = (block.group(1), block.group(2)) if block else ("", key)
    for old, new in _SPMAMBA_PREFIXES:
        if rest.startswith(old) and (block is None) == (
            old in ("conv.", "deconv.")
        ):
            ours = prefix + new + rest[len(old) :]
            if "norm." in new or new == "attention.output.":
                ours = re.sub(r"\.gamma$", ".weight", ours)
                ours = re.sub(r"\.beta$", ".bias", ours)
            return ours
    return None


def _spmamba_reference_name(model: nn.Module, key: str) -> str:
    """Our SPMamba key -> the reference's name(s) for it (error messages)."""
    head = re.match(
        r"^blocks\.(\d+)\.attention\.(query|key|value)\.(conv|act|norm)"
        r"\.(\w+)$",
        key,
    )
    if head:
        block, role, stage, leaf = head.groups()
        qkv = {v: k for k, v in _SPMAMBA_QKV.items()}[role]
        index = {v: k for k, v in _SPMAMBA_STAGES.items()}[stage]
        if stage == "norm":
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        heads = model.blocks[int(block)].attention.heads
        return (
            f"blocks.{block}.attn_conv_{qkv}_{{0..{heads - 1}}}.{index}.{leaf}"
        )
    block = re.match(r"^(blocks\.\d+\.)(.*)$", key)
    prefix, rest = (block.group(1), block.group(2)) if block else ("", key)
    for old, new in _SPMAMBA_PREFIXES:
        if rest.startswith(new):
            name = prefix + old + rest[len(new) :]
            # the reference's layer norms call their gain and bias gamma, beta
            if old.endswith("_norm.") or rest.startswith("attention.output.2"):
                name = re.sub(r"\.weight$", ".gamma", name)
                name = re.sub(r"\.bias$", ".beta", name)
            return name
    return key


def _spmamba_sizes(state_dict: dict) -> dict:
    """The reference constructor's sizes, read from a state dict's shapes."""
    required = (
        "conv.0.weight",
        "deconv.weight",
        "blocks.0.intra_linear.weight",
        "blocks.0.attn_conv_Q_0.0.weight",
        "blocks.0.attn_conv_Q_0.2.gamma",
        "blocks.0.intra_mamba.forward_blocks.0.mixer.A_log",
    )
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise KeyError(
            f"not an SPMamba (JusperLee/SPMamba) state dict: missing {missing}"
            f" (found keys such as {list(state_dict)[:3]})"
        )
    blocks = {
        int(m.group(1))
        for m in (re.match(r"^blocks\.(\d+)\.", k) for k in state_dict)
        if m
    }
    heads = {
        int(m.group(1))
        for m in (
            re.match(r"^blocks\.0\.attn_conv_Q_(\d+)\.0\.weight$", k)
            for k in state_dict
        )
        if m
    }
    emb_dim, mics2 = state_dict["conv.0.weight"].shape[:2]
    A_log = state_dict["blocks.0.intra_mamba.forward_blocks.0.mixer.A_log"]
    emb_ks = state_dict["blocks.0.intra_linear.weight"].shape[2]
    return {
        "n_layers": len(blocks),
        "emb_dim": emb_dim,
        "n_imics": mics2 // 2,
        "n_srcs": state_dict["deconv.weight"].shape[1] // 2,
        "emb_ks": emb_ks,
        "attn_n_head": len(heads),
        "qk_channels": state_dict["blocks.0.attn_conv_Q_0.0.weight"].shape[0],
        "n_freqs": state_dict["blocks.0.attn_conv_Q_0.2.gamma"].shape[-1],
        "d_state": A_log.shape[1],
        "expand": A_log.shape[0] // (emb_dim * emb_ks),
    }


def _build_spmamba(state_dict, conj_symmetric, reference_kwargs):
    """SPMamba with the checkpoint's sizes; reference kwargs must agree."""
    from speechbrain_s4.models.spmamba import SPMamba

    _reference_kwargs("spmamba", SPMAMBA_REFERENCE_DEFAULTS, reference_kwargs)
    given = dict(reference_kwargs)
    sizes = _spmamba_sizes(state_dict)
    n_freqs = sizes["n_freqs"]
    # the STFT follows the LN4DCF width F = n_fft / 2 + 1 (MODELS.md 5.6)
    n_fft = given.get("n_fft", 2 * (n_freqs - 1))
    stride = given.get("stride", n_fft // 4)
    conflicts = [
        f"{name}={given[name]} (the checkpoint has {sizes[name]})"
        for name in ("n_layers", "emb_dim", "n_srcs", "emb_ks", "attn_n_head")
        if name in given and given[name] != sizes[name]
    ]
    if n_fft // 2 + 1 != n_freqs:
        conflicts.append(
            f"n_fft={n_fft} (the checkpoint's norms have F={n_freqs} bins, "
            f"i.e. n_fft={2 * (n_freqs - 1)})"
        )
    if sizes["n_imics"] != 1 or given.get("n_imics", 1) != 1:
        conflicts.append("n_imics != 1 (only single-channel SPMamba exists)")
    for name, supported in (("window", "hann"), ("activation", "prelu")):
        if given.get(name, supported) != supported:
            conflicts.append(f"{name}={given[name]!r} (only {supported!r})")
    qk_dim = given.get("attn_approx_qk_dim", sizes["qk_channels"] * n_freqs)
    if math.ceil(qk_dim / n_freqs) != sizes["qk_channels"]:
        conflicts.append(
            f"attn_approx_qk_dim={qk_dim} (gives E=ceil({qk_dim}/{n_freqs}),"
            f" the checkpoint has E={sizes['qk_channels']})"
        )
    if conflicts:
        raise ValueError(
            "SPMamba reference arguments do not fit the checkpoint: "
            + "; ".join(conflicts)
            + ". Omit them to read the sizes from the checkpoint."
        )
    sample_rate = given.get("sample_rate", {256: 8000, 512: 16000}.get(n_fft))
    if sample_rate is None:
        raise ValueError(
            f"SPMamba checkpoint with n_fft={n_fft}: pass sample_rate=... "
            "(only 256 -> 8000 Hz and 512 -> 16000 Hz are inferred)"
        )
    model = SPMamba(
        sample_rate=sample_rate,
        num_spks=sizes["n_srcs"],
        n_fft=n_fft,
        hop_length=stride,
        n_layers=sizes["n_layers"],
        emb_dim=sizes["emb_dim"],
        emb_ks=sizes["emb_ks"],
        emb_hs=given.get("emb_hs", 1),
        attn_n_head=sizes["attn_n_head"],
        attn_approx_qk_dim=qk_dim,
        d_state=sizes["d_state"],
        expand=sizes["expand"],
        eps=given.get("eps", 1e-5),
    )
    return model, convert_spmamba_state_dict(state_dict)


#: arch -> (function(state_dict, conj_symmetric, reference_kwargs) returning
#: (our model, our state dict), function(model, our key) -> reference key)
_BUILDERS = {
    "s4m": (_build_s4m, _s4m_reference_name),
    "spmamba": (_build_spmamba, _spmamba_reference_name),
}

#: archs whose checkpoint files' ``model_args`` supply default reference
#: arguments (recognised names only; SPMamba's released files hold a
#: meaningless {"n_sample_rate": 2})
_MODEL_ARGS = {"spmamba": SPMAMBA_REFERENCE_DEFAULTS}

#: prefix of a PyTorch Lightning module's keys in look2hear ``*.ckpt`` files
_LIGHTNING_PREFIX = "audio_model."


def load_reference_checkpoint(
    path_or_state_dict,
    arch: str,
    *,
    conj_symmetric: bool = True,
    **reference_kwargs,
) -> nn.Module:
    """Load an original checkpoint into the matching separator of ours.

    Arguments
    ---------
    path_or_state_dict : str, os.PathLike or dict
        A file saved by the reference code (a bare state dict, a dict
        holding it under ``state_dict`` with ``model_name`` and
        ``model_args``, or a Lightning ``*.ckpt`` with ``audio_model.`` key
        prefixes) or the state dict itself.
    arch : str
        "s4m" (JusperLee/S4M) or "spmamba" (JusperLee/SPMamba).
    conj_symmetric : bool
        S4 kernel semantics (S4M only): True (default) the exact kernel, as
        the reference computes it on GPU or with pykeops; False the
        reference's pure-PyTorch CPU fallback.
    **reference_kwargs
        The original constructor's keyword arguments (e.g. for S4M
        ``out_channels``, ``in_channels``, ``num_blocks``,
        ``upsampling_depth``, ``enc_kernel_size``, ``num_sources``,
        ``sample_rate``); omitted ones take the original defaults. For
        SPMamba (``input_dim``, ``n_srcs``, ``n_fft``, ``stride``, ``window``,
        ``n_imics``, ``n_layers``, ``lstm_hidden_units``, ``attn_n_head``,
        ``attn_approx_qk_dim``, ``emb_dim``, ``emb_ks``, ``emb_hs``,
        ``activation``, ``eps``, ``use_builtin_complex``, ``sample_rate``)
        the sizes are read from the checkpoint, the STFT from its norms'
        width (129 bins -> n_fft 256, hop 64, 8 kHz; 257 -> 512, 128,
        16 kHz); given values must agree with it, and the checkpoint
        file's ``model_args`` fill in the ones not given.

    Returns
    -------
    torch.nn.Module
        The separator (mixture [B, T] -> estimates [B, T, S]) with the
        checkpoint's weights, loaded strictly.

    Raises
    ------
    FileNotFoundError, KeyError, ValueError, TypeError
        Missing file, keys that do not fit, mis-shaped tensors, unknown
        constructor arguments.
    """
    if arch not in _BUILDERS:
        raise ValueError(
            f"unknown arch {arch!r}; expected one of {sorted(_BUILDERS)}"
        )
    state_dict, model_args = _read_checkpoint(path_or_state_dict)
    if arch in _MODEL_ARGS:
        known = {k: v for k, v in model_args.items() if k in _MODEL_ARGS[arch]}
        reference_kwargs = {**known, **reference_kwargs}
    build, reference_name = _BUILDERS[arch]
    model, converted = build(state_dict, conj_symmetric, reference_kwargs)
    load_strict(
        model,
        converted,
        source=f"{arch} reference checkpoint",
        rename=lambda key: reference_name(model, key),
    )
    return model


def _read_state_dict(path_or_state_dict) -> dict:
    return _read_checkpoint(path_or_state_dict)[0]


def _read_checkpoint(path_or_state_dict) -> tuple[dict, dict]:
    """(state dict, model_args) of a checkpoint file or dict.

    Unwraps ``state_dict`` (reference ``best_model.pth`` and Lightning
    ``*.ckpt`` files) and strips Lightning's ``audio_model.`` prefix when
    every key carries it; ``model_args`` is {} when absent.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint file at {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        checkpoint = path_or_state_dict
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"expected a state dict (a dict of tensors), got "
            f"{type(checkpoint).__name__}"
        )
    model_args = checkpoint.get("model_args")
    model_args = model_args if isinstance(model_args, dict) else {}
    if isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    state_dict = dict(checkpoint)
    prefix = _LIGHTNING_PREFIX
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        state_dict = {key[len(prefix) :]: v for key, v in state_dict.items()}
    return state_dict, model_args


def load_strict(
    model: nn.Module, state_dict: dict, source: str, rename=None
) -> None:
    """Load ``state_dict`` into ``model``, raising on any key or shape misfit.

    PyTorch's strict loading reports every problem in one long message;
    this names the first few missing and unexpected keys and the first
    mis-shaped tensors, so a user sees at once what does not fit.

    Arguments
    ---------
    model : torch.nn.Module
        The module to fill.
    state_dict : dict
        Its weights.
    source : str
        What the weights are (used in the messages).
    rename : callable, optional
        Maps a key of ``model`` to the name the user's file uses for it, so
        messages name keys as the user knows them.

    Raises
    ------
    KeyError
        Missing or unexpected keys.
    ValueError
        Tensors whose shapes differ from the model's.
    """
    expected = model.state_dict()
    rename = rename or (lambda key: key)
    missing = [rename(k) for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise KeyError(
            f"{source} does not fit {type(model).__name__}: "
            f"missing {_first(missing)}, unexpected {_first(unexpected)}"
        )
    wrong = [
        f"{rename(k)} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"{source} has tensors of the wrong shape for "
            f"{type(model).__name__}: {_first(wrong)}"
        )
    model.load_state_dict(state_dict, strict=True)


def _first(items, n=5):
    return (
        "[]"
        if not items
        else (
            "["
            + ", ".join(items[:n])
            + (", ..." if len(items) > n else "")
            + "]"
        )
    )
