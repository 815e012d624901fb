"""Tests of speechbrain_s4.voices: Debian voice discovery, decoding, clean-up.

Tests marked ``needs_voices`` use the installed Debian packages and skip,
naming the apt-get line, when they are absent; the others use synthetic
signals and fake install roots and always run.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbrain_s4 import voices
from speechbrain_s4.voices import (
    apt_install_command,
    fillets_voice_id,
    find_voices,
    is_clipped,
    missing_packages,
    packages_for_rate,
    read_audio,
    require_voices,
    resample,
    split_on_pauses,
    trim_silence,
)

ASTERISK_8K = {
    "en_US_f_Allison",
    "fr_CA_f_June",
    "it_IT_m_Carlo",
    "ru_RU_f_IvrvoiceRU",
    "it_IT_f_Menardi",
}


@pytest.fixture(scope="module")
def voices_8k():
    found = find_voices(8000)
    if missing_packages(8000):
        pytest.skip(
            "Debian voice packages not installed: "
            + apt_install_command(missing_packages(8000))
        )
    return found


@pytest.fixture(scope="module")
def voices_16k():
    found = find_voices(16000)
    if missing_packages(16000):
        pytest.skip(
            "Debian voice packages not installed: "
            + apt_install_command(missing_packages(16000))
        )
    return found


def _log_envelope(audio, sample_rate):
    """Log energy of 20 ms frames."""
    frame = sample_rate // 50
    count = len(audio) // frame
    frames = audio[: count * frame].reshape(count, frame)
    return np.log(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-9)


def test_find_voices_8k_lists_asterisk_wav_and_fillets(voices_8k):
    assert ASTERISK_8K <= set(voices_8k)
    assert {"fillets_m", "fillets_v"} <= set(voices_8k)
    minors = [
        v for v in voices_8k if v.startswith("fillets_") and v[8:] not in "mv"
    ]
    assert len(minors) >= 20  # the game's ~40 minor characters
    for voice in ASTERISK_8K:
        paths = voices_8k[voice]
        assert len(paths) > 400
        assert paths == sorted(paths)
        assert all(p.endswith(".wav") for p in paths)
        assert not any("/silence/" in p for p in paths)
        assert not any(Path(p).stem in voices.NON_SPEECH_PROMPTS for p in paths)
        assert all(sf.info(p).samplerate == 8000 for p in paths[:20])
    # The leads: hundreds of lines each, none of the other characters'.
    assert len(voices_8k["fillets_m"]) > 500
    assert all(Path(p).suffix == ".ogg" for p in voices_8k["fillets_v"])
    assert not set(voices_8k["fillets_m"]) & set(voices_8k["fillets_v"])


def test_find_voices_16k_uses_only_wideband_material(voices_16k):
    asterisk = {v for v in voices_16k if not v.startswith("fillets_")}
    # Menardi exists only as 8 kHz WAV: it must not be upsampled into 16 kHz.
    assert asterisk == ASTERISK_8K - {"it_IT_f_Menardi"}
    for voice in asterisk:
        assert all(p.endswith(".g722") for p in voices_16k[voice])
    assert find_voices(44100) == {}


def test_g722_decodes_to_the_same_prompt_as_the_wav(voices_16k):
    for voice in ("en_US_f_Allison", "it_IT_m_Carlo", "ru_RU_f_IvrvoiceRU"):
        g722 = next(
            p for p in voices_16k[voice] if p.endswith("/vm-goodbye.g722")
        )
        wide, rate = read_audio(g722)
        narrow, narrow_rate = read_audio(g722[: -len("g722")] + "wav")
        assert (rate, narrow_rate) == (16000, 8000)
        assert wide.dtype == np.float32 and np.abs(wide).max() <= 1.0
        assert abs(len(wide) / 16000 - len(narrow) / 8000) < 0.01
        # Same words: the 20 ms energy envelopes match closely...
        env_wide = _log_envelope(wide, 16000)
        env_narrow = _log_envelope(narrow, 8000)
        n = min(len(env_wide), len(env_narrow))
        assert np.corrcoef(env_wide[:n], env_narrow[:n])[0, 1] > 0.9
        # ...and G.722 really carries speech above 4 kHz (not upsampled).
        power = np.abs(np.fft.rfft(wide)) ** 2
        freqs = np.fft.rfftfreq(len(wide), 1 / 16000)
        assert power[freqs > 4000].sum() / power.sum() > 1e-3


def test_fillets_ogg_reads_mono_at_native_rate(voices_8k):
    audio, rate = read_audio(voices_8k["fillets_v"][0])
    assert rate in (22050, 44100)
    assert audio.ndim == 1 and len(audio) > rate // 4
    clip = voices.load_clip(voices_8k["fillets_v"][0], 8000)
    assert abs(len(clip) - len(audio) * 8000 / rate) <= 1


def test_fillets_voice_id_parses_every_naming_scheme():
    assert fillets_voice_id("/s/barrel/cs/bar-m-barel.ogg") == "fillets_m"
    assert fillets_voice_id("/s/rush/cs/v-chytra.ogg") == "fillets_v"
    assert fillets_voice_id("/s/fdto/cs/proc-v.ogg") == "fillets_v"
    assert fillets_voice_id("/s/fdto/cs/nejlepsi-b.ogg") == "fillets_fdto_b"
    assert fillets_voice_id("/s/gods/cs/b2-6.ogg") == "fillets_gods_b2"
    assert fillets_voice_id("/s/linux/cs/2-C.ogg") == "fillets_linux_2"
    assert fillets_voice_id("/s/keys/cs/rand-4-4-1.ogg") == "fillets_keys_4"
    assert fillets_voice_id("/s/viking1/cs/dr-4-x.ogg") == fillets_voice_id(
        "/s/viking2/cs/dr-4-y.ogg"
    )
    assert fillets_voice_id("/s/briefcase/cs/help1.ogg") is None


def test_missing_packages_raise_with_the_apt_line(tmp_path):
    assert find_voices(8000, tmp_path, tmp_path) == {}
    with pytest.raises(FileNotFoundError) as error:
        require_voices(16000, tmp_path, tmp_path)
    message = str(error.value)
    expected = apt_install_command(
        [
            "asterisk-core-sounds-en-g722",
            "asterisk-core-sounds-fr-g722",
            "asterisk-core-sounds-it-g722",
            "asterisk-core-sounds-ru-g722",
            "fillets-ng-data-cs",
        ]
    )
    assert expected in message
    assert (
        "asterisk-core-sounds-en-wav" not in message
    )  # only what 16 kHz needs
    # One package present, the others reported missing.
    voice_dir = tmp_path / "en_US_f_Allison"
    voice_dir.mkdir()
    sf.write(voice_dir / "hello.wav", np.zeros(800), 8000)
    missing = missing_packages(8000, tmp_path, tmp_path)
    assert "asterisk-core-sounds-en-wav" not in missing
    assert "asterisk-prompt-it-menardi-wav" in missing
    assert find_voices(8000, tmp_path, tmp_path) == {
        "en_US_f_Allison": [str(voice_dir / "hello.wav")]
    }


def test_packages_for_rate_pick_native_material():
    names_8k = [p.name for p in packages_for_rate(8000)]
    names_16k = [p.name for p in packages_for_rate(16000)]
    assert all("g722" not in name for name in names_8k)
    assert "asterisk-prompt-it-menardi-wav" in names_8k
    assert all(
        name.endswith("g722") or name.startswith("fillets")
        for name in names_16k
    )
    assert apt_install_command().split()[:4] == [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
    ]
    assert len(apt_install_command().split()) == 4 + len(voices.PACKAGES)


def test_resample_filters_aliases_and_refuses_upsampling():
    t = np.arange(22050) / 22050
    low = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    high = np.sin(2 * np.pi * 6000 * t).astype(np.float32)  # above 4 kHz
    assert resample(low, 22050, 8000).shape == (8000,)
    assert np.std(resample(low, 22050, 8000)[400:-400]) == pytest.approx(
        np.std(low), rel=0.02
    )
    assert np.std(resample(high, 22050, 8000)[400:-400]) < 0.01
    with pytest.raises(ValueError, match="refusing to upsample"):
        resample(low, 8000, 16000)


def test_trim_and_split_follow_the_pauses():
    rate = 8000
    rng = np.random.default_rng(0)
    word = (0.3 * rng.standard_normal(2400)).astype(np.float32)  # 0.3 s
    hiss = (1e-4 * rng.standard_normal(4000)).astype(np.float32)  # -80 dB
    clip = np.concatenate([hiss, word, hiss[:800], word, hiss, word, hiss])
    trimmed = trim_silence(clip, rate)
    margin = int(0.04 * rate)
    assert len(trimmed) == 3 * 2400 + 800 + 4000 + 2 * margin
    phrases = split_on_pauses(clip, rate, min_pause_ms=300)
    # The 0.1 s gap joins two words; the 0.5 s gap splits.
    assert [len(p) for p in phrases] == [
        2400 * 2 + 800 + 2 * margin,
        2400 + 2 * margin,
    ]
    assert split_on_pauses(np.zeros(8000), rate) == []
    assert trim_silence(np.zeros(8000), rate).shape == (0,)


def test_is_clipped_counts_full_scale_samples():
    t = np.arange(8000) / 8000
    clean = 0.9 * np.sin(2 * np.pi * 200 * t)
    assert not is_clipped(clean)
    assert is_clipped(np.clip(2 * clean, -1, 1))
    assert not is_clipped(np.zeros(0))


def test_imports_without_av_and_fails_clearly_on_g722(tmp_path, monkeypatch):
    """Block PyAV: the modules load and WAV reads; G.722 names the package."""
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" now fails
    for name in ("voices", "minimix"):
        path = Path(voices.__file__).with_name(f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_no_av_{name}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(800), 8000)
    audio, rate = read_audio(wav)
    assert rate == 8000 and audio.shape == (800,)
    with pytest.raises(ModuleNotFoundError, match="needs PyAV: pip install av"):
        read_audio(tmp_path / "prompt.g722")
