"""LRS2-2Mix -> the shared separation CSVs.

LRS2-2Mix (Li et al., "An efficient encoder-decoder architecture with
top-down attention for speech separation" (TDANet), ICLR 2023) mixes two
16 kHz LRS2 utterances from different scenes at -5..5 dB; the sources keep
the natural noise and reverberation of the broadcasts::

    <data_folder>/{tr,cv,tt}/{mix,s1,s2}/<name>.wav

``tr``/``cv``/``tt`` become ``train``/``valid``/``test``.

Authors
 * speechbrain_s4 contributors
"""

from recipes.common import (
    find_root,
    log_rate_mismatch,
    prepare_sibling_folders,
    require_path,
)

LAYOUT = "<data_folder>/{tr,cv,tt}/{mix,s1,s2}/<name>.wav (16 kHz)"
#: Output split -> LRS2-2Mix folder.
SPLIT_FOLDERS = {"train": "tr", "valid": "cv", "test": "tt"}


def prepare(data_folder, save_folder, sample_rate: int = 16000) -> dict:
    """Write ``train/valid/test.csv`` for LRS2-2Mix.

    Arguments
    ---------
    data_folder : str or Path
        The folder holding ``tr``, ``cv`` and ``tt``.
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        Rate the model runs at. LRS2-2Mix is distributed at 16 kHz; the
        CSVs point at those files whatever this value, and a different
        value is logged (the data pipeline resamples).

    Returns
    -------
    dict
        ``{"train", "valid", "test"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/lrs2", "/tmp/unused")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent does not exist; expected the layout ...
    """
    root = find_root(data_folder, "tr", (), LAYOUT)
    log_rate_mismatch(require_path(root / "tr" / "mix", LAYOUT), sample_rate)
    options = {
        "layout": "lrs2mix",
        "data_folder": str(root),
        "sample_rate": sample_rate,
    }
    return prepare_sibling_folders(
        save_folder,
        options,
        {split: [root / name] for split, name in SPLIT_FOLDERS.items()},
        {"mix_wav": "mix", "s1_wav": "s1", "s2_wav": "s2"},
        LAYOUT,
    )
