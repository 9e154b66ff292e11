"""torchvision classifiers as backbones: names under the ``tv:`` prefix (``tv:resnet50``).

:class:`TorchvisionFamily` is the family :func:`tlkit.models.backbones.parse` returns for them;
:class:`TorchvisionBackbone` splits the classifier into a body (pooled features) and a head with
timm's head API. The data config comes from the weights' own transforms (``DEFAULT`` weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlkit.core.errors import TlkitError
from tlkit.models.weights import load_state_dict_into, strip_prefixes

TV_PREFIX = "tv:"


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier split into ``body`` (pooled features) and ``head`` (Linear).

    Exposes timm's head API: ``num_features``, ``forward_features``, ``forward_head``,
    ``reset_classifier(n)``.
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        last_name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
        self.num_features = last.in_features
        _set_submodule(net, last_name, nn.Identity())
        self.body = net
        self.head: nn.Module = nn.Identity()
        self.pretrained_cfg = {"classifier": "head"}
        self._tv_head_name = last_name
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def tv_state_dict_to_ours(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename a torchvision state dict (``fc.weight`` ...) to this wrapper's keys."""
        out = {}
        for k, v in sd.items():
            if k.startswith(self._tv_head_name + "."):
                out["head." + k[len(self._tv_head_name) + 1 :]] = v
            else:
                out["body." + k] = v
        return out


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _tv_weights_enum(arch: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        known = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:12])
        raise TlkitError(f"unknown torchvision model {arch!r}; examples: {known} ...") from None


def _tv_data_config(weights_enum) -> dict[str, Any]:
    t = weights_enum.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return {
        "input_size": (3, crop, crop),
        "mean": tuple(t.mean),
        "std": tuple(t.std),
        "interpolation": str(t.interpolation.value),
        "crop_pct": crop / resize,
        "crop_mode": "center",
    }


@dataclass(frozen=True)
class TorchvisionFamily:
    """A torchvision classifier under the ``tv:`` prefix (``tv:resnet50``), wrapped in :class:`TorchvisionBackbone`.

    The data config comes from the weights' own transforms (torchvision's ``DEFAULT`` weights).
    """

    name: str

    @property
    def arch(self) -> str:
        return self.name[len(TV_PREFIX) :]

    def _weights(self):
        return _tv_weights_enum(self.arch)

    def check(self) -> None:
        self._weights()

    def build(self, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        return TorchvisionBackbone(torchvision.models.get_model(self.arch, weights=None, **model_kwargs), num_classes)

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        return _tv_data_config(self._weights())

    def cache_file(self) -> Path | None:
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(self._weights().url).name

    def hub_location(self) -> str | None:
        return self._weights().url

    def download(self, model: nn.Module, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
        weights = self._weights()
        self.load_state_dict(model, weights.get_state_dict(progress=False), weights.url)
        return model

    def load_state_dict(self, model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
        if not any(k.startswith("body.") for k in sd):  # torchvision's own names (fc.weight ...)
            sd = model.tv_state_dict_to_ours(strip_prefixes(sd, set(model.body.state_dict())))
        load_state_dict_into(model, sd, origin=origin)

    def offline_hint(self) -> str:
        return ""


__all__ = ["TV_PREFIX", "TorchvisionBackbone", "TorchvisionFamily"]
