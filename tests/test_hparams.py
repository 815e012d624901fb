"""Every YAML file in hparams/ loads, with tiny sizes, and builds its model.

The files are enumerated from the folder, so a new or renamed recipe is
tested without anyone editing this file, and a model file without tiny
overrides below fails instead of being skipped.
"""

import re
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4.brain import REQUIRED_HPARAMS, flatten_hparams

HPARAMS = Path(__file__).resolve().parents[1] / "hparams"

#: model file -> overrides giving a model small enough for a unit test
TINY = {
    "s4m-tiny": {
        "hidden_channels": 16,
        "bottleneck_channels": 8,
        "num_blocks": 2,
        "depth": 2,
        "d_state": 4,
    },
    "s4m": {
        "hidden_channels": 16,
        "bottleneck_channels": 8,
        "num_blocks": 2,
        "depth": 2,
        "d_state": 4,
    },
    "s4m-tiny-causal": {
        "hidden_channels": 16,
        "bottleneck_channels": 8,
        "num_blocks": 2,
        "depth": 2,
        "d_state": 4,
    },
    "spmamba": {
        "n_layers": 1,
        "emb_dim": 4,
        "emb_ks": 2,
        "attn_n_head": 2,
        "attn_approx_qk_dim": 64,
        "d_state": 4,
        "expand": 2,
    },
    "sepformer": {
        "encoder_filters": 8,
        "num_layers": 1,
        "d_ffn": 16,
        "nhead": 2,
        "chunk_size": 10,
        "num_repeats": 1,
    },
    "convtasnet": {
        "encoder_filters": 8,
        "bottleneck_channels": 8,
        "hidden_channels": 16,
        "blocks_per_repeat": 2,
        "num_repeats": 1,
    },
}

#: the models and datasets the recipes cover (4 x 7 files in the brief,
#: plus the causal S4M-tiny)
MODELS = ("sepformer", "s4m-tiny", "s4m", "s4m-tiny-causal", "spmamba")
DATASETS = (
    "wsj0mix",
    "librimix",
    "wham",
    "whamr",
    "lrs2mix",
    "echo2mix",
    "minimix",
)

