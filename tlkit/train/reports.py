"""Evaluation pictures and tables of one set of predictions with known labels.

:func:`write_curves` draws the ROC, precision-recall and reliability figures (``finetune`` for the best
epoch's validation predictions, ``evaluate`` for the test images); :func:`write_top_losses` draws the
most confidently wrong images (fastai's ``plot_top_losses``); :func:`write_predictions` keeps the
per-image predictions from which every metric can be recomputed.

Example:
    >>> write_curves("run/plots", targets, probs, ["cat", "dog"], prefix="evaluation_")  # doctest: +SKIP
    [PosixPath('run/plots/evaluation_roc.png'), ...]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from tlkit.core.io import save_npy, write_csv

if TYPE_CHECKING:
    from tlkit.train.plots import GridCell

log = logging.getLogger(__name__)

#: Images in a top-losses or sample-predictions grid.
GRID_IMAGES = 16


def sample_losses(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``[n]`` cross-entropy of each row: ``-log probs[i, targets[i]]`` (probabilities clipped at 1e-12)."""
    return -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None))


def top_losses(targets: np.ndarray, probs: np.ndarray, n: int = GRID_IMAGES) -> np.ndarray:
    """Row indices of the ``n`` highest losses, highest first: confident mistakes come before doubtful ones.

    Example:
        >>> top_losses(np.array([0, 1, 1]), np.array([[.9, .1], [.8, .2], [.4, .6]]), n=2).tolist()
        [1, 2]
    """
    return np.argsort(-sample_losses(targets, probs), kind="stable")[:n]


def write_curves(folder: str | os.PathLike, targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], *,
                 prefix: str = "") -> list[Path]:
    """``{prefix}roc.png``, ``{prefix}pr.png`` and ``{prefix}reliability.png`` in ``folder``.

    Args:
        targets: ``[n]`` int class indices (all known).
        probs: ``[n, K]`` probabilities.
        classes: the K class names.

    Returns:
        The files written; a figure that cannot be drawn (ROC with a single class present) is
        left out with a warning.
    """
    from tlkit.train.metrics import calibration_bins
    from tlkit.train.plots import plot_reliability

    folder = Path(folder)
    written = _roc_pr(folder, targets, probs, classes, prefix)
    written.append(plot_reliability(calibration_bins(probs, targets), folder / f"{prefix}reliability.png"))
    return written


def write_multilabel_curves(folder: str | os.PathLike, targets: np.ndarray, probs: np.ndarray,
                            classes: Sequence[str], thresholds: Sequence[float] | None, *,
                            prefix: str = "") -> list[Path]:
    """Multi-label figures in ``folder``: ``{prefix}roc.png`` and ``{prefix}pr.png`` (every class's curve, micro
    and macro averages) and ``{prefix}pr_per_class.png`` (one precision-recall panel per class, its operating
    point at ``thresholds`` marked). ``targets [n, K]`` multi-hot, ``probs [n, K]`` sigmoid probabilities."""
    from tlkit.train.plots import plot_pr_per_class

    folder = Path(folder)
    written = _roc_pr(folder, targets, probs, classes, prefix)
    written.append(plot_pr_per_class(targets, probs, classes, thresholds, folder / f"{prefix}pr_per_class.png"))
    return written


def _roc_pr(folder: Path, targets: np.ndarray, probs: np.ndarray, classes: Sequence[str], prefix: str) -> list[Path]:
    """``{prefix}roc.png`` and ``{prefix}pr.png`` (single- or multi-label targets); a figure that cannot be
    drawn is left out with a warning."""
    from tlkit.train.plots import plot_curves, pr_curves, roc_curves

    written = []
    for kind, curves in (("roc", roc_curves), ("pr", pr_curves)):
        try:
            written.append(plot_curves(*curves(targets, probs, classes), folder / f"{prefix}{kind}.png", kind=kind))
        except ValueError as e:
            log.warning("%s%s.png not written: %s", prefix, kind, e)
    return written


def prediction_cells(paths: Sequence[Path], targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                     rows: Sequence[int], *, loss: bool) -> list[GridCell]:
    """Grid cells for ``rows``: ``true / predicted``, the predicted probability and (``loss``) the loss."""
    from tlkit.train.plots import GridCell

    losses = sample_losses(targets, probs)
    cells = []
    for i in rows:
        pred = int(probs[i].argmax())
        caption = f"{classes[targets[i]]} / {classes[pred]}\np={probs[i, pred]:.2f}"
        cells.append(GridCell(Path(paths[i]), caption + (f"  loss={losses[i]:.2f}" if loss else ""),
                              pred == targets[i]))
    return cells


def write_top_losses(path: str | os.PathLike, paths: Sequence[Path], targets: np.ndarray, probs: np.ndarray,
                     classes: Sequence[str], n: int = GRID_IMAGES) -> Path:
    """A grid of the ``n`` images with the highest loss, captioned ``given / predicted``, probability, loss."""
    from tlkit.train.plots import plot_image_grid

    rows = top_losses(targets, probs, n)
    cells = prediction_cells(paths, targets, probs, classes, rows, loss=True)
    return plot_image_grid(cells, f"top losses: given / predicted, probability, loss ({len(rows)} of "
                                  f"{len(targets)})", path)


def write_predictions(csv_path: str | os.PathLike, npy_path: str | os.PathLike, rels: Sequence[str],
                      targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> None:
    """One CSV row per image (``path, label, predicted, probability, loss``) and the ``[n, K]`` probabilities
    as float32 ``.npy`` in the same row order (the CSV stays small for many classes)."""
    preds = probs.argmax(1)
    losses = sample_losses(targets, probs)
    rows = [(rel, classes[t], classes[p], f"{probs[i, p]:.6f}", f"{losses[i]:.6f}")
            for i, (rel, t, p) in enumerate(zip(rels, targets, preds))]
    write_csv(csv_path, ("path", "label", "predicted", "probability", "loss"), rows)
    save_npy(npy_path, np.asarray(probs, dtype=np.float32))


def write_multilabel_predictions(csv_path: str | os.PathLike, npy_path: str | os.PathLike, rels: Sequence[str],
                                 targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                                 thresholds: Sequence[float], delim: str = ";") -> None:
    """Multi-label: one CSV row per image (``path, labels, predicted, errors``: true and predicted label sets
    joined by ``delim``, and how many of the K decisions are wrong) and the ``[n, K]`` probabilities as float32
    ``.npy`` in the same row order."""
    from tlkit.train.multilabel import predict_sets

    y = np.asarray(targets) > 0.5
    pred = predict_sets(probs, thresholds)
    names = np.asarray(classes, dtype=object)
    rows = [(rel, delim.join(names[t]), delim.join(names[p]), int((t != p).sum()))
            for rel, t, p in zip(rels, y, pred)]
    write_csv(csv_path, ("path", "labels", "predicted", "errors"), rows)
    save_npy(npy_path, np.asarray(probs, dtype=np.float32))


__all__ = ["GRID_IMAGES", "prediction_cells", "sample_losses", "top_losses", "write_curves", "write_multilabel_curves",
           "write_multilabel_predictions", "write_predictions", "write_top_losses"]
