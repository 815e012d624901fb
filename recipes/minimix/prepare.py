"""minimix -> the shared separation CSVs (building the set when absent).

minimix is the real-speech two-speaker set that
:mod:`speechbrain_s4.minimix` builds from Debian voice packages
(WSJ0-2mix recipe, speaker-disjoint splits; see that module)::

    <data_folder>/wav{8k,16k}/{train,valid,test}/{mix_clean,mix_both,s1,s2,noise}/<ID>.wav
    <data_folder>/wav{8k,16k}/sources/{train,valid,test}/<voice>/<utt>.wav
    <data_folder>/wav{8k,16k}/metadata.json

``noisy=False`` uses ``mix_clean``; ``noisy=True`` uses ``mix_both`` plus a
``noise_wav`` column. ``train_sources.csv`` lists the training utterances
with their voice as ``spk_id``, for dynamic mixing.

Authors
 * speechbrain_s4 contributors
"""

from pathlib import Path

from recipes.common import (
    duration_seconds,
    prepare_sibling_folders,
    rate_folder,
    require_path,
)
from speechbrain_s4.minimix import METADATA_FILE, build_minimix

LAYOUT = (
    "<data_folder>/wav{8k,16k}/{train,valid,test}/{mix_clean,mix_both,s1,s2,"
    "noise}/<ID>.wav and <data_folder>/wav{8k,16k}/sources/<split>/<voice>/"
    "<utt>.wav, as python -m speechbrain_s4.minimix <data_folder> builds it"
)


def source_rows(sources_folder) -> list:
    """Rows of ``train_sources.csv``: one per utterance, voice as speaker.

    Arguments
    ---------
    sources_folder : str or Path
        ``<data_folder>/wavXk/sources/train``.

    Returns
    -------
    list of dict
    """
    sources_folder = require_path(sources_folder, LAYOUT)
    return [
        {
            "ID": path.stem,
            "duration": duration_seconds(path),
            "wav": str(path),
            "spk_id": path.parent.name,
        }
        for path in sorted(sources_folder.glob("*/*.wav"))
    ]


def prepare(
    data_folder,
    save_folder,
    sample_rate: int = 8000,
    noisy: bool = False,
    build: bool = True,
    **build_options,
) -> dict:
    """Write ``train/valid/test.csv`` and ``train_sources.csv`` for minimix.

    When ``<data_folder>/wavXk/metadata.json`` is absent and ``build`` is
    True, the set is built first with
    :func:`speechbrain_s4.minimix.build_minimix` (about half a minute at
    8 kHz). When the set exists and ``build_options`` are given, they are
    checked against the set's metadata (a mismatch raises, unless
    ``overwrite=True`` is among them, which rebuilds).

    Arguments
    ---------
    data_folder : str or Path
        The minimix folder (holding ``wav8k``/``wav16k``).
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        8000 or 16000.
    noisy : bool
        ``mix_both`` + ``noise_wav`` instead of ``mix_clean``.
    build : bool
        Build the set when it is absent (else raise).
    **build_options
        Keyword arguments of :func:`speechbrain_s4.minimix.build_minimix`
        (``sizes``, ``seed``, ``noise_snr_db`` ...).

    Returns
    -------
    dict
        ``{"train", "valid", "test", "train_sources"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/minimix", "/tmp/unused", build=False)
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent/minimix/wav8k/metadata.json is missing: ...
    """
    rate_dir = Path(data_folder).absolute() / rate_folder(sample_rate)
    metadata = rate_dir / METADATA_FILE
    if build and (build_options or not metadata.is_file()):
        # Builds when absent; a no-op when the options match the set.
        build_minimix(data_folder, sample_rates=(sample_rate,), **build_options)
    elif not metadata.is_file():
        raise FileNotFoundError(
            f"{metadata} is missing: build the set first with "
            f"'python -m speechbrain_s4.minimix {Path(data_folder)} "
            f"--sample-rates {sample_rate}' (or pass build=True)"
        )
    columns = {"mix_wav": "mix_both" if noisy else "mix_clean"}
    columns.update({"s1_wav": "s1", "s2_wav": "s2"})
    if noisy:
        columns["noise_wav"] = "noise"
    options = {
        "layout": "minimix",
        "data_folder": str(rate_dir.parent),
        "sample_rate": sample_rate,
        "noisy": bool(noisy),
        # A rebuilt set has new files: its metadata is part of the options.
        "metadata_mtime_ns": metadata.stat().st_mtime_ns,
    }
    return prepare_sibling_folders(
        save_folder,
        options,
        {split: [rate_dir / split] for split in ("train", "valid", "test")},
        columns,
        LAYOUT,
        sources=lambda rows: source_rows(rate_dir / "sources" / "train"),
    )
