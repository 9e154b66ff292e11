"""Multi-label classification (issue #30): losses, per-class thresholds and metrics.

A multi-label model outputs ``K`` independent logits; ``sigmoid(logit_k)`` is the probability that label
``k`` applies. Targets are multi-hot ``[n, K]`` (0/1; rows of -1 are unknown and left out).

* Losses: :class:`BCEWithLogits` (the default; ``pos_weight`` from ``class_weights``) and
  :class:`AsymmetricLoss` (Ridnik et al., ICCV 2021, "Asymmetric Loss For Multi-Label Classification":
  focusing ``gamma_neg`` / ``gamma_pos`` and a probability margin ``clip`` on the negatives), written here.
* :func:`choose_thresholds`: per class, the threshold that maximises F1 on validation data.
* :func:`multilabel_metrics`: mAP (macro and micro), per-class AP, micro / macro / example-based F1 at the
  thresholds, Hamming loss, ROC-AUC macro; :func:`quick_multilabel_metrics` is the per-epoch subset.

Example:
    >>> y = np.array([[1, 0], [0, 1], [1, 1]]); p = np.array([[.9, .2], [.3, .8], [.7, .6]])
    >>> m = multilabel_metrics(y, p, ["a", "b"], choose_thresholds(y, p))
    >>> m["map_macro"], m["hamming_loss"]
    (1.0, 0.0)
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

#: ``loss: asl`` settings: the defaults of the paper's reference code and of timm's
#: ``AsymmetricLossMultiLabel`` (gamma_neg 4, gamma_pos 1, clip 0.05), the paper's recommended start.
ASL_GAMMA_NEG = 4.0
ASL_GAMMA_POS = 1.0
ASL_CLIP = 0.05
#: Threshold for a class whose validation data has no positive (F1 is undefined there): sigmoid's midpoint.
DEFAULT_THRESHOLD = 0.5
#: ``class_weights: balanced`` pos_weight is ``negatives / positives`` per class, capped here so that a label
#: seen a handful of times does not dominate the loss (a 1-in-100 label weighs at most 100 x its negatives).
MAX_POS_WEIGHT = 100.0
#: Multi-label losses; ``ce`` (the single-label default) stands for ``bce`` on multi-label data.
MULTILABEL_LOSSES = ("bce", "asl")


def smooth_multi_hot(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing of multi-hot targets: ``t (1 - s) + s / 2``."""
    return targets * (1.0 - smoothing) + 0.5 * smoothing if smoothing else targets


