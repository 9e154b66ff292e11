"""Classification metrics (scikit-learn): pure functions of targets ``[n]`` and probabilities ``[n, K]``.

:func:`compute_metrics` is what ``evaluation.json`` and a run's best epoch hold; :func:`quick_metrics`
the per-epoch subset. The figures of :mod:`tlkit.train.reports` and :mod:`tlkit.train.plots` are drawn
from the same functions.

Example:
    >>> m = compute_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationBins:
    """Top-1 confidence against accuracy in equal-width bins ``(lo, hi]`` over ``[0, 1]``.

    Attributes:
        edges: ``[bins + 1]`` bin edges.
        counts: ``[bins]`` predictions per bin.
        accuracy: ``[bins]`` share of correct top-1 predictions (``nan`` for an empty bin).
        confidence: ``[bins]`` mean top-1 probability (``nan`` for an empty bin).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap between accuracy and confidence."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / max(1, self.counts.sum()))


def calibration_bins(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> CalibrationBins:
    """Bin the top-1 confidence of ``probs [n, K]`` against ``targets [n]`` (what ECE and the reliability
    diagram both read).

    Example:
        >>> b = calibration_bins(np.array([[.9, .1], [.3, .7]]), np.array([0, 0]), bins=2)
        >>> b.counts.tolist(), b.accuracy.tolist()
        ([0, 2], [nan, 0.5])
    """
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    accuracy = np.full(bins, np.nan)
    confidence = np.full(bins, np.nan)
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = (conf > lo) & (conf <= hi)
        counts[b] = in_bin.sum()
        if counts[b]:
            accuracy[b], confidence[b] = correct[in_bin].mean(), conf[in_bin].mean()
    return CalibrationBins(edges, counts, accuracy, confidence)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence over ``bins`` equal-width bins (``probs [n, K]``, ``targets [n]``)."""
    return calibration_bins(probs, targets, bins).ece


def _roc_auc(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro ROC-AUC over the classes present; ``None`` when undefined."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(targets)
    if len(present) < 2:
        return None
    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(targets, probs[:, 1]))
        p = probs[:, present]
        p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
        if len(present) == 2:
            return float(roc_auc_score(targets == present[1], p[:, 1]))
        return float(roc_auc_score(targets, p, multi_class="ovr", average="macro", labels=present))
    except ValueError as e:
        log.info("ROC-AUC undefined: %s", e)
        return None


def one_hot(targets: np.ndarray, k: int) -> np.ndarray:
    """``[n, K]`` bool indicator of ``targets [n]`` (two columns for a binary task, unlike ``label_binarize``);
    multi-hot ``targets [n, K]`` (multi-label) as bool."""
    t = np.asarray(targets)
    if t.ndim == 2:
        return t > 0.5
    return t[:, None] == np.arange(k)


def average_precision(targets: np.ndarray, probs: np.ndarray) -> tuple[list[float | None], float | None, float | None]:
    """One-vs-rest average precision (PR-AUC, scikit-learn) per class, macro and micro.

    The macro average is over the classes present in ``targets`` (a class without positives has no
    AP: ``None``); the micro average pools every ``(image, class)`` pair of ``one_hot(targets)`` against
    ``probs``, as ``average_precision_score(..., average="micro")`` does.

    Returns:
        ``(per_class [K], macro, micro)``; macro/micro are ``None`` when no class is present.
    """
    from sklearn.metrics import average_precision_score

    y = one_hot(targets, probs.shape[1])
    per = [float(average_precision_score(y[:, c], probs[:, c])) if y[:, c].any() else None
           for c in range(probs.shape[1])]
    present = [a for a in per if a is not None]
    if not present:
        return per, None, None
    return per, float(np.mean(present)), float(average_precision_score(y.ravel(), probs.ravel()))


def compute_metrics(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, top-5 (K >= 5), macro/weighted F1, per-class report, confusion matrix, ROC-AUC, AP, ECE.

    Args:
        targets: ``[n]`` int class indices into ``classes``.
        probs: ``[n, K]`` class probabilities.
        classes: the K class names.

    Returns:
        A JSON-ready dict: ``accuracy``, ``top5_accuracy`` (K >= 5), ``f1_macro``, ``f1_weighted``,
        ``precision_macro``, ``recall_macro``, ``per_class`` ``{name: {precision, recall, f1,
        support, average_precision}}``, ``confusion_matrix`` (rows = true class), ``roc_auc_ovr``,
        ``average_precision_macro``, ``average_precision_micro`` (see :func:`average_precision`), ``ece``,
        ``n``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if len(targets) == 0:
        raise TlkitError("no labeled images to evaluate")
    labels = np.arange(k)
    preds = probs.argmax(1)
    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    out: dict[str, Any] = {"n": int(len(targets)), "accuracy": float(accuracy_score(targets, preds))}
    if k >= 5:
        out["top5_accuracy"] = float(top_k_accuracy_score(targets, probs, k=5, labels=labels))
    present = s > 0
    out["f1_macro"] = float(f[present].mean())
    out["f1_weighted"] = float((f * s).sum() / max(1, s.sum()))
    out["precision_macro"] = float(p[present].mean())
    out["recall_macro"] = float(r[present].mean())
    out["roc_auc_ovr"] = _roc_auc(targets, probs)
    ap, out["average_precision_macro"], out["average_precision_micro"] = average_precision(targets, probs)
    out["ece"] = expected_calibration_error(probs, targets)
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
            "average_precision": ap[i]}
        for i, c in enumerate(classes)
    }
    out["confusion_matrix"] = confusion_matrix(targets, preds, labels=labels).tolist()
    out["classes"] = list(classes)
    return out


def quick_metrics(targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The per-epoch subset: accuracy and macro F1 over the classes present."""
    from sklearn.metrics import f1_score

    preds = probs.argmax(1)
    return {
        "accuracy": float((preds == targets).mean()) if len(targets) else 0.0,
        "f1_macro": float(f1_score(targets, preds, average="macro", zero_division=0)) if len(targets) else 0.0,
    }


__all__ = ["CalibrationBins", "average_precision", "calibration_bins", "compute_metrics", "expected_calibration_error",
           "one_hot", "quick_metrics"]
