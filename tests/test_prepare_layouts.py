"""Tests of recipes/<dataset>/prepare.py on fake folder trees of every layout.

Each layout is built by tests/fake_layouts.py; the CSVs are checked for
columns, rows, absolute existing paths, header durations, pairing by name,
the folders each option selects, the skip/redo logic and every error path.
"""

import csv
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fake_layouts import LAYOUTS, make_echo2mix_json, make_fake_layout

from recipes.common import OPTIONS_FILE

#: Layout -> (default prepare options, expected sub-folder/file of each column).
EXPECTED = {
    "wsj0mix": ({}, {"mix_wav": "mix", "s1_wav": "s1", "s2_wav": "s2"}),
    "librimix": ({}, {"mix_wav": "mix_clean", "s1_wav": "s1", "s2_wav": "s2"}),
    "wham": (
        {},
        {
            "mix_wav": "mix_both",
            "s1_wav": "s1",
            "s2_wav": "s2",
            "noise_wav": "noise",
        },
    ),
    "whamr": (
        {},
        {
            "mix_wav": "mix_both_reverb",
            "s1_wav": "s1_anechoic",
            "s2_wav": "s2_anechoic",
            "noise_wav": "noise",
        },
    ),
    "lrs2mix": ({}, {"mix_wav": "mix", "s1_wav": "s1", "s2_wav": "s2"}),
    "echo2mix": (
        {},
        {
            "mix_wav": "mix.wav",
            "s1_wav": "spk1_reverb.wav",
            "s2_wav": "spk2_reverb.wav",
        },
    ),
    "minimix": (
        {"build": False},
        {"mix_wav": "mix_clean", "s1_wav": "s1", "s2_wav": "s2"},
    ),
}
#: Layouts writing train_sources.csv.
WITH_SOURCES = {"wsj0mix", "librimix", "minimix"}
#: Split -> folder name per layout family, for the folder check.
SPLIT_NAMES = {
    "wsj0mix": ("tr", "cv", "tt"),
    "librimix": ("train-100", "dev", "test"),
    "wham": ("tr", "cv", "tt"),
    "whamr": ("tr", "cv", "tt"),
    "lrs2mix": ("tr", "cv", "tt"),
    "echo2mix": ("train", "val", "test"),
    "minimix": ("train", "valid", "test"),
}


def _prepare(name):
    return importlib.import_module(f"recipes.{name}.prepare").prepare


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


@pytest.mark.parametrize("name", LAYOUTS)
def test_prepare_writes_the_shared_schema(name, tmp_path):
    data_folder = make_fake_layout(name, tmp_path / "data")
    options, folders = EXPECTED[name]
    paths = _prepare(name)(
        data_folder, tmp_path / "save", sample_rate=8000, **options
    )
    expected_outputs = {"train", "valid", "test"} | (
        {"train_sources"} if name in WITH_SOURCES else set()
    )
    assert set(paths) == expected_outputs
    for split, split_name in zip(
        ("train", "valid", "test"), SPLIT_NAMES[name], strict=True
    ):
        assert Path(paths[split]) == tmp_path / "save" / f"{split}.csv"
        columns, rows = _read(paths[split])
        assert columns == ["ID", "duration"] + list(folders)
        assert len(rows) == 3
        assert [row["ID"] for row in rows] == sorted(row["ID"] for row in rows)
        for row in rows:
            for column, folder in folders.items():
                path = Path(row[column])
                assert path.is_absolute() and path.is_file()
                assert split_name in path.parts
                if name == "echo2mix":  # one folder per mixture
                    assert path.name == folder and path.parent.name == row["ID"]
                else:  # one folder per signal, paired by name
                    assert path.parent.name == folder
                    assert path.name == row["ID"] + ".wav"
            info = sf.info(row["mix_wav"])
            assert float(row["duration"]) == pytest.approx(
                info.frames / info.samplerate
            )
    assert (tmp_path / "save" / OPTIONS_FILE).is_file()


