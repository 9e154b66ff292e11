"""PNG plots of a run (matplotlib, Agg backend): loss and accuracy curves, confusion matrix.

Each figure is rendered to bytes and written atomically.

Example:
    >>> plot_history([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9}], "run/plots")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from tlkit.io import save_png


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    save_png(fig, path, dpi=110, bbox_inches="tight")


def plot_history(history: Sequence[dict[str, Any]], folder: str | os.PathLike) -> list[Path]:
    """``loss.png`` (train/val loss) and ``accuracy.png`` (train/val/EMA accuracy) per epoch."""
    plt = _figure()
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
        _save(fig, folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    return written


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Confusion matrix (rows = true class), counts written in the cells up to 30 classes."""
    import numpy as np

    plt = _figure()
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
    _save(fig, Path(path))
    return Path(path)


__all__ = ["plot_confusion_matrix", "plot_history"]
