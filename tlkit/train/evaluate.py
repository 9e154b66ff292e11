"""Classification metrics (scikit-learn) and the evaluation of a trained run on labeled images.

:func:`compute_metrics` is a pure function of targets ``[n]`` and probabilities ``[n, K]``;
:func:`evaluate_run` rebuilds a run's model, predicts a labeled folder and writes the metrics to
``RUN/evaluation.json``.

Example:
    >>> m = compute_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tlkit.errors import TlkitError
from tlkit.io import check_output_file, write_json

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


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


# --------------------------------------------------------------------------- running a model


@dataclass(frozen=True)
class Predictions:
    """Model outputs over a dataset (images that failed to decode are left out).

    Attributes:
        probs: ``[m, K]`` float32 softmax probabilities (multi-label: one sigmoid per class).
        targets: ``[m]`` int64 (-1 for unknown labels); multi-label: ``[m, K]`` float32 multi-hot (rows of -1
            for unknown labels).
        indices: ``[m]`` int64 dataset indices of the rows.
        failures: ``[(dataset index, reason)]`` of skipped files.
        loss: mean cross-entropy over the rows with a known label (``nan`` if none); multi-label: mean
            binary cross-entropy over their (image, class) pairs.
    """

    probs: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    failures: list[tuple[int, str]]
    loss: float


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    multilabel: bool = False,
) -> Predictions:
    """Run ``model`` (eval mode) over a loader of :class:`tlkit.data.Batch`.

    ``tta`` averages the probabilities of the image and its horizontal flip. ``forward``
    replaces ``model(x)`` (e.g. a head over cached features). ``multilabel``: probabilities are the
    sigmoid of each logit and the loss is binary cross-entropy.
    """
    from tlkit.runtime import autocast

    model.eval()
    fwd = forward or model
    act = torch.sigmoid if multilabel else (lambda z: z.softmax(-1))
    probs, targets, indices, failures = [], [], [], []
    loss_sum, loss_n = 0.0, 0
    for batch in loader:
        failures.extend(batch.failures)
        if batch.images is None or len(batch.indices) == 0:
            continue
        x = batch.images.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = fwd(x).float()
            p = act(logits)
            if tta:
                p = 0.5 * (p + act(fwd(torch.flip(x, dims=[3])).float()))
        y = batch.targets.to(device)
        if multilabel and y.ndim == 2:
            known = (y >= 0).all(1)
            if known.any():
                loss_sum += float(torch.nn.functional.binary_cross_entropy(
                    p[known].clamp(1e-7, 1 - 1e-7), y[known].float(), reduction="sum")) / p.shape[1]
                loss_n += int(known.sum())
        else:
            known = y >= 0
            if known.any():
                lp = torch.log(p[known].clamp_min(1e-12)) if tta else logits[known].log_softmax(-1)
                loss_sum += float(-lp.gather(1, y[known].unsqueeze(1)).sum())
                loss_n += int(known.sum())
        probs.append(p.cpu().numpy().astype(np.float32))
        targets.append(batch.targets.numpy())
        indices.append(batch.indices.numpy())
        if progress:
            progress(len(batch.indices) + len(batch.failures))
    k = getattr(model, "num_classes", 0) or 0
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
        targets=np.concatenate(targets) if targets else (np.zeros((0, k), np.float32) if multilabel
                                                         else np.zeros(0, np.int64)),
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        failures=failures,
        loss=loss_sum / loss_n if loss_n else float("nan"),
    )


def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike,
    *,
    which: str = "best",
    batch_size: int | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    tta: bool = False,
    out: str | os.PathLike | None = None,
    engine: str = "auto",
    progress: Callable[[int], None] | None = None,
    decode: str = "auto",
    label_delim: str = ";",
) -> dict[str, Any]:
    """Evaluate a trained run on a labeled folder or manifest; writes ``RUN/evaluation.json`` (or ``out``)
    and, beside it, the per-image predictions and plots (see :func:`write_evaluation_files`).

    A multi-label run reads ``data`` as a multi-label manifest (``label_delim`` between a cell's labels; an
    empty cell is an image with no label) and reports :func:`tlkit.train.multilabel.multilabel_metrics` at the
    run's stored thresholds (:func:`write_multilabel_evaluation_files`).

    ``engine``: ``auto`` | ``torch`` | ``openvino`` (:func:`tlkit.engines.create_engine`); ``batch_size``
    and ``decode``: see :meth:`tlkit.train.predictor.Predictor.loader`.

    Raises:
        TlkitError: the data has labels the model does not know, or no labels at all.

    Returns:
        :func:`compute_metrics` output plus ``loss``, ``data``, ``checkpoint``, ``skipped``.
    """
    from tlkit.data import scan_images, write_skipped
    from tlkit.train.predictor import Predictor

    run = Path(run)
    if out is not None:
        check_output_file(out, example=EVALUATION_FILE)
    predictor = Predictor.load(run, which=which, device=device, precision=precision, engine=engine)
    classes = predictor.classes
    if predictor.multilabel:
        return _evaluate_multilabel(predictor, run, data, which=which, batch_size=batch_size, workers=workers,
                                    tta=tta, out=out, progress=progress, decode=decode, label_delim=label_delim)
    source = scan_images(data, labeled=True, task="single", label_delim=label_delim)
    _check_labels(source.records, classes, data, run)
    loader = predictor.loader(source.records, class_to_idx={c: i for i, c in enumerate(classes)},
                              batch_size=batch_size, workers=workers, decode=decode)
    preds = predictor.predict(loader, tta=tta, progress=progress)
    metrics = compute_metrics(preds.targets, preds.probs, classes)
    metrics.update(loss=preds.loss, data=str(Path(data).resolve()), checkpoint=which,
                   skipped=len({i for i, _ in preds.failures}))
    target = Path(out) if out is not None else run / EVALUATION_FILE
    write_json(target, metrics)
    if preds.failures:
        write_skipped(target.with_name(target.stem + "_skipped.csv"), source.records, preds.failures)
    write_evaluation_files(target, preds, [source.records[i] for i in preds.indices], classes, metrics)
    return metrics


def _evaluate_multilabel(predictor, run: Path, data, *, which: str, batch_size, workers, tta: bool, out,
                         progress, decode: str, label_delim: str) -> dict[str, Any]:
    from tlkit.data import scan_images, write_skipped
    from tlkit.train.multilabel import multilabel_metrics

    classes = predictor.classes
    source = scan_images(data, labeled=True, task="multilabel", label_delim=label_delim)
    _check_labels(source.records, classes, data, run)
    loader = predictor.loader(source.records, class_to_idx={c: i for i, c in enumerate(classes)},
                              batch_size=batch_size, workers=workers, decode=decode)
    preds = predictor.predict(loader, tta=tta, progress=progress)
    if not len(preds.targets):
        raise TlkitError(f"{data}: no image could be decoded; see the skipped list")
    metrics = multilabel_metrics(preds.targets, preds.probs, classes, predictor.thresholds)
    metrics.update(task="multilabel", loss=preds.loss, data=str(Path(data).resolve()), checkpoint=which,
                   skipped=len({i for i, _ in preds.failures}))
    target = Path(out) if out is not None else run / EVALUATION_FILE
    write_json(target, metrics)
    if preds.failures:
        write_skipped(target.with_name(target.stem + "_skipped.csv"), source.records, preds.failures)
    write_multilabel_evaluation_files(target, preds, [source.records[i] for i in preds.indices], classes,
                                      predictor.thresholds, label_delim)
    return metrics


def write_multilabel_evaluation_files(target: Path, preds: Predictions, records: Sequence, classes: Sequence[str],
                                      thresholds: Sequence[float], delim: str = ";") -> None:
    """Multi-label twin of :func:`write_evaluation_files`: ``STEM_predictions.csv`` (true and predicted label
    sets), ``STEM_probs.npy``, and in ``plots/``: ``STEM_roc.png``, ``STEM_pr.png``, ``STEM_pr_per_class.png``."""
    from tlkit.train.reports import write_multilabel_curves, write_multilabel_predictions

    stem, plots = target.stem, target.parent / "plots"
    write_multilabel_predictions(target.with_name(f"{stem}_predictions.csv"), target.with_name(f"{stem}_probs.npy"),
                                 [r.rel for r in records], preds.targets, preds.probs, classes, thresholds, delim)
    write_multilabel_curves(plots, preds.targets, preds.probs, classes, thresholds, prefix=f"{stem}_")


def _check_labels(records: Sequence, classes: Sequence[str], data, run: Path) -> None:
    """Refuse labels the model does not know, and an empty data set."""
    unknown = sorted({c for r in records for c in ((r.label,) if r.label is not None else (r.labels or ()))}
                     - set(classes))
    if unknown:
        raise TlkitError(
            f"{data}: classes {', '.join(map(repr, unknown))} are unknown to the model in {run} "
            f"(it knows: {', '.join(classes)}); remove those folders or evaluate another run"
        )
    if not records:
        raise TlkitError(f"{data}: no images found to evaluate")


def write_evaluation_files(target: Path, preds: Predictions, records: Sequence, classes: Sequence[str],
                           metrics: dict[str, Any]) -> None:
    """Next to the metrics file ``target`` (``STEM.json``): ``STEM_predictions.csv`` and ``STEM_probs.npy``;
    in the ``plots/`` folder beside it: ``STEM_confusion_matrix.png``, ``STEM_roc.png``, ``STEM_pr.png``,
    ``STEM_reliability.png`` and ``STEM_top_losses.png``.

    Args:
        preds: the predictions, all with known labels; ``records[i]`` is the image of row ``i``.
    """
    from tlkit.train.plots import plot_confusion_matrix
    from tlkit.train.reports import write_curves, write_predictions, write_top_losses

    stem, plots = target.stem, target.parent / "plots"
    write_predictions(target.with_name(f"{stem}_predictions.csv"), target.with_name(f"{stem}_probs.npy"),
                      [r.rel for r in records], preds.targets, preds.probs, classes)
    plot_confusion_matrix(metrics["confusion_matrix"], classes, plots / f"{stem}_confusion_matrix.png")
    write_curves(plots, preds.targets, preds.probs, classes, prefix=f"{stem}_")
    write_top_losses(plots / f"{stem}_top_losses.png", [r.path for r in records], preds.targets, preds.probs,
                     classes)


__all__ = [
    "EVALUATION_FILE",
    "CalibrationBins",
    "Predictions",
    "average_precision",
    "calibration_bins",
    "compute_metrics",
    "evaluate_run",
    "expected_calibration_error",
    "one_hot",
    "predict_loader",
    "quick_metrics",
    "write_evaluation_files",
]