def test_durations_come_from_the_headers(tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", seconds=0.5)
    paths = _prepare("wsj0mix")(data_folder, tmp_path / "save")
    _, rows = _read(paths["train"])
    # Mixture k pairs utterances k and k+1 (0.5 + 0.125 k s), cut to the shorter.
    assert [float(row["duration"]) for row in rows] == [0.5, 0.625, 0.5]


def test_mixtures_are_sums_of_the_listed_sources(tmp_path):
    """The columns point at matching signals, not just matching names."""
    data_folder = make_fake_layout("wham", tmp_path / "data")
    _, rows = _read(_prepare("wham")(data_folder, tmp_path / "save")["test"])
    for row in rows:
        signals = {
            key: sf.read(row[key], dtype="int16")[0].astype(np.int32)
            for key in ("mix_wav", "s1_wav", "s2_wav", "noise_wav")
        }
        total = signals["s1_wav"] + signals["s2_wav"] + signals["noise_wav"]
        np.testing.assert_array_equal(signals["mix_wav"], total)


def test_wsj0mix_accepts_the_parent_folder_and_16k(tmp_path):
    data_folder = make_fake_layout(
        "wsj0mix", tmp_path / "data", sample_rate=16000
    )
    assert data_folder.name == "2speakers" and "wsj" in str(data_folder)
    from_parent = _prepare("wsj0mix")(
        data_folder.parent, tmp_path / "a", sample_rate=16000
    )
    direct = _prepare("wsj0mix")(data_folder, tmp_path / "b", sample_rate=16000)
    for split in ("train", "valid", "test", "train_sources"):
        assert (
            Path(from_parent[split]).read_text()
            == Path(direct[split]).read_text()
        )
    _, rows = _read(direct["test"])
    assert all("/wav16k/min/tt/" in row["mix_wav"] for row in rows)
    with pytest.raises(FileNotFoundError, match="wav8k"):
        _prepare("wsj0mix")(data_folder, tmp_path / "c", sample_rate=8000)


def test_wsj0mix_train_sources_keep_the_longest_copy(tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", seconds=0.5)
    paths = _prepare("wsj0mix")(data_folder, tmp_path / "save")
    columns, rows = _read(paths["train_sources"])
    assert columns == ["ID", "duration", "wav", "spk_id"]
    assert [row["ID"] for row in rows] == ["000c0200", "001c0201", "002c0202"]
    assert [row["spk_id"] for row in rows] == ["000", "001", "002"]
    # Utterance k (0.5 + 0.125 k s) is in mixtures (k-1, k) and (k, k+1),
    # each cut to its shorter utterance: the longest copies are 0.5 s (u0,
    # both copies), 0.625 s (u1, whole in (u1, u2)) and 0.625 s (u2, whose
    # partners are both shorter), the last one being s2 of mixture 1.
    assert [float(row["duration"]) for row in rows] == [0.5, 0.625, 0.625]
    assert Path(rows[2]["wav"]).parent.name == "s2"
    assert Path(rows[2]["wav"]).name.startswith("001c0201_")
    for row in rows:
        assert Path(row["wav"]).parent.parent.name == "tr"
        assert sf.info(row["wav"]).duration == pytest.approx(
            float(row["duration"])
        )


def test_librimix_options_select_folders(tmp_path):
    data_folder = make_fake_layout("librimix", tmp_path / "data")
    prepare = _prepare("librimix")
    paths = prepare(data_folder.parent, tmp_path / "a", train_set="train-460")
    _, rows = _read(paths["train"])
    assert len(rows) == 6
    assert {Path(row["mix_wav"]).parts[-3] for row in rows} == {
        "train-100",
        "train-360",
    }
    _, sources = _read(paths["train_sources"])
    assert len(sources) == 6
    assert all(row["ID"].split("-")[0] == row["spk_id"] for row in sources)
    paths = prepare(
        data_folder, tmp_path / "b", train_set="train-360", noisy=True
    )
    columns, rows = _read(paths["train"])
    assert columns[-1] == "noise_wav"
    assert all("/train-360/mix_both/" in row["mix_wav"] for row in rows)
    assert all("/train-360/noise/" in row["noise_wav"] for row in rows)
    with pytest.raises(ValueError, match="train_set 'train-500'"):
        prepare(data_folder, tmp_path / "c", train_set="train-500")


def test_whamr_dereverberate_picks_the_targets(tmp_path):
    data_folder = make_fake_layout("whamr", tmp_path / "data")
    paths = _prepare("whamr")(
        data_folder, tmp_path / "save", dereverberate=False
    )
    for split in ("train", "valid", "test"):
        _, rows = _read(paths[split])
        assert all("/mix_both_reverb/" in row["mix_wav"] for row in rows)
        assert all("/s1_reverb/" in row["s1_wav"] for row in rows)
        assert all("/s2_reverb/" in row["s2_wav"] for row in rows)


def test_echo2mix_json_lists_match_the_folder_scan(tmp_path):
    data_folder = make_fake_layout(
        "echo2mix", tmp_path / "data", sample_rate=16000
    )
    json_dir = make_echo2mix_json(data_folder, tmp_path / "lists")
    prepare = _prepare("echo2mix")
    scanned = prepare(data_folder, tmp_path / "a")
    listed = prepare(data_folder, tmp_path / "b", json_dir=json_dir)
    for split in ("train", "valid", "test"):
        assert (
            Path(scanned[split]).read_text() == Path(listed[split]).read_text()
        )
    # SPMamba's process_echoset.py bug: s2.json repeats s1.json.
    (json_dir / "val" / "s2.json").write_text(
        (json_dir / "val" / "s1.json").read_text()
    )
    with pytest.raises(ValueError, match="process_echoset"):
        prepare(data_folder, tmp_path / "c", json_dir=json_dir)
    (json_dir / "val" / "s2.json").write_text("[]")
    with pytest.raises(ValueError, match="differ in length"):
        prepare(data_folder, tmp_path / "d", json_dir=json_dir)


def test_prepare_skips_when_done_and_redoes_when_options_change(tmp_path):
    data_folder = make_fake_layout("librimix", tmp_path / "data")
    prepare = _prepare("librimix")
    paths = prepare(data_folder, tmp_path / "save")
    stamps = {
        split: Path(path).stat().st_mtime_ns for split, path in paths.items()
    }
    # Mark one CSV: a rewrite would drop the mark.
    marker = Path(paths["test"])
    marker.write_text(marker.read_text() + "# untouched\n")
    again = prepare(data_folder, tmp_path / "save")
    assert again == paths
    assert marker.read_text().endswith("# untouched\n")
    assert Path(paths["train"]).stat().st_mtime_ns == stamps["train"]
    noisy = prepare(data_folder, tmp_path / "save", noisy=True)
    assert not Path(noisy["test"]).read_text().endswith("# untouched\n")
    assert _read(noisy["train"])[0][-1] == "noise_wav"


@pytest.mark.parametrize("name", LAYOUTS)
def test_missing_data_folder_names_the_first_missing_path(name, tmp_path):
    options, _ = EXPECTED[name]
    missing = tmp_path / "nowhere" / "dataset"
    with pytest.raises(FileNotFoundError) as error:
        _prepare(name)(missing, tmp_path / "save", sample_rate=8000, **options)
    assert str(tmp_path / "nowhere") in str(error.value)
    assert not (tmp_path / "save" / "train.csv").exists()


#: Layout -> the test split's s2 folder, relative to the data folder.
TEST_S2_FOLDERS = {
    "wsj0mix": "wav8k/min/tt/s2",
    "librimix": "wav8k/min/test/s2",
    "wham": "wav8k/min/tt/s2",
    "whamr": "wav8k/min/tt/s2_anechoic",
    "lrs2mix": "tt/s2",
    "minimix": "wav8k/test/s2",
}


@pytest.mark.parametrize("name", sorted(TEST_S2_FOLDERS))
def test_missing_split_folder_is_named(name, tmp_path):
    data_folder = make_fake_layout(name, tmp_path / "data")
    s2 = data_folder / TEST_S2_FOLDERS[name]
    shutil.rmtree(s2)
    with pytest.raises(FileNotFoundError) as error:
        _prepare(name)(data_folder, tmp_path / "save", **EXPECTED[name][0])
    assert f"{s2} does not exist; expected the layout" in str(error.value)


@pytest.mark.parametrize("name", LAYOUTS)
def test_missing_sibling_file_is_named(name, tmp_path):
    data_folder = make_fake_layout(name, tmp_path / "data")
    options, folders = EXPECTED[name]
    _, rows = _read(
        _prepare(name)(data_folder, tmp_path / "ok", **options)["valid"]
    )
    victim = Path(rows[1]["s2_wav"])
    victim.unlink()
    with pytest.raises(FileNotFoundError) as error:
        _prepare(name)(data_folder, tmp_path / "save", **options)
    assert f"{victim} is missing" in str(error.value)


def test_orphan_source_and_length_mismatch_are_reported(tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data")
    prepare = _prepare("wsj0mix")
    mix = sorted((data_folder / "wav8k/min/cv/mix").iterdir())[0]
    mix.unlink()
    with pytest.raises(FileNotFoundError) as error:
        prepare(data_folder, tmp_path / "a")
    assert f"{mix} is missing" in str(error.value)
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data2")
    s1 = sorted((data_folder / "wav8k/min/tt/s1").iterdir())[0]
    sf.write(s1, np.zeros(100, dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"{s1} has 100 samples"):
        prepare(data_folder, tmp_path / "b")


def test_bad_options_and_names_raise_value_errors(tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data")
    prepare = _prepare("wsj0mix")
    with pytest.raises(ValueError, match="unknown mode 'mid'"):
        prepare(data_folder, tmp_path / "a", mode="mid")
    with pytest.raises(ValueError, match="sample_rate=22050"):
        prepare(data_folder, tmp_path / "a", sample_rate=22050)
    train = data_folder / "wav8k/min/tr"
    for folder in ("mix", "s1", "s2"):
        sf.write(train / folder / "oddname.wav", np.zeros(10), 8000)
    with pytest.raises(ValueError, match="'oddname' is not named"):
        prepare(data_folder, tmp_path / "b")


def test_minimix_without_a_built_set_explains_how_to_build(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="python -m speechbrain_s4.minimix"
    ):
        _prepare("minimix")(
            tmp_path / "minimix", tmp_path / "save", build=False
        )
    data_folder = make_fake_layout("minimix", tmp_path / "data")
    paths = _prepare("minimix")(
        data_folder, tmp_path / "save", noisy=True, build=False
    )
    columns, rows = _read(paths["train"])
    assert columns[-1] == "noise_wav" and "/mix_both/" in rows[0]["mix_wav"]
    _, sources = _read(paths["train_sources"])
    assert [row["spk_id"] for row in sources] == [
        "voice_a",
        "voice_b",
        "voice_c",
    ]
    assert all(Path(row["wav"]).parent.name == row["spk_id"] for row in sources)
