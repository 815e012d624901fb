"""WSJ0-2mix -> the shared separation CSVs.

WSJ0-2mix (Hershey et al., "Deep clustering: discriminative embeddings for
segmentation and separation", ICASSP 2016) mixes two WSJ0 utterances at a
relative level of 0-5 dB. Its ``create-speaker-mixtures`` scripts write::

    2speakers/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2}/<utt1>_<snr1>_<utt2>_<snr2>.wav

``tr``/``cv``/``tt`` become ``train``/``valid``/``test``. The papers (S4M,
SPMamba, Sepformer) use ``wav8k/min``. Unlike SpeechBrain's
``prepare_wsjmix``, this reads the rate and mode you ask for, needs no
``wsj`` substring in the path, writes real durations, and sorts rows by ID.

``train_sources.csv`` lists the single-speaker sources of the training
split for dynamic mixing: one row per WSJ0 utterance (the longest of its
copies in ``s1``/``s2``; in "min" mixtures they are truncated, so "max"
gives whole utterances), with the WSJ0 speaker (first three characters of
the utterance id) as ``spk_id``.

Authors
 * speechbrain_s4 contributors
"""

from recipes.common import (
    mixture_sources,
    prepare_sibling_folders,
    wsj_style_split_folders,
)

LAYOUT = (
    "<data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2}/"
    "<utt1>_<snr1>_<utt2>_<snr2>.wav, data_folder being the '2speakers' "
    "folder or the folder holding it"
)


def utterances_of(mixture_id: str) -> tuple:
    """Return the two WSJ0 utterance ids of a mixture name.

    Arguments
    ---------
    mixture_id : str
        ``<utt1>_<snr1>_<utt2>_<snr2>``.

    Returns
    -------
    tuple of str

    Example
    -------
    >>> utterances_of("011a010b_0.5_20oc010k_-0.5")
    ('011a010b', '20oc010k')
    """
    parts = mixture_id.split("_")
    if len(parts) != 4:
        raise ValueError(
            f"mixture {mixture_id!r} is not named <utt1>_<snr1>_<utt2>_<snr2> "
            "as WSJ0-2mix names them; cannot derive its sources"
        )
    return parts[0], parts[2]


def speaker_of(utterance_id: str) -> str:
    """WSJ0 speaker of an utterance: its first three characters.

    Example
    -------
    >>> speaker_of("011a010b")
    '011'
    """
    return utterance_id[:3]


def prepare(
    data_folder, save_folder, sample_rate: int = 8000, mode: str = "min"
) -> dict:
    """Write ``train/valid/test.csv`` and ``train_sources.csv`` for WSJ0-2mix.

    Arguments
    ---------
    data_folder : str or Path
        The ``2speakers`` folder (or its parent).
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` (mixtures cut to the shorter utterance) or ``"max"``.

    Returns
    -------
    dict
        ``{"train", "valid", "test", "train_sources"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/2speakers", "/tmp/unused")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent does not exist; expected the layout ...
    """
    root, split_folders = wsj_style_split_folders(
        data_folder, sample_rate, mode, ("2speakers",), LAYOUT
    )
    options = {
        "layout": "wsj0mix",
        "data_folder": str(root),
        "sample_rate": sample_rate,
        "mode": mode,
    }
    return prepare_sibling_folders(
        save_folder,
        options,
        split_folders,
        {"mix_wav": "mix", "s1_wav": "s1", "s2_wav": "s2"},
        LAYOUT,
        sources=lambda rows: mixture_sources(rows, utterances_of, speaker_of),
    )
