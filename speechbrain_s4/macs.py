"""Multiply-accumulates (MACs) per second of audio, by one stated convention.

Counting convention (MODELS.md section 1.4): one forward pass, batch 1,
``seconds`` of audio at the model's rate, divided by ``seconds``.

* **Convolutions, linears and matrix products** are counted where they run,
  at PyTorch's dispatch level (``torch.utils.flop_counter.FlopCounterMode``,
  MACs = FLOPs / 2): an output element with fan-in f costs f. Because the
  count happens below the modules, convolutions called functionally and
  attention matmuls are included too; biases, norms and activations are not.
* **FFTs** are added by formula, also at dispatch level: a real FFT or
  inverse FFT of length n costs 2 n log2 n, a complex one twice that, and a
  complex pointwise product 4 MACs per element. One S4 FFT convolution over
  H channels of length L (n = 2L) therefore costs
  H (3 * 2n log2 n + 4 (n/2 + 1)).
* **Kernels no counter sees** report themselves
  (``speechbrain_s4.ssm.counting``): selective scans (Mamba) add
  9 B L D N + 2 B L D per call (the D skip and the z gate, mamba issue
  #110), and depthwise convolutions computed as sums of shifted products
  (faster on CPU) add their fan-in per output element like any
  convolution.

Example
-------
>>> from speechbrain_s4.models import build
>>> report = count_macs(build("s4m-tiny", num_blocks=1), seconds=0.1)
>>> sorted(report)
['fft', 'matmul', 'scan', 'total']
"""

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from speechbrain_s4.ssm import counting

__all__ = ["count_macs"]

_FFT_OPS = {"_fft_r2c", "_fft_c2r", "_fft_c2c"}


class _FFTCounter(TorchDispatchMode):
    """Counts FFTs and complex pointwise products by formula."""

    def __init__(self):
        super().__init__()
        self.macs = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _FFT_OPS:
            self.macs += _fft_macs(name, args)
        elif name in ("mul", "mul_") and _is_complex(out):
            self.macs += 4 * out.numel()
        return out


def _is_complex(tensor):
    return isinstance(tensor, torch.Tensor) and tensor.is_complex()


def _fft_macs(name, args):
    x, dims = args[0], args[1]
    if name == "_fft_c2r":
        n = args[3]  # last_dim_size: the real output length
        batch = x.numel() // x.shape[dims[-1]]
        return batch * 2 * n * math.log2(max(n, 2))
    n = math.prod(x.shape[d] for d in dims)
    batch = x.numel() // n
    per_transform = 2 * n * math.log2(max(n, 2))
    return batch * per_transform * (2 if name == "_fft_c2c" else 1)


def count_macs(model, seconds: float = 1.0, sample_rate=None) -> dict:
    """MACs per second of audio of a separator, split by kind.

    Arguments
    ---------
    model : torch.nn.Module
        A separator (mixture [B, T] -> [B, T, S]) with ``sample_rate``.
    seconds : float
        Length of the random input used for counting.
    sample_rate : int, optional
        Overrides ``model.sample_rate``.

    Returns
    -------
    dict
        ``matmul`` (convolutions, linears, matrix products), ``fft``,
        ``scan`` and ``total``, each in MACs per second of audio.
    """
    rate = sample_rate or model.sample_rate
    mix = torch.randn(1, int(round(seconds * rate)))
    was_training = model.training
    model.eval()
    ffts = _FFTCounter()
    unseen = {}
    try:
        with torch.no_grad(), counting.record_macs(unseen):
            with FlopCounterMode(display=False) as flops, ffts:
                model(mix)
    finally:
        model.train(was_training)
    report = {
        "matmul": flops.get_total_flops() / 2 + unseen.get("conv", 0),
        "fft": ffts.macs,
        "scan": float(unseen.get("scan", 0)),
    }
    report = {key: value / seconds for key, value in report.items()}
    report["total"] = sum(report.values())
    return report
