"""What every data preparation shares: folder checks, pairing, the CSV writer.

Every layout ends in the same CSV schema (DEVELOPING.md, "Data CSVs"):
``ID, duration, mix_wav, s1_wav, s2_wav[, noise_wav]`` with absolute paths,
the duration in seconds read from the mixture's header, and rows sorted by
``ID`` so that two preparations of the same folder write identical files
(SpeechBrain's recipes keep ``os.listdir`` order, which depends on the file
system). Sources for dynamic mixing go to ``train_sources.csv`` with
``ID, duration, wav, spk_id``.

Like SpeechBrain's ``skip_prep``, a preparation writes its options beside the
CSVs (``prepare_options.json``) and does nothing the next time when the CSVs
exist and the options match; changing an option redoes the work.

Authors
 * speechbrain_s4 contributors
"""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

#: Output splits, in the order they are written.
SPLITS = ("train", "valid", "test")
#: Name of the options file written beside the CSVs.
OPTIONS_FILE = "prepare_options.json"
#: Columns of ``train_sources.csv``.
SOURCES_COLUMNS = ("ID", "duration", "wav", "spk_id")


def separation_columns(num_spks: int = 2, noise: bool = False) -> tuple:
    """Return the CSV columns of a separation split.

    Arguments
    ---------
    num_spks : int
        Number of sources (``s1_wav`` ... ``sN_wav``).
    noise : bool
        Whether a ``noise_wav`` column follows.

    Returns
    -------
    tuple of str

    Example
    -------
    >>> separation_columns(2, noise=True)
    ('ID', 'duration', 'mix_wav', 's1_wav', 's2_wav', 'noise_wav')
    """
    sources = tuple(f"s{k}_wav" for k in range(1, num_spks + 1))
    return (
        ("ID", "duration", "mix_wav")
        + sources
        + (("noise_wav",) if noise else ())
    )


def rate_folder(sample_rate: int) -> str:
    """Return the ``wav8k`` / ``wav16k`` folder name of a sample rate.

    Example
    -------
    >>> rate_folder(16000)
    'wav16k'
    """
    folders = {8000: "wav8k", 16000: "wav16k"}
    if sample_rate not in folders:
        raise ValueError(
            f"sample_rate={sample_rate!r} has no folder in this layout; "
            "expected 8000 (wav8k) or 16000 (wav16k)"
        )
    return folders[sample_rate]


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``.

    Example
    -------
    >>> check_choice("mode", "mid", ("min", "max"))
    Traceback (most recent call last):
    ...
    ValueError: unknown mode 'mid'; expected one of 'min', 'max'
    """
    if value not in choices:
        expected = ", ".join(repr(choice) for choice in choices)
        raise ValueError(
            f"unknown {name} {value!r}; expected one of {expected}"
        )


def first_missing(path) -> Path | None:
    """Return the outermost folder or file of ``path`` that does not exist.

    Arguments
    ---------
    path : str or Path

    Returns
    -------
    Path or None
        ``None`` when ``path`` exists.

    Example
    -------
    >>> str(first_missing("/nonexistent/a/b"))
    '/nonexistent'
    """
    path = Path(path).absolute()
    for candidate in [*reversed(path.parents), path]:
        if not candidate.exists():
            return candidate
    return None


def require_path(path, layout: str) -> Path:
    """Return ``path`` as an absolute Path, or raise naming what is missing.

    Arguments
    ---------
    path : str or Path
        A folder or file the layout needs.
    layout : str
        One line showing what the dataset folder should look like.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        Naming the first missing component of ``path`` and the layout.

    Example
    -------
    >>> require_path("/nonexistent/wav8k", "<root>/wav8k/...")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent does not exist; expected the layout <root>/wav8k/...
    """
    missing = first_missing(path)
    if missing is not None:
        raise FileNotFoundError(
            f"{missing} does not exist; expected the layout {layout}"
        )
    return Path(path).absolute()


def find_root(data_folder, marker: str, nested: tuple, layout: str) -> Path:
    """Locate the dataset root holding ``marker`` in or below ``data_folder``.

    Users pass either the dataset's own folder or its parent (SpeechBrain's
    WSJ0-2mix recipe expects ``.../2speakers``, LibriMix ``.../Libri2Mix``):
    ``data_folder/marker`` is tried first, then ``data_folder/<n>/marker``
    for each name in ``nested``.

    Arguments
    ---------
    data_folder : str or Path
        What the user passed.
    marker : str
        A child that identifies the root (``"wav8k"``, ``"tr"`` ...).
    nested : tuple of str
        Sub-folder names that may sit between ``data_folder`` and the root.
    layout : str
        Layout line for the error message.

    Returns
    -------
    Path
        The absolute root.

    Example
    -------
    >>> import tempfile, os
    >>> top = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(top, "2speakers", "wav8k"))
    >>> find_root(top, "wav8k", ("2speakers",), "...").name
    '2speakers'
    """
    data_folder = Path(data_folder).absolute()
    candidates = [data_folder] + [data_folder / name for name in nested]
    for root in candidates:
        if (root / marker).is_dir():
            return root
    # Name the gap below the deepest candidate that exists.
    existing = [root for root in candidates if root.is_dir()] or [data_folder]
    require_path(existing[-1] / marker, layout)
    raise NotADirectoryError(
        f"{existing[-1] / marker} is not a folder ({layout})"
    )


def wsj_style_split_folders(
    data_folder, sample_rate: int, mode: str, nested: tuple, layout: str
) -> tuple:
    """Locate the split folders of WSJ0-2mix, WHAM! and WHAMR!.

    The three share ``<root>/wav{8k,16k}/{min,max}/{tr,cv,tt}/``.

    Arguments
    ---------
    data_folder : str or Path
        The dataset folder or its parent.
    sample_rate : int
        8000 or 16000.
    mode : str
        ``"min"`` or ``"max"``.
    nested : tuple of str
        Names the dataset folder may have below ``data_folder``.
    layout : str
        Layout line for error messages.

    Returns
    -------
    root : Path
        The dataset folder (holding ``wav8k``/``wav16k``).
    split_folders : dict
        ``{"train": [.../tr], "valid": [.../cv], "test": [.../tt]}``.
    """
    check_choice("mode", mode, ("min", "max"))
    rate_dir = rate_folder(sample_rate)
    root = find_root(data_folder, rate_dir, nested, layout)
    base = root / rate_dir / mode
    splits = {"train": "tr", "valid": "cv", "test": "tt"}
    return root, {split: [base / name] for split, name in splits.items()}


def audio_info(path) -> tuple:
    """Return ``(num_samples, sample_rate)`` from an audio file's header."""
    info = sf.info(str(path))
    return info.frames, info.samplerate


