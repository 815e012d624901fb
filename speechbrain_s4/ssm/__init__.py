"""Sequence maths: the S4 layer and kernels, the Mamba selective scan and mixer.

Nothing here knows about audio, SpeechBrain or YAML. Names are imported
lazily so that ``import speechbrain_s4.ssm`` stays cheap and optional CUDA
packages are only touched when a CUDA backend is asked for.
"""

import importlib

#: public name -> submodule that defines it
_EXPORTS = {
    "S4": "s4",
    "DPLRKernel": "s4_kernel",
    "DiagonalKernel": "s4_kernel",
    "shared_kernels": "s4_kernel",
    "fft_conv": "fftconv",
    "selective_scan": "scan",
    "selective_scan_ref": "scan",
    "Mamba": "mamba",
    "RMSNorm": "mamba",
    "Block": "mamba",
    "BiMamba": "mamba",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
