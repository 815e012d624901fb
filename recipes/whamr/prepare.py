"""WHAMR! -> the shared separation CSVs.

WHAMR! (Maciejewski et al., "WHAMR!: Noisy and Reverberant Single-Channel
Speech Separation", ICASSP 2020) reverberates the WHAM! mixtures::

    <data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/
        {mix_single,mix_clean,mix_both}_{anechoic,reverb},
        s1_anechoic, s2_anechoic, s1_reverb, s2_reverb, noise

The mixture is ``mix_both_reverb`` (noisy and reverberant) and
``noise_wav`` points at ``noise``. The targets follow ``dereverberate``:

* ``True`` (default): ``s{1,2}_anechoic`` in every split, i.e. the task the
  WHAMR! paper defines (separate, denoise and dereverberate).
* ``False``: ``s{1,2}_reverb`` in every split (separate and denoise only).

SpeechBrain's WHAMR! recipe differs: with ``dereverberate=True`` it trains
on ``s{1,2}_anechoic`` but validates and tests on ``s{1,2}_reverb`` (its
``prepare_data.py`` switches folders for ``cv``/``tt``), so its scores
measure reverberant targets. Check which convention a published number
uses before comparing.

Authors
 * speechbrain_s4 contributors
"""

from recipes.common import prepare_sibling_folders, wsj_style_split_folders

LAYOUT = (
    "<data_folder>/wav{8k,16k}/{min,max}/{tr,cv,tt}/{mix_both_reverb,"
    "s1_anechoic,s2_anechoic,s1_reverb,s2_reverb,noise}/<wsj0-2mix name>.wav, "
    "data_folder being the WHAMR! output folder (e.g. 'whamr') or its parent"
)


def prepare(
    data_folder,
    save_folder,
    sample_rate: int = 8000,
    mode: str = "min",
    dereverberate: bool = True,
) -> dict:
    """Write ``train/valid/test.csv`` for WHAMR! (``mix_both_reverb``).

    Arguments
    ---------
    data_folder : str or Path
        The WHAMR! folder holding ``wav8k``/``wav16k`` (or its parent when
        named ``whamr``).
    save_folder : str or Path
        Where the CSVs go.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` or ``"max"``.
    dereverberate : bool
        Anechoic targets in every split (True) or reverberant ones (False).

    Returns
    -------
    dict
        ``{"train", "valid", "test"}`` -> CSV path.

    Example
    -------
    >>> prepare("/nonexistent/whamr", "/tmp/unused", mode="full")
    Traceback (most recent call last):
    ...
    ValueError: unknown mode 'full'; expected one of 'min', 'max'
    """
    root, split_folders = wsj_style_split_folders(
        data_folder, sample_rate, mode, ("whamr",), LAYOUT
    )
    target = "anechoic" if dereverberate else "reverb"
    options = {
        "layout": "whamr",
        "data_folder": str(root),
        "sample_rate": sample_rate,
        "mode": mode,
        "dereverberate": bool(dereverberate),
    }
    columns = {
        "mix_wav": "mix_both_reverb",
        "s1_wav": f"s1_{target}",
        "s2_wav": f"s2_{target}",
        "noise_wav": "noise",
    }
    return prepare_sibling_folders(
        save_folder, options, split_folders, columns, LAYOUT
    )