class BCEWithLogits(nn.Module):
    """Mean binary cross-entropy over every (image, class) pair, ``pos_weight [K]`` on the positives.

    Args:
        smoothing: binary label smoothing (:func:`smooth_multi_hot`).
        pos_weight: ``[K]`` weights of the positive term, or ``None``.
    """

    def __init__(self, *, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight.float() if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = smooth_multi_hot(targets.float(), self.smoothing)
        return F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=self.pos_weight)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label classification (Ridnik et al. 2021), as a mean over (image, class).

    With ``p = sigmoid(logit)`` and the shifted negative probability ``p_m = max(p - clip, 0)``::

        loss = -[ w t (1 - p)^gamma_pos log(p) + (1 - t) p_m^gamma_neg log(1 - p_m) ]

    ``gamma_neg = gamma_pos = clip = 0`` (and no ``pos_weight``) is binary cross-entropy exactly. Unlike
    timm's ``AsymmetricLossMultiLabel`` (a sum over the batch), the mean keeps the loss on the scale of
    :class:`BCEWithLogits`, so the learning rates tuned for one suit the other. The focusing weights are
    part of the gradient (``disable_torch_grad_focal_loss=False`` in the reference code).

    Args:
        gamma_neg, gamma_pos: focusing exponents of the negative and positive terms.
        clip: probability margin subtracted from the negatives' probability (0 = none).
        smoothing: binary label smoothing; pos_weight: ``[K]`` weights of the positive term.
    """

    def __init__(self, *, gamma_neg: float = ASL_GAMMA_NEG, gamma_pos: float = ASL_GAMMA_POS, clip: float = ASL_CLIP,
                 smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.smoothing = gamma_neg, gamma_pos, clip, smoothing
        self.register_buffer("pos_weight", pos_weight.float() if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = smooth_multi_hot(targets.float(), self.smoothing)
        x = logits.float()
        log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
        p = x.sigmoid()
        if self.clip > 0:
            p_neg = (p - self.clip).clamp_min(0.0)
            log_neg = torch.log1p(-p_neg.clamp_max(1.0 - 1e-6))
        else:
            p_neg, log_neg = p, log_1mp
        pos = log_p * (1.0 - p).pow(self.gamma_pos) if self.gamma_pos else log_p
        neg = log_neg * p_neg.pow(self.gamma_neg) if self.gamma_neg else log_neg
        if self.pos_weight is not None:
            pos = pos * self.pos_weight
        return -(t * pos + (1.0 - t) * neg).mean()


def pos_weights(spec: str | Sequence[float] | None, positives: Sequence[int], n: int) -> torch.Tensor | None:
    """``pos_weight [K]`` of the loss from ``class_weights``: ``None``; ``"balanced"``: negatives / positives per
    class (capped at :data:`MAX_POS_WEIGHT`, 1 for a class without positives); or an explicit list.

    Example:
        >>> pos_weights("balanced", [10, 50], 100).tolist()
        [9.0, 1.0]
    """
    if spec is None:
        return None
    pos = np.asarray(positives, np.float64)
    if spec == "balanced":
        w = np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 1.0)
        return torch.tensor(np.clip(w, 1e-3, MAX_POS_WEIGHT), dtype=torch.float32)
    weights = list(spec)  # type: ignore[arg-type]
    if len(weights) != len(pos) or any(float(w) < 0 for w in weights):
        raise TlkitError(f"class_weights has {len(weights)} entries; give {len(pos)} non-negative numbers (the "
                         "pos_weight of each label, in sorted class order) or 'balanced'")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)


def build_multilabel_loss(name: str, smoothing: float, pos_weight: torch.Tensor | None) -> nn.Module:
    """``bce`` (also for ``ce``, the single-label default) or ``asl``; another loss is a one-line error."""
    if name in ("ce", "bce"):
        return BCEWithLogits(smoothing=smoothing, pos_weight=pos_weight)
    if name == "asl":
        return AsymmetricLoss(smoothing=smoothing, pos_weight=pos_weight)
    raise TlkitError(f"loss {name!r} is for single-label data; on multi-label data use one of: "
                     f"{', '.join(MULTILABEL_LOSSES)} (--set loss=bce or loss=asl)")


class MultiLabelMixup:
    """Mixup/CutMix of images with multi-hot targets mixed by the same ``lam``: ``lam y + (1 - lam) y_flip``.

    The image mixing is timm's (``Mixup`` with ``mode='batch'``: one ``lam`` per batch, the batch mixed
    with its reverse); only the target mixing differs (timm's one-hot targets assume one label per image).
    """

    def __init__(self, mixup):
        self.mixup = mixup

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = float(self.mixup._mix_batch(x))
        t = target.float()
        return x, t * lam + t.flip(0) * (1.0 - lam)


# --------------------------------------------------------------------------- thresholds and metrics


def known_rows(targets: np.ndarray) -> np.ndarray:
    """Bool ``[n]``: rows with known labels (no -1)."""
    return (np.asarray(targets) >= 0).all(1) if len(targets) else np.zeros(0, bool)


def choose_thresholds(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per class, the probability threshold (predict ``p >= t``) that maximises F1 on ``targets [n, K]`` vs
    ``probs [n, K]``; a tie goes to the highest threshold; a class without positives gets
    :data:`DEFAULT_THRESHOLD`. Thresholds sit midway between the deciding score and the next lower one, so
    scores near the boundary on new data fall on the side the validation data supports.
    """
    y = np.asarray(targets) > 0.5
    p = np.asarray(probs, np.float64)
    out = []
    for k in range(p.shape[1]):
        pos = int(y[:, k].sum())
        if pos == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-p[:, k], kind="stable")
        s, yk = p[order, k], y[order, k]
        tp = np.cumsum(yk)
        last = np.r_[s[1:] != s[:-1], True]  # predict the top i+1 scores: only where the score changes
        i = np.flatnonzero(last)
        f1 = 2 * tp[i] / (i + 1 + pos)
        best = i[np.flatnonzero(f1 == f1.max())[0]]
        below = s[best + 1] if best + 1 < len(s) else 0.0
        out.append(float((s[best] + below) / 2))
    return out


def average_precision_ml(targets: np.ndarray, probs: np.ndarray) -> tuple[list[float | None], float | None,
                                                                            float | None]:
    """Per-class average precision (``None`` for a class without positives), macro over the classes with
    positives, and micro (every (image, class) pair pooled), as scikit-learn's ``average_precision_score``."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(targets) > 0.5
    per = [float(average_precision_score(y[:, k], probs[:, k])) if y[:, k].any() else None
           for k in range(probs.shape[1])]
    present = [a for a in per if a is not None]
    if not present:
        return per, None, None
    return per, float(np.mean(present)), float(average_precision_score(y.ravel(), np.asarray(probs).ravel()))


def predict_sets(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Bool ``[n, K]``: label ``k`` predicted where ``probs[:, k] >= thresholds[k]``."""
    return np.asarray(probs) >= np.asarray(thresholds, np.float64)[None, :]


