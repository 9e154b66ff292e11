"""What a run folder holds besides checkpoints: config, classes, split, metrics, log, plots, TensorBoard.

All writes are atomic; only the main process (rank 0) calls these.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from tlkit.io import write_csv, write_json
from tlkit.train.config import TrainConfig, save_config

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
CLASSES = "classes.json"
SPLIT = "split.csv"
METRICS = "metrics.json"
LOG = "log.csv"
SKIPPED = "skipped.csv"
PLOTS = "plots"


def write_run_header(out: Path, cfg: TrainConfig, classes: Sequence[str], train: Sequence, val: Sequence,
                     val_origin: str) -> None:
    """``config.yaml`` (resolved), ``classes.json``, ``split.csv`` (path, label, split)."""
    save_config(cfg, out / CONFIG)
    write_json(out / CLASSES, list(classes))
    rows = [(r.rel, r.label, "train") for r in train]
    rows += [(str(r.path) if val_origin == "folder" else r.rel, r.label, "val") for r in val]
    write_csv(out / SPLIT, ("path", "label", "split"), rows)


def write_history(out: Path, history: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """``metrics.json`` ({"history": [...], "best": {...}}) and ``log.csv`` (one row per epoch)."""
    write_json(out / METRICS, {"history": history, "best": best})
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    write_csv(out / LOG, keys, [[row.get(k, "") for k in keys] for row in history])


def write_plots(out: Path, history: list[dict[str, Any]], best: dict[str, Any] | None,
                classes: Sequence[str]) -> None:
    """``plots/loss.png``, ``plots/accuracy.png`` and the best epoch's validation confusion matrix."""
    from tlkit.train.plots import plot_confusion_matrix, plot_history

    try:
        plot_history(history, out / PLOTS)
        if best and best.get("val_metrics"):
            plot_confusion_matrix(best["val_metrics"]["confusion_matrix"], classes, out / PLOTS / "confusion_matrix.png")
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a training run
        log.warning("plots not written: %s", e)


class TensorBoardLog:
    """Scalars per epoch to ``RUN/tb`` when ``tensorboard`` is importable; otherwise does nothing."""

    def __init__(self, out: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(out / "tb"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["CLASSES", "CONFIG", "LOG", "METRICS", "PLOTS", "SKIPPED", "SPLIT", "TensorBoardLog",
           "write_history", "write_plots", "write_run_header"]
