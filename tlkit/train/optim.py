"""Parameter groups (no weight decay on norms/biases, layer-wise lr decay) and optimisers.

Each group's ``lr`` is its *peak* lr: ``cfg.lr x lr_scale``, where ``lr_scale`` is 1 for the
head and ``layer_decay ** depth`` for a layer group ``depth`` steps below it (full and
freeze-unfreeze modes). The schedule multiplies these peaks step by step.

Example:
    >>> model = timm.create_model("test_resnet", num_classes=3)
    >>> opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1))
    >>> sorted({round(g["lr"], 4) for g in opt.param_groups})[-1]
    0.1
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tlkit.core.errors import TlkitError, did_you_mean
from tlkit.train.config import TrainConfig

log = logging.getLogger(__name__)

#: optimisers tlkit documents; any other name timm knows works too
COMMON_OPTIMIZERS = ("adamw", "sgd", "rmsprop", "adagrad", "adam")
#: torch optimisers with a fused (single-kernel) implementation on CPU and CUDA
FUSED_OPTIMIZERS = ("adamw", "adam")


def head_module(model: nn.Module) -> nn.Module:
    """The classifier of a timm-style model (``model.get_classifier()``)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(head, str):
        return model.get_submodule(head)
    raise TlkitError(f"{type(model).__name__} has no get_classifier(); tlkit needs a timm-style head API")


def head_param_names(model: nn.Module) -> set[str]:
    """Qualified names of the classifier's parameters inside ``model``."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}


def set_body_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze every parameter outside the classifier."""
    head = head_param_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable or name in head)


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer group (0 = stem ... max = head), coarse timm grouping.

    Models without ``group_matcher`` fall back to timm's automatic grouping.
    """
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    if hasattr(model, "group_matcher"):
        ids = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    else:
        ids = auto_group_layers(model, num_groups=8)
    head = head_param_names(model)
    body = [v for n, v in ids.items() if n not in head]
    top = max(body) + 1 if body else 0
    # the classifier is always alone on top (some matchers file it with the last block)
    return {n: (top if n in head else ids.get(n, top - 1)) for n, _ in model.named_parameters()}


def param_groups(model: nn.Module, cfg: TrainConfig, *, layer_decay: float | None) -> list[dict[str, Any]]:
    """Groups of trainable parameters: ``{"params", "weight_decay", "lr_scale", "name"}``.

    Biases and 1-d parameters (norm weights) get no weight decay. With ``layer_decay`` the
    groups are also split by depth, the head at scale 1 and each group below x ``layer_decay``.
    """
    ids = layer_ids(model) if layer_decay else {}
    top = max(ids.values()) if ids else 0
    no_wd = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in no_wd)
        depth = ids.get(name, top)
        key = f"layer{depth}_{'decay' if decay else 'no_decay'}"
        g = groups.setdefault(
            key,
            {
                "params": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_scale": (layer_decay ** (top - depth)) if layer_decay else 1.0,
                "name": key,
            },
        )
        g["params"].append(p)
    if not groups:
        raise TlkitError("no trainable parameters; check mode / freeze settings")
    return list(groups.values())


def fused_kernels_for(model: nn.Module) -> bool:
    """Whether torch has fused optimizer kernels for the devices of ``model``'s parameters: on CUDA, and
    on the CPU from torch 2.4 (torch 2.2-2.3 refuse ``fused=True`` for CPU tensors)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without this helper: leave the choice to torch
        return False
    return {p.device.type for p in model.parameters()} <= set(_get_fused_kernels_supported_devices())


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer for ``cfg.mode`` over the currently trainable parameters of ``model``.

    Call it after :func:`set_body_trainable` has frozen what the mode freezes (linear-probe);
    for freeze-unfreeze call it with everything trainable, so body groups exist for phase 2.
    """
    from timm.optim import create_optimizer_v2, list_optimizers

    layer_decay = cfg.layer_decay if cfg.mode != "linear-probe" and cfg.layer_decay not in (None, 1.0) else None
    groups = param_groups(model, cfg, layer_decay=layer_decay)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    kwargs: dict[str, Any] = {}
    name = cfg.optimizer.lower()
    if name == "sgd":
        kwargs["nesterov"] = cfg.nesterov
    if name in FUSED_OPTIMIZERS and fused_kernels_for(model):
        kwargs["fused"] = True  # one kernel for all parameters: ~4x faster steps than foreach on CPU
    if name not in list_optimizers():
        raise TlkitError(f"unknown optimizer {cfg.optimizer!r}{did_you_mean(name, list_optimizers())}; "
                         f"common ones: {', '.join(COMMON_OPTIMIZERS)}")
    opt = create_optimizer_v2(
        groups, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )
    log.info(
        "optimizer %s: %d groups, lr scales %.3g..%.3g",
        name,
        len(groups),
        min(g["lr_scale"] for g in groups),
        max(g["lr_scale"] for g in groups),
    )
    return opt


__all__ = [
    "COMMON_OPTIMIZERS",
    "build_optimizer",
    "head_module",
    "head_param_names",
    "layer_ids",
    "param_groups",
    "set_body_trainable",
]
