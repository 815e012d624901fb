"""Shared pytest fixtures.

* ``golden(name)`` loads a reference fixture (state dicts, inputs and outputs
  produced by the public reference implementations) from ``tests/golden``;
  those files are copies of ``../shared/fixtures/reference`` so that a clean
  clone can run every fidelity test offline.
* ``--device`` (as in SpeechBrain's test suite) selects where models run.
"""

import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

# One thread per process: the suite runs tiny models, several processes at
# once (subprocess and DDP tests), often on a busy machine, where OpenMP and
# BLAS threads spinning against each other make small ops 5-50x slower.
# Child processes (train.py, the CLI) inherit the environment.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu", help="torch device the tests run on"
    )


@pytest.fixture
def device(request):
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def golden():
    """Return a loader: ``golden("s4_layer_io")`` -> the unpickled dict."""
    cache = {}

    def load(name):
        if name not in cache:
            path = GOLDEN_DIR / f"{name}.pt"
            cache[name] = torch.load(path, weights_only=True)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def manifest():
    """The fixtures' manifest (kwargs, key shapes, parameter counts)."""
    return json.loads((GOLDEN_DIR / "manifest.json").read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
