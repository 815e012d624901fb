"""Shared pytest fixtures.

* ``golden(name)`` loads a reference fixture (state dicts, inputs and outputs
  produced by the public reference implementations) from ``tests/golden``;
  those files are copies of ``../shared/fixtures/reference`` so that a clean
  clone can run every fidelity test offline.
* ``--device`` (as in SpeechBrain's test suite) selects where models run.
"""

import json
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


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