def log_rate_mismatch(folder, sample_rate: int) -> None:
    """Log when the first WAV below ``folder`` is not at ``sample_rate``.

    For single-rate datasets (LRS2-2Mix, Echo2Mix at 16 kHz): the CSVs point
    at the files whatever the model's rate, and the data pipeline resamples.
    """
    first = next(iter(sorted(Path(folder).rglob("*.wav"))), None)
    if first is not None and audio_info(first)[1] != sample_rate:
        logger.warning(
            "%s is at %d Hz but sample_rate=%d: the data pipeline resamples",
            first,
            audio_info(first)[1],
            sample_rate,
        )


def duration_seconds(path) -> float:
    """Duration of an audio file in seconds, from its header.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> sf.write(path, numpy.zeros(12000), 8000)
    >>> duration_seconds(path)
    1.5
    """
    return _seconds(*audio_info(path))


def _seconds(num_samples: int, sample_rate: int) -> float:
    """Samples -> seconds, rounded to the microsecond for readable CSVs."""
    return round(num_samples / sample_rate, 6)


def checked_row(item_id: str, paths: dict, layout: str) -> dict:
    """Build one CSV row after checking that its files exist and align.

    Arguments
    ---------
    item_id : str
        The row's ``ID``.
    paths : dict
        ``{column: file}`` in column order, mixture first.
    layout : str
        Layout line for error messages.

    Returns
    -------
    dict
        ``ID``, ``duration`` (the mixture's, from its header) and one
        absolute path per column.

    Raises
    ------
    FileNotFoundError
        A file is missing (naming it).
    ValueError
        A file's length differs from the mixture's.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> sf.write(path, numpy.zeros(800), 8000)
    >>> checked_row("a", {"mix_wav": path}, "")["duration"]
    0.1
    """
    columns = list(paths)
    mix_path = Path(paths[columns[0]]).absolute()
    row = {"ID": item_id}
    num_samples = None
    for column in columns:
        path = Path(paths[column]).absolute()
        if not path.is_file():
            needed_by = "" if path == mix_path else f" (needed by {mix_path})"
            raise FileNotFoundError(
                f"{path} is missing{needed_by}; expected the layout {layout}"
            )
        frames, rate = audio_info(path)
        if num_samples is None:
            num_samples = frames
            row["duration"] = _seconds(frames, rate)
        elif frames != num_samples:
            raise ValueError(
                f"{path} has {frames} samples but its mixture {mix_path} has "
                f"{num_samples}; sibling files must have equal lengths: "
                "re-extract the dataset"
            )
        row[column] = str(path)
    return row


