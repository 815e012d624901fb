"""MACs of hand-written kernels that no operation counter can see.

``speechbrain_s4.macs`` counts convolutions and matrix products at
PyTorch's dispatch level. Kernels written as fused C++ code (the selective
scan) or as sums of shifted elementwise products (short depthwise
convolutions, which run faster that way on CPU) are invisible there, so they
report their multiply-accumulates here while a count is active. Outside a
count, ``note`` costs one list check.

Example
-------
>>> counts = {}
>>> with record_macs(counts):
...     note("conv", 12)
...     note("conv", 3)
>>> counts
{'conv': 15}
"""

import contextlib

__all__ = ["record_macs", "note", "active"]

_recorders = []


@contextlib.contextmanager
def record_macs(counts: dict):
    """Add the MACs noted inside the block to ``counts[kind]``.

    Arguments
    ---------
    counts : dict
        Receives ``{kind: MACs}`` (kinds: ``"conv"``, ``"scan"``).
    """
    _recorders.append(counts)
    try:
        yield counts
    finally:
        _recorders.remove(counts)


def active() -> bool:
    """Whether a count is running (callers skip computing MACs otherwise)."""
    return bool(_recorders)


def note(kind: str, macs: int) -> None:
    """Report ``macs`` multiply-accumulates of a kind to every active count."""
    for counts in _recorders:
        counts[kind] = counts.get(kind, 0) + int(macs)
