"""Tests of speechbrain_s4.minimix on tiny builds from the real Debian voices.

One tiny set per rate (a few mixtures, 4 prompts per voice) is built once
per module; the tests check it against the recipe read back from the files:
speaker-disjoint splits, the 0-5 dB relative level, exact integer sums, the
requested noise SNR, utterance lengths and levels, reproducibility and the
preparation CSVs. Skipped, naming the apt-get line, without the packages.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbrain_s4 import minimix
from speechbrain_s4.minimix import SIGNALS, SPLITS, build_minimix, main
from speechbrain_s4.voices import apt_install_command, missing_packages

TINY = {
    "sizes": {"train": 6, "valid": 3, "test": 4},
    "seed": 7,
    "noise_snr_db": (2.0, 4.0),
    "prompts_per_voice": 4,
    "progress": False,
}


def _require_packages():
    missing = missing_packages(8000) + missing_packages(16000)
    if missing:
        pytest.skip(
            "Debian voice packages not installed: "
            + apt_install_command(sorted(set(missing)))
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``{rate: (rate folder, metadata)}`` of one tiny build at both rates."""
    _require_packages()
    out = tmp_path_factory.mktemp("minimix")
    paths = build_minimix(out, sample_rates=(8000, 16000), **TINY)
    return {
        rate: (Path(path).parent, json.loads(Path(path).read_text()))
        for rate, path in paths.items()
    }


def _signals(folder, split, mixture_id):
    """The five files of a mixture as int64 16-bit values, and their rate."""
    signals, rates = {}, set()
    for signal in SIGNALS:
        values, rate = sf.read(
            folder / split / signal / f"{mixture_id}.wav", dtype="int16"
        )
        signals[signal] = values.astype(np.int64)
        rates.add(rate)
    return signals, rates.pop()


def _power_db(a, b):
    return 10 * np.log10(
        np.sum(a.astype(np.float64) ** 2) / np.sum(b.astype(np.float64) ** 2)
    )


@pytest.mark.parametrize("rate", [8000, 16000])
def test_splits_are_speaker_disjoint(tiny, rate):
    _, metadata = tiny[rate]
    targets, babble = metadata["voices"], metadata["babble_voices"]
    every = [v for split in SPLITS for v in targets[split] + babble[split]]
    assert len(every) == len(set(every))  # each voice in exactly one role
    # Held-out major voices in test, both genders, at both rates.
    assert {"it_IT_m_Carlo", "fr_CA_f_June"} <= set(targets["test"])
    assert {metadata["voice_info"][v]["gender"] for v in targets["test"]} >= {
        "male",
        "female",
    }
    assert ("it_IT_f_Menardi" in targets["valid"]) == (rate == 8000)
    for split in SPLITS:
        assert len(targets[split]) >= 2 and babble[split]
        for record in metadata["mixtures"][split]:
            assert record["s1_voice"] != record["s2_voice"]
            assert {record["s1_voice"], record["s2_voice"]} <= set(
                targets[split]
            )
            assert set(record["noise"]["babble_voices"]) <= set(babble[split])
            assert record["s1"].startswith(record["s1_voice"] + "-")
        for utt in metadata["utterances"][split]:
            assert utt["voice"] in targets[split]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_mixtures_add_up_with_the_drawn_levels_and_snr(tiny, rate):
    folder, metadata = tiny[rate]
    for split in SPLITS:
        records = metadata["mixtures"][split]
        assert len(records) == TINY["sizes"][split]
        for record in records:
            signals, file_rate = _signals(folder, split, record["ID"])
            assert file_rate == rate
            np.testing.assert_array_equal(
                signals["s1"] + signals["s2"], signals["mix_clean"]
            )
            np.testing.assert_array_equal(
                signals["mix_clean"] + signals["noise"], signals["mix_both"]
            )
            assert len(signals["s1"]) == record["num_samples"]
            level = _power_db(signals["s1"], signals["s2"])
            assert 0.0 <= record["level_db"] <= 5.0
            assert level == pytest.approx(record["level_db"], abs=0.01)
            snr = _power_db(signals["mix_clean"], signals["noise"])
            assert (
                TINY["noise_snr_db"][0]
                <= record["snr_db"]
                <= TINY["noise_snr_db"][1]
            )
            assert snr == pytest.approx(record["snr_db"], abs=0.01)
            assert (
                np.abs(signals["mix_both"]).max()
                <= minimix.PEAK_LIMIT * 32768 + 2
            )
            assert record["noise"]["colour"] in minimix.NOISE_COLOURS
            assert 3 <= len(record["noise"]["babble_voices"]) <= 5


