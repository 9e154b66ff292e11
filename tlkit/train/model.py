"""Models for fine-tuning: a backbone with a fresh head, and a trained run rebuilt from its checkpoint.

:func:`load_run` needs only the run folder (or one ``.safetensors`` checkpoint): the backbone name,
constructor arguments, classes and preprocessing are read from the checkpoint's own metadata
(:class:`~tlkit.train.checkpoint.RunMeta`, old shapes included); no pretrained weights are looked up,
so it works offline for any backbone.

Example:
    >>> model, classes, data_config = load_run("runs/flowers")        # doctest: +SKIP
    >>> model(torch.zeros(1, *data_config["input_size"])).shape       # doctest: +SKIP
    torch.Size([1, 5])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlkit.core.errors import TlkitError
from tlkit.data.config import DataConfig
from tlkit.train.checkpoint import RunMeta, load_weights, weights_path
from tlkit.train.config import TrainConfig

log = logging.getLogger(__name__)


def model_kwargs_for(cfg: TrainConfig) -> dict[str, Any]:
    """Constructor arguments from the config (only the non-default ones, so torchvision models work)."""
    kw: dict[str, Any] = {}
    if cfg.drop_rate:
        kw["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:
        kw["drop_path_rate"] = cfg.drop_path_rate
    return kw


def architecture_kwargs(name: str, weights_source: str) -> dict[str, Any]:
    """Constructor arguments a weight source imposes (e.g. BatchNorm eps of the packaged Lite weights)."""
    from tlkit.models.backbones import PACKAGED_WEIGHTS

    if weights_source == "package" and name in PACKAGED_WEIGHTS:
        return dict(PACKAGED_WEIGHTS[name].model_kwargs)
    return {}


def create_classifier(cfg: TrainConfig, num_classes: int):
    """The backbone of ``cfg`` (pretrained as configured) with a fresh ``num_classes`` head.

    Returns:
        ``(backbone, model_kwargs)``: a :class:`tlkit.models.backbones.Backbone` whose ``model`` outputs
        logits ``[B, num_classes]``, and every constructor argument needed to rebuild it.
    """
    from tlkit.models.backbones import create_backbone

    kw = {**checkpoint_kwargs(cfg.weights), **model_kwargs_for(cfg)}
    bb = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights, num_classes=num_classes, **kw)
    if getattr(bb.model, "num_classes", num_classes) != num_classes:
        bb.model.reset_classifier(num_classes)
    init_head(bb.model)
    return bb, {**architecture_kwargs(bb.name, bb.weights.source), **kw}


def checkpoint_kwargs(weights: str | None) -> dict[str, Any]:
    """Constructor arguments recorded in a tlkit checkpoint used as ``--weights`` (a warm start), else ``{}``."""
    if not weights or not str(weights).endswith(".safetensors"):
        return {}
    from tlkit.train.checkpoint import read_meta

    try:
        return dict(read_meta(weights).get("model_kwargs", {}))
    except TlkitError:
        return {}  # a plain safetensors state dict


def init_head(model: nn.Module, std: float = 0.01) -> None:
    """Small-normal weights, zero bias for a fresh classifier.

    Some timm heads are initialised for training from scratch (EfficientNet's is uniform
    +-1/sqrt(num_classes)), which on pretrained features gives initial logits with a std of ~10
    and a loss spike that wrecks the first epochs of fine-tuning.
    """
    from tlkit.train.optim import head_module

    for m in head_module(model).modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _checkpoint_file(run: Path, which: str) -> Path:
    if run.suffix == ".safetensors":
        return run
    if not run.is_dir():
        raise TlkitError(f"run folder {str(run)!r} does not exist; give the --out folder of `tlkit finetune`")
    path = weights_path(run, which)
    if not path.is_file():
        have = sorted(p.stem for p in run.glob("*.safetensors"))
        fix = f"choose one of: {', '.join(have)}" if have else "it holds no checkpoint yet (did training finish an epoch?)"
        raise TlkitError(f"{path} not found; {fix}")
    return path


def rebuild_model(meta: RunMeta, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The architecture described by checkpoint ``meta`` (random init unless ``state_dict`` given)."""
    from tlkit.models.backbones import create_backbone

    bb = create_backbone(meta.backbone, pretrained=False, num_classes=meta.num_classes, **meta.model_kwargs)
    if state_dict is not None:
        missing, unexpected = bb.model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise TlkitError(
                f"checkpoint does not fit {meta.backbone!r} (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                "it may come from another tlkit/timm version"
            )
    return bb.model


def load_model(
    run: str | os.PathLike, *, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunMeta]:
    """``(model, meta)``: the run's classifier in eval mode (logits ``[B, K]``) and its :class:`RunMeta`.

    Reads every checkpoint shape tlkit wrote (see :meth:`RunMeta.from_dict`).
    """
    path = _checkpoint_file(Path(run), which)
    state_dict, raw = load_weights(path)
    meta = RunMeta.from_dict(raw)
    return rebuild_model(meta, state_dict).to(device).eval(), meta


def load_run(
    run: str | os.PathLike, *, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, list[str], DataConfig]:
    """Rebuild a trained classifier from a run folder, without the original command.

    Args:
        run: the run folder (``--out`` of finetune) or a ``.safetensors`` checkpoint in it.
        which: ``best`` or ``last``.
        device: where to put the model.

    Returns:
        ``(model, classes, data_config)``: the model in eval mode outputs logits ``[B, K]``;
        ``classes`` are the K names in output order; ``data_config`` is the :class:`~tlkit.data.DataConfig`
        it was trained with (input_size at the training image size), for :func:`tlkit.data.build_transform`.
    """
    model, meta = load_model(run, which=which, device=device)
    return model, list(meta.classes), meta.data_config


def run_meta(run: str | os.PathLike, which: str = "best") -> RunMeta:
    """The :class:`RunMeta` of a run's checkpoint, without loading the weights."""
    return RunMeta.from_dict(checkpoint_meta(run, which))


def checkpoint_meta(run: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    """The raw metadata of a run's checkpoint (backbone, classes, config, epoch, metrics, weights origin)."""
    from tlkit.train.checkpoint import read_meta

    return read_meta(_checkpoint_file(Path(run), which))


__all__ = ["checkpoint_meta", "create_classifier", "init_head", "load_model", "load_run", "model_kwargs_for",
           "rebuild_model", "run_meta"]
