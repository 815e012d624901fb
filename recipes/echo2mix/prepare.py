"""Echo2Mix -> the shared separation CSVs.

Echo2Mix (Li et al., "SPMamba: State-space model is all you need in speech
separation", arXiv:2404.02063, 2024) holds 16 kHz reverberant two-speaker
mixtures simulated with SonicSim, one folder per mixture::

    <data_folder>/{train,val,test}/<spk1id_spk2id>/
        {mix.wav, spk1_reverb.wav, spk2_reverb.wav}

The targets are the *reverberant* sources, and ``ID`` is the item folder
name. ``val`` becomes ``valid``.

SPMamba's training code reads JSON lists instead
(``<json_dir>/{train,val,test}/{mix,s1,s2}.json``, each a list of
``[wav_path, num_samples]`` aligned by index); pass ``json_dir`` to prepare
from them. Relative paths in the lists are resolved against
``data_folder``. Lists written by SPMamba's ``process_echoset.py`` are
rejected when ``s2.json`` repeats ``s1.json`` (that script's substitution
for speaker 2 never matches).

Authors
 * speechbrain_s4 contributors
"""

import json
from pathlib import Path

from recipes.common import (
    SPLITS,
    checked_row,
    find_root,
    log_rate_mismatch,
    prepare_csvs,
    require_path,
    separation_columns,
)

LAYOUT = (
    "<data_folder>/{train,val,test}/<spk1id_spk2id>/{mix.wav,"
    "spk1_reverb.wav,spk2_reverb.wav} (16 kHz), or with json_dir: "
    "<json_dir>/{train,val,test}/{mix,s1,s2}.json of [wav_path, num_samples]"
)
#: Output split -> Echo2Mix folder.
SPLIT_FOLDERS = {"train": "train", "valid": "val", "test": "test"}
#: CSV column -> file name inside an item folder.
ITEM_FILES = {
    "mix_wav": "mix.wav",
    "s1_wav": "spk1_reverb.wav",
    "s2_wav": "spk2_reverb.wav",
}
#: CSV column -> JSON list name.
JSON_LISTS = {"mix_wav": "mix", "s1_wav": "s1", "s2_wav": "s2"}


def folder_rows(split_folder) -> list:
    """Rows of one split folder (one sub-folder per mixture).

    Arguments
    ---------
    split_folder : str or Path
        ``<data_folder>/<train|val|test>``.

    Returns
    -------
    list of dict
    """
    split_folder = require_path(split_folder, LAYOUT)
    items = sorted(p for p in split_folder.iterdir() if p.is_dir())
    return [
        checked_row(
            item.name,
            {column: item / name for column, name in ITEM_FILES.items()},
            LAYOUT,
        )
        for item in items
    ]


def _read_list(path) -> list:
    """Paths of one SPMamba JSON list (``[[wav_path, num_samples], ...]``)."""
    entries = json.loads(require_path(path, LAYOUT).read_text())
    if not isinstance(entries, list) or not all(
        isinstance(entry, list) and len(entry) == 2 for entry in entries
    ):
        raise ValueError(
            f"{path} is not a list of [wav_path, num_samples] pairs as "
            "SPMamba's preprocessing writes them"
        )
    return [entry[0] for entry in entries]


def item_id(mix_path) -> str:
    """ID of a listed mixture: its folder for ``.../<item>/mix.wav``.

    Example
    -------
    >>> item_id("/d/test/1089_121_1188_133/mix.wav"), item_id("/d/x/a_b.wav")
    ('1089_121_1188_133', 'a_b')
    """
    mix_path = Path(mix_path)
    return mix_path.parent.name if mix_path.stem == "mix" else mix_path.stem


def json_rows(list_folder, data_folder) -> list:
    """Rows of one split from SPMamba's JSON lists.

    Arguments
    ---------
    list_folder : str or Path
        ``<json_dir>/<train|val|test>`` holding ``mix.json``, ``s1.json``,
        ``s2.json``.
    data_folder : str or Path
        Base of relative paths in the lists.

    Returns
    -------
    list of dict
    """
    list_folder = Path(list_folder)
    lists = {
        column: [
            Path(data_folder, path).absolute()
            for path in _read_list(list_folder / f"{name}.json")
        ]
        for column, name in JSON_LISTS.items()
    }
    lengths = {name: len(lists[column]) for column, name in JSON_LISTS.items()}
    if len(set(lengths.values())) != 1:
        counts = ", ".join(f"{name}.json: {n}" for name, n in lengths.items())
        raise ValueError(
            f"the lists in {list_folder} differ in length ({counts}); "
            "they must be aligned by index"
        )
    if lists["s1_wav"] and lists["s1_wav"] == lists["s2_wav"]:
        raise ValueError(
            f"{list_folder / 's2.json'} lists the same files as s1.json "
            "(the process_echoset.py bug): rebuild the lists"
        )
    return [
        checked_row(
            item_id(mix),
            {column: lists[column][index] for column in JSON_LISTS},
            LAYOUT,
        )
        for index, mix in enumerate(lists["mix_wav"])
    ]


def prepare(
    data_folder, save_folder, sample_rate: int = 16000, json_dir=None
) -> dict:
    """Write ``train/valid/test.csv`` for Echo2Mix.

    Arguments
    ---------
    data_folder : str or Path
        The folder holding ``train``, ``val`` and ``test``.
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        Rate the model runs at. Echo2Mix is 16 kHz; the CSVs point at those
        files whatever this value, and a different value is logged (the
        data pipeline resamples).
    json_dir : str or Path, optional
        Read SPMamba's JSON lists from ``<json_dir>/{train,val,test}``
        instead of scanning ``data_folder``.

    Returns
    -------
    dict
        ``{"train", "valid", "test"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/Echo2Mix", "/tmp/unused")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent does not exist; expected the layout ...
    """
    data_folder = Path(data_folder).absolute()
    if json_dir is None:
        data_folder = find_root(data_folder, "train", (), LAYOUT)
        log_rate_mismatch(data_folder / "train", sample_rate)
    else:
        json_dir = require_path(json_dir, LAYOUT)
    options = {
        "layout": "echo2mix",
        "data_folder": str(data_folder),
        "json_dir": None if json_dir is None else str(json_dir),
        "sample_rate": sample_rate,
    }

    def make_tables():
        tables = {}
        for split, name in SPLIT_FOLDERS.items():
            if json_dir is None:
                rows = folder_rows(data_folder / name)
            else:
                rows = json_rows(json_dir / name, data_folder)
            tables[split] = (rows, separation_columns(2))
        return tables

    return prepare_csvs(save_folder, options, SPLITS, make_tables)
