"""Original checkpoints -> state dicts of this package's modules.

The reference models (JusperLee/S4M, JusperLee/SPMamba) name and shape their
parameters differently from ours, and S4M's vendored ``s4.py`` stores a
length-dependent C~ = C (I - dA^L) instead of the SSM's C (S4, Gu, Goel and
Re, ICLR 2022, section 3.3). Each function here maps one reference state dict
to ours, validating keys and shapes so that a wrong checkpoint fails loudly
rather than loading half of its weights.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import torch

from speechbrain_s4.ssm.s4_kernel import (
    _complex_from_rows,
    _real_rows,
    dplr_bilinear,
)

__all__ = ["convert_s4_layer_state_dict"]

_S4_KERNEL = "kernel.kernel."
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
    eye = torch.eye(N, dtype=dA.dtype).expand_as(dA)
    dA_L = torch.linalg.matrix_power(dA, length)  # [H, N, N]
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
