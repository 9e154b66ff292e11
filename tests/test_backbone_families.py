"""Backbone families: one parse of a name picks timm or torchvision, and each family's methods."""

from __future__ import annotations

import pytest

from tlkit.core.errors import TlkitError
from tlkit.data import DataConfig
from tlkit.models.backbones import FAMILIES, TimmFamily, TorchvisionFamily, create_backbone, feature_dim, parse


@pytest.mark.parametrize("name, family", [("test_resnet", TimmFamily), (" resnet18 ", TimmFamily),
                                          ("tv:resnet18", TorchvisionFamily)])
def test_parse_picks_the_family_once(name, family):
    fam = parse(name)
    assert type(fam) is family and fam.name == name.strip()
    fam.check()
    model = fam.build(0, {})
    cfg = DataConfig.from_dict(fam.data_config(model))
    assert cfg.input_size[0] == 3 and len(cfg.mean) == 3
    assert feature_dim(name) == (model.num_features, cfg.input_size[-1])


def test_prefix_registry_and_unknown_names():
    assert set(FAMILIES) == {"tv:"}
    assert parse("tv:resnet18").arch == "resnet18"
    with pytest.raises(TlkitError, match="unknown torchvision model 'nonet'"):
        parse("tv:nonet").check()
    with pytest.raises(TlkitError, match="unknown backbone 'nonet'"):
        parse("nonet").check()


def test_hub_locations_and_cache_files_are_the_familys():
    assert parse("tv:resnet18").hub_location().startswith("https://")
    assert parse("tv:resnet18").cache_file().parent.name == "checkpoints"
    assert parse("resnet18").hub_location() and "hub id" in parse("resnet18").offline_hint()
    assert parse("tv:resnet18").offline_hint() == ""


def test_backbone_carries_a_typed_data_config():
    bb = create_backbone("test_resnet", pretrained=False)
    assert isinstance(bb.data_config, DataConfig) and bb.data_config.input_size == bb.data_config["input_size"]
