"""Libri2Mix -> the shared separation CSVs.

LibriMix (Cosentino et al., "LibriMix: An Open-Source Dataset for
Generalizable Speech Separation", arXiv:2005.11262, 2020) mixes LibriSpeech
utterances, optionally with WHAM! noise::

    Libri2Mix/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/
        {mix_clean,mix_both,mix_single,s1,s2,noise}/<spk-chap-utt>_<spk-chap-utt>.wav

``train_set`` picks the training mixtures: ``"train-100"`` (the default, as
in the S4M, TDANet and SPMamba papers), ``"train-360"`` (SpeechBrain's
recipe; results are not comparable) or ``"train-460"`` (both). ``dev`` and
``test`` become ``valid`` and ``test``. ``noisy=False`` uses ``mix_clean``;
``noisy=True`` uses ``mix_both`` and adds a ``noise_wav`` column.

``train_sources.csv`` lists each LibriSpeech utterance of the training
mixtures once (its longest copy), with the LibriSpeech speaker as
``spk_id``.

Authors
 * speechbrain_s4 contributors
"""

from recipes.common import (
    check_choice,
    find_root,
    mixture_sources,
    prepare_sibling_folders,
    rate_folder,
)

LAYOUT = (
    "<data_folder>/wav{8k,16k}/{min,max}/{train-100,train-360,dev,test}/"
    "{mix_clean,mix_both,s1,s2,noise}/<spk-chap-utt>_<spk-chap-utt>.wav, "
    "data_folder being the 'Libri2Mix' folder or the folder holding it"
)
#: train_set option -> Libri2Mix training folders.
TRAIN_SETS = {
    "train-100": ("train-100",),
    "train-360": ("train-360",),
    "train-460": ("train-100", "train-360"),
}


def utterances_of(mixture_id: str) -> tuple:
    """Return the two LibriSpeech utterance ids of a mixture name.

    Example
    -------
    >>> utterances_of("103-1240-0003_1034-121119-0049")
    ('103-1240-0003', '1034-121119-0049')
    """
    parts = mixture_id.split("_")
    if len(parts) != 2 or any(part.count("-") != 2 for part in parts):
        raise ValueError(
            f"mixture {mixture_id!r} is not named <spk-chap-utt>_<spk-chap-utt> "
            "as Libri2Mix names them; cannot derive its sources"
        )
    return tuple(parts)


def speaker_of(utterance_id: str) -> str:
    """LibriSpeech speaker of ``<spk>-<chapter>-<utt>``.

    Example
    -------
    >>> speaker_of("103-1240-0003")
    '103'
    """
    return utterance_id.split("-")[0]


def prepare(
    data_folder,
    save_folder,
    sample_rate: int = 8000,
    mode: str = "min",
    train_set: str = "train-100",
    noisy: bool = False,
) -> dict:
    """Write ``train/valid/test.csv`` and ``train_sources.csv`` for Libri2Mix.

    Arguments
    ---------
    data_folder : str or Path
        The ``Libri2Mix`` folder (or its parent).
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` or ``"max"``.
    train_set : str
        ``"train-100"``, ``"train-360"`` or ``"train-460"``.
    noisy : bool
        ``mix_both`` + ``noise_wav`` instead of ``mix_clean``.

    Returns
    -------
    dict
        ``{"train", "valid", "test", "train_sources"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/Libri2Mix", "/tmp/unused", train_set="train-500")
    Traceback (most recent call last):
    ...
    ValueError: unknown train_set 'train-500'; expected one of ...
    """
    check_choice("mode", mode, ("min", "max"))
    check_choice("train_set", train_set, tuple(TRAIN_SETS))
    rate_dir = rate_folder(sample_rate)
    root = find_root(data_folder, rate_dir, ("Libri2Mix",), LAYOUT)
    base = root / rate_dir / mode
    columns = {"mix_wav": "mix_both" if noisy else "mix_clean"}
    columns.update({"s1_wav": "s1", "s2_wav": "s2"})
    if noisy:
        columns["noise_wav"] = "noise"
    options = {
        "layout": "librimix",
        "data_folder": str(root),
        "sample_rate": sample_rate,
        "mode": mode,
        "train_set": train_set,
        "noisy": bool(noisy),
    }
    split_folders = {
        "train": [base / name for name in TRAIN_SETS[train_set]],
        "valid": [base / "dev"],
        "test": [base / "test"],
    }
    return prepare_sibling_folders(
        save_folder,
        options,
        split_folders,
        columns,
        LAYOUT,
        sources=lambda rows: mixture_sources(rows, utterances_of, speaker_of),
    )