RECIPES = sorted(HPARAMS.glob("*.yaml"))
MODEL_FILES = sorted((HPARAMS / "models").glob("*.yaml"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (no contention on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_of(recipe: Path) -> str:
    return recipe.stem.split("_")[0]


def load_recipe(recipe: Path, tmp_path: Path) -> dict:
    overrides = {
        "data_folder": str(tmp_path / "data"),
        "output_folder": str(tmp_path / "out"),
        "model": TINY[model_of(recipe)],
        "training": {"num_workers": 0},
    }
    with open(recipe, encoding="utf-8") as handle:
        return load_hyperpyyaml(handle, overrides)


def check_separator(separator, sample_rate, num_spks):
    assert separator.sample_rate == sample_rate
    assert separator.num_spks == num_spks
    mix = torch.randn(2, sample_rate // 5 + 3, requires_grad=True)
    estimates = separator(mix)
    assert estimates.shape == (2, mix.shape[1], num_spks)
    estimates.square().mean().backward()
    assert torch.isfinite(mix.grad).all() and mix.grad.abs().sum() > 0


def test_recipes_exist_for_every_model_and_dataset():
    names = {recipe.stem for recipe in RECIPES}
    landed = [m for m in MODELS if (HPARAMS / "models" / f"{m}.yaml").exists()]
    assert "sepformer" in landed
    expected = {f"{m}_{d}" for m in landed for d in DATASETS}
    assert expected <= names, sorted(expected - names)
    assert names <= {f"{m}_{d}" for m in MODELS for d in DATASETS}


def test_every_model_file_has_tiny_overrides():
    assert {path.stem for path in MODEL_FILES} == set(TINY)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_loads_and_builds_its_separator(recipe, tmp_path):
    hparams = flatten_hparams(load_recipe(recipe, tmp_path))
    missing = [key for key in REQUIRED_HPARAMS if key not in hparams]
    assert not missing
    separator = hparams["modules"]["separator"]
    # the checkpointer saves the very module that is trained
    recoverables = hparams["checkpointer"].recoverables
    assert recoverables["separator"] is separator
    assert recoverables["counter"] is hparams["epoch_counter"]
    assert recoverables["lr_scheduler"] is hparams["lr_scheduler"]
    check_separator(separator, hparams["sample_rate"], hparams["num_spks"])
    # training knobs every recipe must set (run options read from hparams)
    assert hparams["max_grad_norm"] == 5.0
    assert hparams["threshold_byloss"] and hparams["threshold"] == -30
    assert callable(hparams["prepare"]) and callable(hparams["optimizer"])
    assert hparams["train_csv"].startswith(str(tmp_path / "out" / "save"))
    if hparams["use_speedperturb"]:
        assert hparams["speed_perturb"].orig_freq == hparams["sample_rate"]
    # dynamic mixing is offered exactly where the preparation lists sources
    dataset = recipe.stem.split("_")[1]
    has_sources = dataset in ("wsj0mix", "librimix", "minimix")
    assert (hparams["sources_csv"] is not None) == has_sources


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=lambda path: path.stem)
def test_model_file_builds_alone(model_file):
    overrides = {**TINY[model_file.stem], "sample_rate": 16000, "num_spks": 3}
    with open(model_file, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    check_separator(hparams["separator"], 16000, 3)


@pytest.mark.parametrize(
    "model_file, sample_rate, parameters",
    [
        ("sepformer", 8000, 25_679_361),  # SpeechBrain's WSJ0Mix recipe
        ("s4m-tiny", 8000, 1_828_967),  # MODELS.md §4.8
        ("s4m-tiny", 16000, 1_843_015),
        ("s4m", 8000, 3_533_927),
        ("s4m", 16000, 3_547_975),
    ],
)
def test_model_files_have_the_published_sizes(
    model_file, sample_rate, parameters
):
    with open(HPARAMS / "models" / f"{model_file}.yaml") as handle:
        hparams = load_hyperpyyaml(handle, {"sample_rate": sample_rate})
    separator = hparams["separator"]
    assert sum(p.numel() for p in separator.parameters()) == parameters


def test_convtasnet_file_has_speechbrains_recipe_sizes():
    # SpeechBrain's Conv-TasNet MaskNet takes ~15 s to build at the recipe
    # size, too slow for a unit test: its sizes are read back instead
    with open(HPARAMS / "models" / "convtasnet.yaml") as handle:
        text = handle.read()
    sizes = dict(re.findall(r"^(\w+): (\w+)", text, re.M))
    recipe = {"kernel_size": "16", "encoder_filters": "256"}
    recipe.update(bottleneck_channels="256", hidden_channels="512")
    recipe.update(block_kernel_size="3", blocks_per_repeat="6")
    recipe.update(num_repeats="4", norm_type="gLN", causal="False")
    assert {key: sizes[key] for key in recipe} == recipe


def test_placeholders_are_data_paths_except_minimix():
    for recipe in RECIPES:
        text = recipe.read_text()
        placeholders = re.findall(r"^(\w+):\s*!PLACEHOLDER", text, re.M)
        if recipe.stem.endswith("_minimix"):
            assert placeholders == []
            assert re.search(r"^data_folder: data/minimix", text, re.M)
        else:
            assert placeholders == ["data_folder"]


def test_every_included_file_is_used_and_every_knob_commented():
    included = set()
    for recipe in RECIPES:
        included.update(re.findall(r"!include:(\S+\.yaml)", recipe.read_text()))
    parts = {
        str(path.relative_to(HPARAMS))
        for folder in ("data", "training")
        for path in (HPARAMS / folder).glob("*.yaml")
    }
    assert parts <= included, sorted(parts - included)
    # a knob is a top-level scalar; each says what it is on its line
    for path in [*HPARAMS.glob("*/*.yaml"), *RECIPES]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            knob = re.match(r"^(\w+):\s+([^!\s{\[][^#]*|!ref[^#]*)$", line)
            if knob:
                pytest.fail(f"{path.name}:{number} has no comment: {line}")
