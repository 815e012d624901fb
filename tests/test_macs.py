"""MAC counting: the convention of MODELS.md section 1.4, checked by hand."""

import math

import pytest
import torch
from torch import nn

from speechbrain_s4.macs import count_macs
from speechbrain_s4.models import build
from speechbrain_s4.ssm import Mamba


class ConvAndFFT(nn.Module):
    """A toy separator whose MACs are known in closed form."""

    sample_rate, num_spks = 1000, 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)  # fan-in 3
        self.linear = nn.Linear(4, 2)  # fan-in 4
        self.mamba = Mamba(4, d_state=2, expand=1)

    def forward(self, mix, lengths=None):
        x = self.conv(mix.unsqueeze(1))  # [B, 4, T]
        spectrum = torch.fft.rfft(x, n=2 * x.shape[-1])  # real FFTs
        x = torch.fft.irfft(spectrum * spectrum, n=2 * x.shape[-1])
        x = x[..., : mix.shape[-1]]
        x = self.mamba(x.transpose(1, 2))  # [B, T, 4]
        return self.linear(x)  # [B, T, 2]


def test_count_macs_follows_the_convention():
    model = ConvAndFFT()
    T = 1000
    report = count_macs(model, seconds=1.0)
    n = 2 * T
    ffts = 4 * (2 * n * math.log2(n)) * 2  # 4 channels, rfft and irfft
    products = 4 * 4 * (n // 2 + 1)  # complex pointwise product
    assert report["fft"] == pytest.approx(ffts + products)
    d_inner, state, rank = 4, 2, 1
    mamba = T * (4 * 2 * d_inner + d_inner * 4 + d_inner * (rank + 2 * state)
                 + rank * d_inner + d_inner * 4)  # in, conv, x, dt, out proj
    assert report["matmul"] == pytest.approx(T * 4 * 3 + mamba + T * 2 * 4)
    assert report["scan"] == 9 * T * d_inner * state + 2 * T * d_inner
    assert report["total"] == pytest.approx(sum(
        report[k] for k in ("matmul", "fft", "scan")))


@pytest.mark.parametrize("name, low, high", [("s4m-tiny", 5.3e9, 5.7e9),
                                             ("s4m", 21e9, 23e9)])
def test_s4m_macs_per_second_match_the_spec(name, low, high):
    """MODELS.md: S4M-tiny about 5.6 G/s, S4M about 22 G/s at 8 kHz."""
    report = count_macs(build(name))
    assert low < report["total"] < high
