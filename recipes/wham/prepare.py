"""WHAM! -> the shared separation CSVs.

WHAM! (Wichern et al., "WHAM!: Extending Speech Separation to Noisy
Environments", Interspeech 2019) adds recorded urban noise to the WSJ0-2mix
mixtures::

    <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/
        {mix_clean,mix_single,mix_both,s1,s2,noise}/<wsj0-2mix name>.wav

The task is noisy separation: the mixture is ``mix_both`` and the targets
``s1``/``s2``; ``noise_wav`` points at ``noise`` so that training can
re-add the noise after speed perturbation (as SpeechBrain's recipe does).
SpeechBrain needs the folder to be named ``wham_original``; any name works
here.

Authors
 * speechbrain_s4 contributors
"""

from recipes.common import prepare_sibling_folders, wsj_style_split_folders

LAYOUT = (
    "<data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/"
    "{mix_both,s1,s2,noise}/<utt1>_<snr1>_<utt2>_<snr2>.wav, data_folder "
    "being the WHAM! output folder (e.g. 'wham_original') or its parent"
)


def prepare(
    data_folder, save_folder, sample_rate: int = 8000, mode: str = "min"
) -> dict:
    """Write ``train/valid/test.csv`` for WHAM! (``mix_both`` + noise).

    Arguments
    ---------
    data_folder : str or Path
        The WHAM! folder holding ``wav8k``/``wav16k`` (or its parent when
        named ``wham_original`` or ``wham``).
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` or ``"max"``.

    Returns
    -------
    dict
        ``{"train", "valid", "test"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/wham_original", "/tmp/unused", sample_rate=44100)
    Traceback (most recent call last):
    ...
    ValueError: sample_rate=44100 has no folder in this layout; ...
    """
    root, split_folders = wsj_style_split_folders(
        data_folder, sample_rate, mode, ("wham_original", "wham"), LAYOUT
    )
    options = {
        "layout": "wham",
        "data_folder": str(root),
        "sample_rate": sample_rate,
        "mode": mode,
    }
    columns = {
        "mix_wav": "mix_both",
        "s1_wav": "s1",
        "s2_wav": "s2",
        "noise_wav": "noise",
    }
    return prepare_sibling_folders(
        save_folder, options, split_folders, columns, LAYOUT
    )
