"""Classification losses (a registry), class weights, and the Mixup/CutMix option.

Every loss takes logits ``[B, K]`` and either hard targets ``[B]`` (long) or soft targets
``[B, K]`` (rows summing to 1, from Mixup/CutMix or label smoothing), and returns a scalar.

Example:
    >>> loss_fn = build_loss(TrainConfig(loss="focal", label_smoothing=0.1), num_classes=3)
    >>> loss_fn(torch.zeros(2, 3), torch.tensor([0, 2])).item() > 0
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlkit.core.errors import TlkitError, did_you_mean
from tlkit.train.config import TrainConfig

log = logging.getLogger(__name__)


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Hard targets ``[B]`` -> smoothed one-hot ``[B, K]``: ``1 - s + s/K`` on the true class."""
    off = smoothing / num_classes
    out = torch.full((targets.shape[0], num_classes), off, device=targets.device)
    return out.scatter_(1, targets.long().unsqueeze(1), 1.0 - smoothing + off)


class SoftTargetLoss(nn.Module):
    """Cross-entropy or focal loss over soft targets, with optional per-class weights.

    ``loss_i = -sum_k w_k t_ik (1 - p_ik)^gamma log p_ik``; the batch mean is normalised by the
    mean weight of the targets, so class weights change emphasis, not the loss scale.
    ``gamma = 0`` is cross-entropy (timm's ``SoftTargetCrossEntropy`` when unweighted).

    Args:
        num_classes: K.
        smoothing: label smoothing applied to hard targets (soft ones are used as given).
        gamma: focal exponent; 0 for cross-entropy.
        weight: ``[K]`` class weights or ``None``.
    """

    def __init__(self, num_classes: int, *, smoothing: float = 0.0, gamma: float = 0.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.gamma = gamma
        self.register_buffer("weight", weight.float() if weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 1:
            targets = soft_targets(targets, self.num_classes, self.smoothing)
        logp = F.log_softmax(logits.float(), dim=-1)
        terms = -targets * logp
        if self.gamma:
            terms = terms * (1.0 - logp.exp()).pow(self.gamma)
        if self.weight is None:
            return terms.sum(-1).mean()
        w = self.weight.to(logits.device)
        per = (terms * w).sum(-1)
        return per.sum() / (targets * w).sum().clamp_min(1e-12)


@dataclass(frozen=True)
class LossInfo:
    name: str
    description: str
    build: Callable[[TrainConfig, int, torch.Tensor | None], nn.Module]


_LOSSES: dict[str, LossInfo] = {}


def register_loss(name: str, *, description: str) -> Callable:
    """Register ``build(cfg, num_classes, weight) -> nn.Module`` under ``name``."""

    def deco(build: Callable) -> Callable:
        _LOSSES[name] = LossInfo(name, description, build)
        return build

    return deco


@register_loss("ce", description="cross-entropy, with label_smoothing and class_weights")
def _ce(cfg: TrainConfig, num_classes: int, weight: torch.Tensor | None) -> nn.Module:
    return SoftTargetLoss(num_classes, smoothing=cfg.label_smoothing, weight=weight)


@register_loss("focal", description="focal loss (focal_gamma) for imbalanced or hard classes")
def _focal(cfg: TrainConfig, num_classes: int, weight: torch.Tensor | None) -> nn.Module:
    return SoftTargetLoss(num_classes, smoothing=cfg.label_smoothing, gamma=cfg.focal_gamma, weight=weight)


def class_weights(spec: str | Sequence[float] | None, counts: Sequence[int]) -> torch.Tensor | None:
    """``None``, ``"balanced"`` (``n / (K * count_k)``, as scikit-learn) or explicit ``[K]`` weights.

    Example:
        >>> class_weights("balanced", [30, 10]).tolist()
        [0.6666666865348877, 2.0]
    """
    if spec is None:
        return None
    counts_a = np.asarray(counts, dtype=np.float64)
    if spec == "balanced":
        return torch.tensor(counts_a.sum() / (len(counts_a) * np.maximum(counts_a, 1)), dtype=torch.float32)
    weights = list(spec)  # type: ignore[arg-type]
    if len(weights) != len(counts_a) or any(float(w) < 0 for w in weights):
        raise TlkitError(
            f"class_weights has {len(weights)} entries; give {len(counts_a)} non-negative numbers "
            "(one per class, in sorted class order) or 'balanced'"
        )
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def build_loss(cfg: TrainConfig, num_classes: int, counts: Sequence[int] | None = None, *,
               multilabel: bool = False, n_images: int | None = None) -> nn.Module:
    """The training loss named by ``cfg.loss``; ``counts`` (images per class) for 'balanced'.

    ``multilabel``: targets are multi-hot ``[B, K]``; the loss is binary cross-entropy (``ce``, the default,
    or ``bce``) or the asymmetric loss (``asl``), ``class_weights`` giving each label's ``pos_weight``
    (``balanced``: negatives / positives among the ``n_images`` training images; see
    :mod:`tlkit.train.multilabel`).
    """
    if multilabel:
        from tlkit.train.multilabel import build_multilabel_loss, pos_weights

        counts = counts if counts is not None else [1] * num_classes
        pw = pos_weights(cfg.class_weights, counts, n_images if n_images is not None else 2 * max(counts))
        return build_multilabel_loss(cfg.loss, cfg.label_smoothing, pw)
    if cfg.loss not in _LOSSES:
        if cfg.loss in ("bce", "asl"):
            raise TlkitError(f"loss {cfg.loss!r} is for multi-label data (a manifest path,labels); on single-label "
                             f"data use one of: {', '.join(_LOSSES)}")
        raise TlkitError(f"unknown loss {cfg.loss!r}{did_you_mean(cfg.loss, _LOSSES)}; choose one of: {', '.join(_LOSSES)}")
    weight = class_weights(cfg.class_weights, counts if counts is not None else [1] * num_classes)
    return _LOSSES[cfg.loss].build(cfg, num_classes, weight)


def build_mixup(cfg: TrainConfig, num_classes: int, *, multilabel: bool = False) -> Callable | None:
    """timm ``Mixup`` (returns soft targets, label smoothing folded in) or ``None`` when off.

    Batches must have an even size; the training loader drops the last incomplete batch. ``multilabel``:
    timm mixes the images, the multi-hot targets are mixed with the same weight
    (:class:`tlkit.train.multilabel.MultiLabelMixup`; the loss applies the label smoothing).
    """
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    if multilabel:
        from tlkit.train.multilabel import MultiLabelMixup

        return MultiLabelMixup(Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                                     mode="batch", num_classes=num_classes))
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )


__all__ = [
    "LossInfo",
    "SoftTargetLoss",
    "build_loss",
    "build_mixup",
    "class_weights",
    "register_loss",
    "soft_targets",
]
