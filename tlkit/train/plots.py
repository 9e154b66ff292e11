"""PNG plots of a run (matplotlib, Agg backend): loss and accuracy curves, confusion matrix, ROC and
precision-recall curves, reliability diagram, image grids (top losses, sample predictions).

Each figure is rendered to bytes and written atomically; the ``*_figure`` functions return the open
figure instead (for TensorBoard).

Example:
    >>> plot_history([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9}], "run/plots")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tlkit.core.io import save_png

#: Above this many classes the legend names only the averages and the classes with the lowest area.
LEGEND_CLASSES = 10


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path`` (atomic write), as every tlkit plot is saved."""
    save_png(fig, path, dpi=110, bbox_inches="tight")


def plot_history(history: Sequence[dict[str, Any]], folder: str | os.PathLike) -> list[Path]:
    """``loss.png`` (train/val loss) and ``accuracy.png`` (train/val/EMA accuracy) per epoch."""
    plt = pyplot()
    folder = Path(folder)
    written = []
    epochs = [h["epoch"] for h in history]
    for name, keys in (
        ("loss", ("train_loss", "val_loss", "ema_val_loss")),
        ("accuracy", ("train_accuracy", "val_accuracy", "ema_val_accuracy")),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key in keys:
            pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    return written


def plot_map_history(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """``map.png``: validation mAP (macro and micro; EMA's when present) per epoch of a multi-label run."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("val_map", "val_map_micro", "ema_val_map"):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="mAP")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, Path(path))
    return Path(path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Confusion matrix (rows = true class), counts written in the cells up to 30 classes."""
    save_figure(confusion_matrix_figure(matrix, classes), Path(path))
    return Path(path)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str]):
    """The open figure of :func:`plot_confusion_matrix`."""
    plt = pyplot()
    cm = np.asarray(matrix)
    k = len(classes)
    side = min(12, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(cm, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        top = cm.max() or 1
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig




# --------------------------------------------------------------------------- ROC and precision-recall


@dataclass(frozen=True)
class Curve:
    """One line of a ROC or precision-recall figure: ``x``, ``y`` and the area in its legend label."""

    label: str
    x: np.ndarray
    y: np.ndarray
    area: float


def roc_curves(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[list[Curve], list[Curve]]:
    """One-vs-rest ROC curves of the classes present in ``targets [n]`` (``probs [n, K]``).

    Returns:
        ``(per_class, [micro, macro])``: micro pools every (image, class) pair; macro averages the
        per-class true positive rates on the union of their false positive rates.
    """
    from sklearn.metrics import auc, roc_curve

    from tlkit.train.metrics import one_hot

    y = one_hot(targets, len(classes))
    per = []
    for c in _curve_classes(y, negatives=True):
        fpr, tpr, _ = roc_curve(y[:, c], probs[:, c])
        per.append(Curve(classes[c], fpr, tpr, float(auc(fpr, tpr))))
    fpr, tpr, _ = roc_curve(y.ravel(), probs.ravel())
    grid = np.unique(np.concatenate([cv.x for cv in per]))
    mean_tpr = np.mean([np.interp(grid, cv.x, cv.y) for cv in per], axis=0)
    return per, [Curve("micro-average", fpr, tpr, float(auc(fpr, tpr))),
                 Curve("macro-average", grid, mean_tpr, float(auc(grid, mean_tpr)))]


def pr_curves(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[list[Curve], list[Curve]]:
    """One-vs-rest precision-recall curves (x = recall) of the classes present in ``targets``.

    Areas are scikit-learn's average precision, as in :func:`tlkit.train.metrics.average_precision`;
    the macro curve averages the per-class interpolated precisions (the best precision at this recall
    or above) at 101 recall levels.
    """
    from sklearn.metrics import precision_recall_curve

    from tlkit.train.metrics import average_precision, one_hot

    y = one_hot(targets, len(classes))
    ap, macro, micro = average_precision(targets, probs)
    per = []
    for c in _curve_classes(y, negatives=False):
        precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
        per.append(Curve(classes[c], recall, precision, ap[c]))
    precision, recall, _ = precision_recall_curve(y.ravel(), probs.ravel())
    grid = np.linspace(0.0, 1.0, 101)
    mean_p = np.mean([interpolated_precision(cv.x, cv.y, grid) for cv in per], axis=0)
    return per, [Curve("micro-average", recall, precision, micro), Curve("macro-average", grid, mean_p, macro)]


def interpolated_precision(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The highest precision reached at each ``grid`` recall or above (a non-increasing curve).

    Example:
        >>> interpolated_precision(np.array([1., .5, 0.]), np.array([.5, 1., 1.]), np.array([0., .6])).tolist()
        [1.0, 0.5]
    """
    order = np.argsort(recall, kind="stable")
    r, envelope = recall[order], np.maximum.accumulate(precision[order][::-1])[::-1]
    return envelope[np.minimum(np.searchsorted(r, grid, side="left"), len(r) - 1)]


def _curve_classes(y: np.ndarray, *, negatives: bool) -> list[int]:
    """Classes with a curve: at least one positive, and for ROC (``negatives``) at least one negative."""
    present = [c for c in range(y.shape[1]) if y[:, c].any() and (not negatives or not y[:, c].all())]
    if not present:
        raise ValueError("every image has the same label: no ROC curve without a second class")
    return present


def plot_curves(per_class: Sequence[Curve], averages: Sequence[Curve], path: str | os.PathLike, *, kind: str) -> Path:
    """A ROC (``kind="roc"``) or precision-recall (``kind="pr"``) figure, readable for many classes.

    Per-class lines are thin, the averages bold; above :data:`LEGEND_CLASSES` classes the legend names
    the averages and the :data:`LEGEND_CLASSES` classes with the lowest area only.
    """
    plt = pyplot()
    xlabel, ylabel, area = {"roc": ("false positive rate", "true positive rate", "AUC"),
                            "pr": ("recall", "precision", "AP")}[kind]
    fig, ax = plt.subplots(figsize=(6, 5))
    named = {id(cv) for cv in sorted(per_class, key=lambda cv: cv.area)[:LEGEND_CLASSES]}
    many = len(per_class) > LEGEND_CLASSES
    for cv in per_class:
        label = f"{cv.label} ({area} {cv.area:.3f})" if id(cv) in named else None
        ax.plot(cv.x, cv.y, lw=0.8, alpha=0.5 if many else 0.8, label=label,
                drawstyle="steps-post" if kind == "pr" else "default")
    for cv, style in zip(averages, ("--", "-")):
        ax.plot(cv.x, cv.y, lw=2.5, ls=style, color="black" if style == "-" else "tab:red",
                label=f"{cv.label} ({area} {cv.area:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], lw=0.8, ls=":", color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel)
    title = f"{'ROC' if kind == 'roc' else 'precision-recall'}, {len(per_class)} classes"
    ax.set_title(title + (f" (legend: the {LEGEND_CLASSES} lowest {area})" if many else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes: no line hidden
    save_figure(fig, Path(path))
    return Path(path)


def plot_pr_per_class(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      thresholds: Sequence[float] | None, path: str | os.PathLike, *, cols: int = 4) -> Path:
    """One precision-recall panel per class of a multi-label model (``targets [n, K]`` multi-hot, ``probs
    [n, K]``), its AP in the title and the operating point at ``thresholds[k]`` marked; a class without a
    positive gets an empty panel saying so."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = pyplot()
    y = np.asarray(targets) > 0.5
    k = len(classes)
    rows = max(1, -(-k // cols))
    fig, axes = plt.subplots(rows, min(cols, k), figsize=(2.6 * min(cols, k), 2.4 * rows), squeeze=False)
    for c, ax in enumerate(axes.ravel()):
        if c >= k:
            ax.axis("off")
            continue
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if not y[:, c].any():
            ax.set_title(f"{classes[c]}: no positive", fontsize=8)
            continue
        precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
        ax.plot(recall, precision, lw=1.2, drawstyle="steps-post")
        ap = average_precision_score(y[:, c], probs[:, c])
        if thresholds is not None:
            pred = probs[:, c] >= thresholds[c]
            tp = float((pred & y[:, c]).sum())
            ax.plot(tp / y[:, c].sum(), tp / max(1, pred.sum()), "o", color="tab:red", ms=5)
            ax.set_title(f"{classes[c]}: AP {ap:.3f}, t={thresholds[c]:.2f}", fontsize=8)
        else:
            ax.set_title(f"{classes[c]}: AP {ap:.3f}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.supxlabel("recall", fontsize=9)
    fig.supylabel("precision", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)


def plot_reliability(bins, path: str | os.PathLike) -> Path:
    """Reliability diagram of :class:`tlkit.train.metrics.CalibrationBins`: accuracy per confidence bin
    against the diagonal, the share of predictions per bin below, the ECE in the title."""
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    width = np.diff(bins.edges)
    filled = bins.counts > 0
    ax.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
           edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(bins.edges[:-1][filled], (bins.confidence - bins.accuracy)[filled], bottom=bins.accuracy[filled],
           width=width[filled], align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"reliability (ECE {bins.ece:.4f}, {len(width)} bins)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(bins.edges[:-1], bins.counts / max(1, bins.counts.sum()), width=width, align="edge", color="grey")
    hist.set(xlabel="top-1 confidence", ylabel="share")
    save_figure(fig, Path(path))
    return Path(path)


# --------------------------------------------------------------------------- image grids


@dataclass(frozen=True)
class GridCell:
    """One image of a grid: the file, the caption under it, whether the prediction was right."""

    path: Path
    caption: str
    correct: bool


def image_grid_figure(cells: Sequence[GridCell], title: str, *, cols: int = 4, thumb: int = 128):
    """An open figure of image thumbnails with captions (green: right, red: wrong).

    A file that no longer decodes shows as an empty cell captioned with the reason.
    """
    from tlkit.data.decode import load_image

    plt = pyplot()
    cols = max(1, min(cols, len(cells)))
    rows = max(1, -(-len(cells) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cell in zip(axes.ravel(), cells):
        caption = cell.caption
        try:
            img = load_image(cell.path, size_hint=thumb)
            img.thumbnail((thumb, thumb))
            ax.imshow(np.asarray(img))
        except Exception as e:  # noqa: BLE001 - one unreadable file must not lose the grid
            caption = f"{caption}\n(unreadable: {e})"
        ax.set_title(caption, fontsize=7, color="tab:green" if cell.correct else "tab:red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_grid(cells: Sequence[GridCell], title: str, path: str | os.PathLike) -> Path:
    """:func:`image_grid_figure` written to ``path``."""
    save_figure(image_grid_figure(cells, title), Path(path))
    return Path(path)


__all__ = ["Curve", "GridCell", "LEGEND_CLASSES", "confusion_matrix_figure", "image_grid_figure",
           "interpolated_precision", "plot_confusion_matrix", "plot_curves", "plot_history", "plot_image_grid",
           "plot_reliability", "pr_curves", "pyplot", "roc_curves", "save_figure"]