def _f1s(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Per-class precision, recall, F1 ``[K]`` (0 where undefined); micro F1; example-based F1 (an image with
    no true and no predicted label scores 0, as scikit-learn's ``f1_score(average='samples')`` by default)."""
    tp = (y & pred).sum(0).astype(np.float64)
    fp = (~y & pred).sum(0).astype(np.float64)
    fn = (y & ~pred).sum(0).astype(np.float64)
    prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    rec = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denom) if denom else 0.0
    t_i = (y & pred).sum(1)
    d_i = y.sum(1) + pred.sum(1)
    samples = float(np.mean(np.where(d_i > 0, 2 * t_i / np.maximum(d_i, 1), 0.0)))
    return prec, rec, f1, micro, samples


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                       thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Every multi-label metric of ``probs [n, K]`` against multi-hot ``targets [n, K]``.

    Threshold-free: ``map_macro`` (mean AP over the classes with positives), ``map_micro``,
    ``roc_auc_macro`` (over the classes with positives and negatives; ``None`` if none). At ``thresholds``
    (default :data:`DEFAULT_THRESHOLD` each): ``f1_micro``, ``f1_macro`` (over the classes with positives),
    ``f1_samples`` (example-based: mean over images of 2|T∩P|/(|T|+|P|), 0 for an image with neither, as
    scikit-learn's ``average='samples'``), ``precision_micro``, ``recall_micro``, ``hamming_loss``,
    ``subset_accuracy``; ``per_class`` ``{name: {average_precision, roc_auc, precision, recall, f1, support,
    threshold}}``; ``label_cardinality`` (mean true labels per image), ``n``, ``classes``, ``thresholds``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(targets) > 0.5
    p = np.asarray(probs, np.float64)
    if len(y) == 0:
        raise TlkitError("no labeled images to evaluate")
    k = len(classes)
    th = [DEFAULT_THRESHOLD] * k if thresholds is None else [float(t) for t in thresholds]
    pred = predict_sets(p, th)
    ap, map_macro, map_micro = average_precision_ml(y, p)
    aucs: list[float | None] = []
    for c in range(k):
        both = y[:, c].any() and not y[:, c].all()
        aucs.append(float(roc_auc_score(y[:, c], p[:, c])) if both else None)
    prec, rec, f1, micro, samples = _f1s(y, pred)
    support = y.sum(0)
    present = support > 0
    tp, fp, fn = (y & pred).sum(), (~y & pred).sum(), (y & ~pred).sum()
    valid_auc = [a for a in aucs if a is not None]
    return {
        "n": int(len(y)),
        "map_macro": map_macro,
        "map_micro": map_micro,
        "roc_auc_macro": float(np.mean(valid_auc)) if valid_auc else None,
        "f1_micro": micro,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "f1_samples": samples,
        "precision_micro": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall_micro": float(tp / (tp + fn)) if tp + fn else 0.0,
        "hamming_loss": float((y != pred).mean()),
        "subset_accuracy": float((y == pred).all(1).mean()),
        "label_cardinality": float(y.sum(1).mean()),
        "per_class": {
            name: {"average_precision": ap[c], "roc_auc": aucs[c], "precision": float(prec[c]),
                   "recall": float(rec[c]), "f1": float(f1[c]), "support": int(support[c]), "threshold": th[c]}
            for c, name in enumerate(classes)},
        "thresholds": th,
        "classes": list(classes),
    }


def quick_multilabel_metrics(targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The per-epoch subset: ``map`` (macro AP, 0 when no class has a positive), ``map_micro``, and
    ``f1_micro`` / ``f1_macro`` at thresholds chosen on these same rows (an optimistic figure: the thresholds
    a run stores are chosen this way on validation data)."""
    if not len(targets):
        return {"map": 0.0, "map_micro": 0.0, "f1_micro": 0.0, "f1_macro": 0.0}
    y = np.asarray(targets) > 0.5
    _, macro, micro = average_precision_ml(y, probs)
    _, _, f1, f1_micro, _ = _f1s(y, predict_sets(probs, choose_thresholds(y, probs)))
    present = y.any(0)
    return {"map": macro or 0.0, "map_micro": micro or 0.0, "f1_micro": f1_micro,
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0}


__all__ = [
    "ASL_CLIP", "ASL_GAMMA_NEG", "ASL_GAMMA_POS", "AsymmetricLoss", "BCEWithLogits", "DEFAULT_THRESHOLD",
    "MAX_POS_WEIGHT", "MULTILABEL_LOSSES", "MultiLabelMixup", "average_precision_ml", "build_multilabel_loss",
    "choose_thresholds", "known_rows", "multilabel_metrics", "pos_weights", "predict_sets",
    "quick_multilabel_metrics", "smooth_multi_hot",
]