@pytest.mark.parametrize("rate", [8000, 16000])
def test_sources_are_utterances_of_a_useful_length(tiny, rate):
    folder, metadata = tiny[rate]
    low, high = 2.0, 6.0  # build_minimix's default utterance_seconds
    multi_prompt = 0
    for split in SPLITS:
        for utt in metadata["utterances"][split]:
            path = (
                folder / "sources" / split / utt["voice"] / f"{utt['ID']}.wav"
            )
            audio, file_rate = sf.read(path)
            assert file_rate == rate and len(audio) == utt["num_samples"]
            assert low * rate <= len(audio) <= high * rate
            rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
            # -28 dBFS, or less when that would push the peak past 0.99.
            assert rms_db == pytest.approx(-28.0, abs=0.02) or (
                rms_db < -28.0 and np.abs(audio).max() > 0.98
            )
            multi_prompt += len(utt["prompts"]) > 1
        # Every source of the mixtures is a written utterance.
        ids = {utt["ID"] for utt in metadata["utterances"][split]}
        assert all(
            {r["s1"], r["s2"]} <= ids for r in metadata["mixtures"][split]
        )
    assert multi_prompt > 0  # short prompts were concatenated


def test_mixture_sources_are_the_scaled_utterances(tiny):
    folder, metadata = tiny[8000]
    record = metadata["mixtures"]["test"][0]
    signals, _ = _signals(folder, "test", record["ID"])
    for key in ("s1", "s2"):
        voice = record[f"{key}_voice"]
        source, _ = sf.read(
            folder / "sources" / "test" / voice / f"{record[key]}.wav"
        )
        expected = source[: record["num_samples"]] * record[f"gain_{key}"]
        np.testing.assert_allclose(signals[key] / 32768, expected, atol=2e-4)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_metadata_records_the_build(tiny, rate):
    _, metadata = tiny[rate]
    assert metadata["dataset"] == "minimix" and metadata["sample_rate"] == rate
    assert metadata["seed"] == TINY["seed"] and metadata["subtype"] == "PCM_16"
    assert metadata["options"]["sizes"] == TINY["sizes"]
    for split in SPLITS:
        counts = metadata["counts"][split]
        assert counts["mixtures"] == TINY["sizes"][split]
        assert counts["utterances"] == len(metadata["utterances"][split])
    info = metadata["voice_info"]["it_IT_m_Carlo"]
    assert info["licence"] == "CC-BY-3.0" and info["split"] == "test"


def test_same_seed_rebuilds_identical_files(tiny, tmp_path):
    """Rebuilt through the command line: same bytes; another seed differs."""
    folder, metadata = tiny[8000]
    argv = [
        str(tmp_path / "again"),
        "--train",
        "6",
        "--valid",
        "3",
        "--test",
        "4",
        "--seed",
        "7",
        "--noise-snr-db",
        "2",
        "4",
        "--prompts-per-voice",
        "4",
        "--no-progress",
    ]
    assert main(argv) == 0
    again = tmp_path / "again" / "wav8k"
    rebuilt = json.loads((again / "metadata.json").read_text())
    for key in ("mixtures", "utterances", "voices", "babble_voices", "counts"):
        assert rebuilt[key] == metadata[key]
    for split in SPLITS:
        for record in metadata["mixtures"][split]:
            for signal in SIGNALS:
                name = f"{split}/{signal}/{record['ID']}.wav"
                assert (again / name).read_bytes() == (
                    folder / name
                ).read_bytes()
    other = build_minimix(tmp_path / "other", **{**TINY, "seed": 8})
    other_metadata = json.loads(Path(other[8000]).read_text())
    assert other_metadata["mixtures"]["train"] != metadata["mixtures"]["train"]


def test_prepare_builds_then_reuses_the_set(tmp_path):
    _require_packages()
    from recipes.minimix.prepare import prepare

    options = {**TINY, "sizes": {"train": 3, "valid": 2, "test": 2}}
    paths = prepare(
        tmp_path / "minimix", tmp_path / "save", noisy=True, **options
    )
    metadata = json.loads(
        (tmp_path / "minimix/wav8k/metadata.json").read_text()
    )
    rows = Path(paths["train"]).read_text().splitlines()
    assert rows[0] == "ID,duration,mix_wav,s1_wav,s2_wav,noise_wav"
    assert len(rows) - 1 == 3
    sources = Path(paths["train_sources"]).read_text().splitlines()
    assert len(sources) - 1 == len(metadata["utterances"]["train"])
    assert {line.split(",")[-1] for line in sources[1:]} <= set(
        metadata["voices"]["train"]
    )
    # Same options: nothing rebuilt; other options: refused, not overwritten.
    stamp = (tmp_path / "minimix/wav8k/metadata.json").stat().st_mtime_ns
    prepare(tmp_path / "minimix", tmp_path / "save", **options)
    assert (
        tmp_path / "minimix/wav8k/metadata.json"
    ).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other options"):
        prepare(
            tmp_path / "minimix", tmp_path / "save", **{**options, "seed": 9}
        )


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="apt-get install -y --no-install-recommends"
    ):
        build_minimix(
            tmp_path,
            asterisk_root=tmp_path,
            fillets_root=tmp_path,
            progress=False,
        )
    with pytest.raises(ValueError, match="no layout for 22050 Hz"):
        build_minimix(tmp_path, sample_rates=(22050,))
    with pytest.raises(ValueError, match="sizes="):
        build_minimix(tmp_path, sizes={"train": 5})
    (tmp_path / "taken" / "wav8k").mkdir(parents=True)
    assert main([str(tmp_path / "taken"), "--no-progress"]) == 2
