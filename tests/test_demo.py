"""``speechbrain-s4 demo``: a real-voice mixture separated offline."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from speechbrain_s4.demo import demo_mixture
from speechbrain_s4.inference import save_inference_folder
from speechbrain_s4.models import build
from speechbrain_s4.voices import apt_install_command, missing_packages

MISSING = missing_packages(8000)
needs_voices = pytest.mark.skipif(
    bool(MISSING),
    reason=f"Debian voice packages not installed: {apt_install_command(MISSING)}",
)


@needs_voices
def test_demo_mixture_is_two_held_out_voices():
    mixture, sources, info = demo_mixture(8000, seed=1)
    assert sources.shape == (len(mixture), 2)
    np.testing.assert_allclose(mixture, sources.sum(-1), atol=1e-6)
    assert 0 <= info["level_db"] <= 5
    assert len(set(info["voices"])) == 2
    from speechbrain_s4.minimix import MAJOR_VOICES

    assert set(info["voices"]) <= set(MAJOR_VOICES[8000]["test"])
    assert len(mixture) >= 3 * 8000  # both utterances last 3-6 s
    levels = [10 * np.log10(np.mean(s**2)) for s in sources.T]
    assert abs(levels[0] - levels[1] - info["level_db"]) < 0.01


@needs_voices
def test_demo_command_writes_estimates_and_png(tmp_path):
    model = save_inference_folder(
        build("s4m-tiny", hidden_channels=16, bottleneck_channels=8,
              num_blocks=1, depth=2, d_state=4).eval(),
        tmp_path / "model",
    )
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", "demo", "-o", str(out),
         "--model", str(model)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SI-SNRi" in result.stdout and "SDRi" in result.stdout
    mixture, rate = sf.read(out / "mixture.wav")
    assert rate == 8000
    for name in ("source1", "source2", "mixture_s1", "mixture_s2"):
        signal, _ = sf.read(out / f"{name}.wav")
        assert signal.shape == mixture.shape
    png = (out / "spectrograms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_demo_command_without_model_fails_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "speechbrain_s4.cli", "demo", "-o",
         str(tmp_path), "--model", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