def paired_rows(folders: dict, layout: str) -> list:
    """Pair the files of sibling folders by identical name.

    The first folder (the mixtures) drives the pairing: every mixture needs
    a file of the same name, and of the same length, in each other folder,
    and no other folder may hold a file without its mixture.

    Arguments
    ---------
    folders : dict
        ``{column: folder}`` in CSV column order, mixtures first, e.g.
        ``{"mix_wav": .../mix, "s1_wav": .../s1, "s2_wav": .../s2}``.
    layout : str
        Layout line for error messages.

    Returns
    -------
    list of dict
        One row per mixture: ``ID`` (file stem), ``duration`` and one
        absolute path per column, sorted by ``ID``.

    Raises
    ------
    FileNotFoundError
        A folder is missing, or a file lacks its sibling (naming it).
    ValueError
        Sibling files differ in length.

    Example
    -------
    >>> import tempfile, os, numpy
    >>> top = tempfile.mkdtemp()
    >>> for sub in ("mix", "s1"):
    ...     os.makedirs(os.path.join(top, sub))
    ...     sf.write(os.path.join(top, sub, "a.wav"), numpy.zeros(800), 8000)
    >>> rows = paired_rows({"mix_wav": f"{top}/mix", "s1_wav": f"{top}/s1"}, "")
    >>> rows[0]["ID"], rows[0]["duration"]
    ('a', 0.1)
    """
    columns = list(folders)
    folders = {
        column: require_path(folders[column], layout) for column in columns
    }
    mix_folder = folders[columns[0]]
    names = sorted(p.name for p in mix_folder.iterdir() if p.suffix == ".wav")
    known = set(names)
    for column in columns[1:]:
        for extra in sorted(p.name for p in folders[column].glob("*.wav")):
            if extra not in known:
                raise FileNotFoundError(
                    f"{mix_folder / extra} is missing: {folders[column] / extra} "
                    f"has no mixture of the same name (layout {layout})"
                )
    return [
        checked_row(
            Path(name).stem,
            {column: folders[column] / name for column in columns},
            layout,
        )
        for name in names
    ]


def mixture_sources(
    rows: list, utterances_of: Callable, speaker_of: Callable
) -> list:
    """Derive the single-speaker sources of a split for dynamic mixing.

    Mixture names encode their utterances (WSJ0-2mix
    ``<utt1>_<snr1>_<utt2>_<snr2>``, LibriMix ``<utt1>_<utt2>``); each
    utterance appears in several mixtures, so sources are de-duplicated by
    utterance, keeping the longest copy ("min" mixtures truncate it).

    Arguments
    ---------
    rows : list of dict
        Separation rows (``ID``, ``duration``, ``s1_wav``, ``s2_wav`` ...).
    utterances_of : callable
        ``ID -> (utt1, utt2, ...)`` in source order.
    speaker_of : callable
        ``utt -> speaker id``.

    Returns
    -------
    list of dict
        Rows ``ID, duration, wav, spk_id`` sorted by ``ID``.

    Example
    -------
    >>> import tempfile, numpy
    >>> s1, s2 = tempfile.mktemp(suffix=".wav"), tempfile.mktemp(suffix=".wav")
    >>> sf.write(s1, numpy.zeros(800), 8000); sf.write(s2, numpy.zeros(800), 8000)
    >>> rows = [{"ID": "a_b", "duration": 0.1, "s1_wav": s1, "s2_wav": s2}]
    >>> sources = mixture_sources(rows, lambda i: i.split("_"), lambda u: u)
    >>> [(row["ID"], row["duration"], row["wav"] == s2) for row in sources]
    [('a', 0.1, False), ('b', 0.1, True)]
    """
    best = {}
    for row in sorted(rows, key=lambda r: r["ID"]):
        for k, utt in enumerate(utterances_of(row["ID"]), start=1):
            path = row[f"s{k}_wav"]
            duration = duration_seconds(path)
            if utt not in best or duration > best[utt]["duration"]:
                best[utt] = {
                    "ID": utt,
                    "duration": duration,
                    "wav": path,
                    "spk_id": speaker_of(utt),
                }
    return [best[utt] for utt in sorted(best)]


