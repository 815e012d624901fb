"""The stock SpeechBrain baselines of the registry against their YAML files.

``hparams/models/sepformer.yaml`` and ``convtasnet.yaml`` build the models
explicitly from SpeechBrain's lobes; ``models.build("sepformer")`` and
``build("convtasnet")`` build them from ``models/baselines.py``. Both
definitions must give the same modules (keys and shapes), so they cannot
drift apart.
"""

from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4.models import build
from speechbrain_s4.models.baselines import ConvTasNet, Sepformer

MODEL_FILES = Path(__file__).resolve().parents[2] / "hparams" / "models"


def _yaml_separator(name, **overrides):
    with open(MODEL_FILES / f"{name}.yaml") as stream:
        return load_hyperpyyaml(stream, overrides)["separator"]


def _layout(module):
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@pytest.mark.parametrize(
    "name, params",
    [("sepformer", 25_679_361), ("convtasnet", 6_582_832)],
)
@pytest.mark.parametrize("num_spks", [2, 3])
def test_registry_and_yaml_build_the_same_modules(name, params, num_spks):
    registry = build(name, num_spks=num_spks)
    from_yaml = _yaml_separator(name, num_spks=num_spks)
    assert type(registry).__mro__[1] is type(from_yaml)  # MaskingSeparator
    assert _layout(registry) == _layout(from_yaml)
    for part in ("encoder", "masknet", "decoder"):
        assert type(getattr(registry, part)) is type(getattr(from_yaml, part))
    assert registry.num_spks == from_yaml.num_spks == num_spks
    if num_spks == 2:  # the recipe sizes (Sepformer 25.7 M, Conv-TasNet 6.58 M)
        assert sum(p.numel() for p in registry.parameters()) == params


@pytest.mark.parametrize("name", ["sepformer", "convtasnet"])
def test_registry_model_computes_what_the_yaml_model_computes(name):
    """Same weights in, same estimates out (the masks use a ReLU in both)."""
    small = {
        "sepformer": dict(encoder_filters=16, chunk_size=20, num_repeats=1,
                          num_layers=1, nhead=2, d_ffn=32),
        "convtasnet": dict(encoder_filters=16, bottleneck_channels=8,
                           hidden_channels=16, blocks_per_repeat=2,
                           num_repeats=1),
    }[name]
    registry = build(name, **small).eval()
    from_yaml = _yaml_separator(name, **small).eval()
    from_yaml.load_state_dict(registry.state_dict())
    mix = torch.randn(2, 1203, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = from_yaml(mix)
        torch.testing.assert_close(registry(mix), expected)
    assert expected.shape == (2, 1203, 2)


def test_baselines_record_their_arguments():
    """Inference folders rebuild a separator from its recorded arguments."""
    model = Sepformer(num_layers=1, nhead=2, d_ffn=16, encoder_filters=8)
    rebuilt = Sepformer(**model.init_arguments)
    assert _layout(rebuilt) == _layout(model)
    assert ConvTasNet(num_spks=3).init_arguments["num_spks"] == 3


def test_convtasnet_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="norm_type 'gln'"):
        ConvTasNet(norm_type="gln")
