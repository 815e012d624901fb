"""The copied reference fixtures are byte-identical to the shared originals."""

import hashlib
import json
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())


@pytest.mark.parametrize(
    "name",
    sorted(n for n, f in MANIFEST["files"].items() if "sha256" in f),
)
def test_golden_file_matches_manifest_checksum(name):
    digest = hashlib.sha256((GOLDEN_DIR / name).read_bytes()).hexdigest()
    assert digest == MANIFEST["files"][name]["sha256"]