def write_csv(path, rows: list, columns) -> str:
    """Write rows to a CSV sorted by ``ID`` (the one CSV writer).

    Arguments
    ---------
    path : str or Path
        Destination.
    rows : list of dict
        Each with every column.
    columns : sequence of str
        Header, ``ID`` first.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    ValueError
        Two rows share an ``ID``.

    Example
    -------
    >>> import tempfile
    >>> path = write_csv(tempfile.mktemp(suffix=".csv"),
    ...                  [{"ID": "b", "x": 2}, {"ID": "a", "x": 1}], ["ID", "x"])
    >>> open(path).read().split()
    ['ID,x', 'a,1', 'b,2']
    """
    rows = sorted(rows, key=lambda row: row["ID"])
    for previous, row in zip(rows, rows[1:], strict=False):
        if previous["ID"] == row["ID"]:
            raise ValueError(
                f"two items share the ID {row['ID']!r} while writing {path}; "
                "IDs must be unique within a split"
            )
    path = Path(path).absolute()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row[column] for column in columns})
    return str(path)


def _normalise_options(options: dict) -> dict:
    """JSON round trip, so paths and tuples compare as they are stored."""
    return json.loads(json.dumps(options, sort_keys=True, default=str))


def prepare_csvs(
    save_folder, options: dict, outputs: tuple, make_tables: Callable
) -> dict:
    """Write the CSVs of one preparation unless identical ones exist.

    Arguments
    ---------
    save_folder : str or Path
        Where the CSVs and ``prepare_options.json`` go (created if needed).
    options : dict
        Everything the CSVs depend on (layout name, absolute data folder,
        options); a change triggers a new preparation.
    outputs : tuple of str
        CSV names without ``.csv`` (``train``, ``valid``, ``test`` ...).
    make_tables : callable
        ``() -> {name: (rows, columns)}`` for every name of ``outputs``;
        called only when work is needed.

    Returns
    -------
    dict
        ``{name: absolute csv path}``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> tables = lambda: {"train": ([{"ID": "a"}], ["ID"])}
    >>> paths = prepare_csvs(folder, {"layout": "demo"}, ("train",), tables)
    >>> sorted(paths)
    ['train']
    """
    save_folder = Path(save_folder).absolute()
    paths = {name: save_folder / f"{name}.csv" for name in outputs}
    options = _normalise_options(options)
    options_path = save_folder / OPTIONS_FILE
    if options_path.is_file() and all(
        path.is_file() for path in paths.values()
    ):
        if json.loads(options_path.read_text()) == options:
            logger.info("%s: CSVs up to date, preparation skipped", save_folder)
            return {name: str(path) for name, path in paths.items()}
    tables = make_tables()
    save_folder.mkdir(parents=True, exist_ok=True)
    # Drop the stale options first: an interrupted run must not look done.
    options_path.unlink(missing_ok=True)
    for name in outputs:
        rows, columns = tables[name]
        write_csv(paths[name], rows, columns)
        logger.info("wrote %s (%d rows)", paths[name], len(rows))
    options_path.write_text(json.dumps(options, indent=2, sort_keys=True))
    return {name: str(path) for name, path in paths.items()}


def prepare_sibling_folders(
    save_folder,
    options: dict,
    split_folders: dict,
    columns: dict,
    layout: str,
    sources: Callable | None = None,
) -> dict:
    """Prepare a layout whose splits hold one folder per signal.

    WSJ0-2mix, LibriMix, WHAM!, WHAMR!, LRS2-Mix and minimix all look like
    ``<split folder>/{mix,s1,s2[,noise]}/<same name>.wav``; they differ only
    in folder names, which the caller maps here.

    Arguments
    ---------
    save_folder : str or Path
        Output folder.
    options : dict
        Everything the CSVs depend on (see :func:`prepare_csvs`).
    split_folders : dict
        ``{"train": [folder, ...], "valid": [...], "test": [...]}``; several
        folders are concatenated (Libri2Mix train-460).
    columns : dict
        ``{csv column: sub-folder name}`` in column order, mixture first.
    layout : str
        Layout line for error messages.
    sources : callable, optional
        ``train rows -> train_sources rows``; adds ``train_sources.csv``.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path[, "train_sources": path]}``.
    """
    outputs = SPLITS + (("train_sources",) if sources is not None else ())

    def make_tables():
        tables = {}
        for split in SPLITS:
            rows = []
            for folder in split_folders[split]:
                folder = Path(folder)
                subfolders = {col: folder / sub for col, sub in columns.items()}
                rows += paired_rows(subfolders, layout)
            tables[split] = (rows, ("ID", "duration") + tuple(columns))
        if sources is not None:
            tables["train_sources"] = (
                sources(tables["train"][0]),
                SOURCES_COLUMNS,
            )
        return tables

    return prepare_csvs(save_folder, options, outputs, make_tables)
