"""Separation models and the name -> model registry.

Every model here is a *separator*: ``forward(mix [B, T]) -> [B, T, S]``
with ``sample_rate`` and ``num_spks`` attributes (DEVELOPING.md), so the
Brain, the inference interface and the benchmark treat them alike.

Example
-------
>>> model = build("s4m-tiny", hidden_channels=16, num_blocks=1)
>>> model(torch.randn(1, 800)).shape
torch.Size([1, 800, 2])
"""

import importlib

import torch  # noqa: F401  (used by the doctest)

__all__ = ["build", "MODEL_NAMES"]

#: name -> (module, class, default keyword arguments)
_REGISTRY = {
    "s4m-tiny": ("speechbrain_s4.models.s4m", "S4M", {"decoder_s4": False}),
    "s4m": ("speechbrain_s4.models.s4m", "S4M", {"decoder_s4": True}),
    "spmamba": ("speechbrain_s4.models.spmamba", "SPMamba", {}),
    "s4m-tiny-causal": (
        "speechbrain_s4.models.s4m_causal",
        "CausalS4M",
        {"decoder_s4": False},
    ),
    # stock SpeechBrain lobes with SpeechBrain's WSJ0Mix recipe sizes
    "sepformer": ("speechbrain_s4.models.baselines", "Sepformer", {}),
    "convtasnet": ("speechbrain_s4.models.baselines", "ConvTasNet", {}),
}

MODEL_NAMES = tuple(_REGISTRY)


def build(name: str, sample_rate: int = 8000, num_spks: int = 2, **overrides):
    """Build a separator by name.

    Arguments
    ---------
    name : str
        One of ``MODEL_NAMES``.
    sample_rate : int
        Sampling rate in Hz the model works at.
    num_spks : int
        Number of speakers to separate.
    **overrides
        Constructor keyword arguments replacing the named configuration's
        values (e.g. ``num_blocks=4`` for a quick test).

    Returns
    -------
    torch.nn.Module
        The separator, mixture [B, T] -> estimates [B, T, S].
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model name {name!r}; expected one of "
            f"{', '.join(sorted(_REGISTRY))}"
        )
    module, class_name, defaults = _REGISTRY[name]
    cls = getattr(importlib.import_module(module), class_name)
    kwargs = {**defaults, **overrides}
    return cls(sample_rate=sample_rate, num_spks=num_spks, **kwargs)
