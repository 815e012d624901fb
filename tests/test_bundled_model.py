"""The S4M-tiny shipped inside the package (issue 7).

It must be installed with the package, small, load strictly offline as the
default model, and keep separating real held-out voices exactly as it did
when it was exported: its model card records the scores measured then, and
the demo mixtures are re-scored here (a change in the S4M code, the loading
or the inference path that alters the shipped model's output fails this).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_s4.demo import run_demo
from speechbrain_s4.inference import (
    CHECKPOINT_FILE,
    DEFAULT_MODEL,
    HPARAMS_FILE,
    PRETRAINED_DIR,
    S4Separation,
    bundled_models,
)
from speechbrain_s4.models import build
from speechbrain_s4.voices import apt_install_command, missing_packages

FOLDER = PRETRAINED_DIR / DEFAULT_MODEL
MISSING = missing_packages(8000)
needs_voices = pytest.mark.skipif(
    bool(MISSING),
    reason=f"Debian voice packages not installed: {apt_install_command(MISSING)}",
)


def card():
    return json.loads((FOLDER / "model_card.json").read_text())


def test_bundled_model_is_installed_small_and_described():
    assert DEFAULT_MODEL in bundled_models()
    sizes = {p.name: p.stat().st_size for p in FOLDER.iterdir()}
    assert {HPARAMS_FILE, CHECKPOINT_FILE, "model_card.json"} <= set(sizes)
    assert sum(sizes.values()) <= 10 * 2**20  # the brief: at most 10 MB
    info = card()
    for key in ("model", "trained_on", "sample_rate", "training",
                "test", "demo"):
        assert key in info, key
    assert info["model"] == "s4m-tiny" and info["sample_rate"] == 8000
    assert info["training"]["cpu_hours"] > 0


def test_bundled_model_loads_strictly_as_the_default():
    model = S4Separation.from_hparams(run_opts={"device": "cpu"})
    separator = model.mods.separator
    reference = build("s4m-tiny", sample_rate=8000)
    assert sum(p.numel() for p in separator.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    # the shipped weights, not an initialisation
    state = torch.load(FOLDER / CHECKPOINT_FILE, map_location="cpu")
    for name, value in separator.state_dict().items():
        assert torch.equal(value, state[name]), name
    mix = 0.1 * torch.randn(1, 4000)
    out = model.separate_batch(mix)
    assert out.shape == (1, 4000, 2) and torch.isfinite(out).all()


@needs_voices
@pytest.mark.parametrize("seed", [0, 1])
def test_bundled_model_scores_on_held_out_voices_are_unchanged(seed, tmp_path):
    recorded = card()["demo"][str(seed)]
    result = run_demo(tmp_path, seed=seed, run_opts={"device": "cpu"})
    assert result["voices"] == recorded["voices"]
    assert result["si-snr_i"] == pytest.approx(recorded["si-snr_i"], abs=0.05)
    assert result["sdr_i"] == pytest.approx(recorded["sdr_i"], abs=0.05)


@needs_voices
def test_separate_command_uses_the_bundled_model(tmp_path):
    # a 16 kHz stereo file: resampled to the model's 8 kHz, downmixed, and
    # written back at 16 kHz
    from speechbrain_s4.demo import demo_mixture

    mixture, _, _ = demo_mixture(8000)
    stereo = np.stack([mixture, mixture], axis=1)
    upsampled = np.repeat(stereo, 2, axis=0)  # crude 16 kHz copy
    path = tmp_path / "mixture.wav"
    sf.write(path, upsampled, 16000)
    done = subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", "separate", str(path),
         "-o", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for k in (1, 2):
        audio, rate = sf.read(tmp_path / "out" / f"mixture_s{k}.wav")
        assert rate == 16000 and audio.shape == (len(upsampled),)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0
