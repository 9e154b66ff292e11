"""What a run folder holds besides checkpoints: config, classes, split, metrics, log, plots, TensorBoard.

All writes are atomic; only the main process (rank 0) calls these.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from tlkit.core.io import write_csv, write_json
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
                     val_origin: str, chosen: dict[str, Any] | None = None) -> None:
    """``config.yaml`` (resolved; ``chosen``: batch size, lr rule, decoding path), ``classes.json``,
    ``split.csv`` (path, label, split; multi-label: path, labels joined by ``;``, split)."""
    save_config(cfg, out / CONFIG, chosen)
    write_json(out / CLASSES, list(classes))
    multilabel = any(r.labels is not None for r in train)

    def lab(r):  # multi-label: the label set joined by ';' (tlkit's default --label-delim)
        return ";".join(r.labels) if multilabel else r.label

    rows = [(r.rel, lab(r), "train") for r in train]
    rows += [(str(r.path) if val_origin == "folder" else r.rel, lab(r), "val") for r in val]
    write_csv(out / SPLIT, ("path", "labels" if multilabel else "label", "split"), rows)


def write_history(out: Path, history: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """``metrics.json`` ({"history": [...], "best": {...}}) and ``log.csv`` (one row per epoch)."""
    write_json(out / METRICS, {"history": history, "best": best})
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    write_csv(out / LOG, keys, [[row.get(k, "") for k in keys] for row in history])


def write_plots(out: Path, history: list[dict[str, Any]], best: dict[str, Any] | None,
                classes: Sequence[str], best_preds=None, *, multilabel: bool = False) -> None:
    """``plots/loss.png``, ``plots/accuracy.png``, the best epoch's validation confusion matrix and, when
    ``best_preds`` (that epoch's validation :class:`~tlkit.train.predictions.Predictions`) is given, its
    ``roc.png``, ``pr.png`` and ``reliability.png``.

    Multi-label: ``loss.png``, ``accuracy.png`` (label accuracy), ``map.png`` (validation mAP per epoch) and,
    with ``best_preds``, ``roc.png``, ``pr.png`` and ``pr_per_class.png`` at the best epoch's thresholds."""
    from tlkit.train.plots import plot_confusion_matrix, plot_history, plot_map_history
    from tlkit.train.reports import write_curves, write_multilabel_curves

    try:
        if multilabel:
            plot_history(history, out / PLOTS)
            plot_map_history(history, out / PLOTS / "map.png")
            if best_preds is not None and len(best_preds.targets):
                write_multilabel_curves(out / PLOTS, best_preds.targets, best_preds.probs, classes,
                                        (best or {}).get("thresholds"))
            return
        plot_history(history, out / PLOTS)
        if best and best.get("val_metrics"):
            plot_confusion_matrix(best["val_metrics"]["confusion_matrix"], classes, out / PLOTS / "confusion_matrix.png")
        if best_preds is not None and len(best_preds.targets):
            write_curves(out / PLOTS, best_preds.targets, best_preds.probs, classes)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a training run
        log.warning("plots not written: %s", e)


TB = "tb"


def _tag(key: str) -> str:
    """TensorBoard tag of a history key: ``val_accuracy`` -> ``val/accuracy``, ``lr`` -> ``epoch/lr``."""
    for prefix in ("ema_val_", "val_", "train_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"epoch/{key}"


def _hparam(value: Any) -> int | float | str | bool:
    """A config value as TensorBoard's hparams accept it (``None`` and lists as text)."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class TensorBoardLog:
    """``RUN/tb`` for TensorBoard when ``enabled`` and ``tensorboard`` is importable; otherwise does nothing.

    Scalars per optimizer step (``step/train_loss``, ``step/lr``) and per epoch (every number of a
    history row: ``train/loss``, ``val/loss``, ``val/accuracy``, ``val/f1_macro``, ...); at the end the
    confusion matrix and sample predictions as images and the config with the best metrics as hparams.
    """

    def __init__(self, out: Path, enabled: bool = True):
        self.writer = None
        self._steps: list[tuple[int, Any, float]] = []  # (step, loss, lr) since the last epoch was logged
        if not enabled:
            return
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard logging off: the tensorboard package is not installed (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(out / TB))

    def log_step(self, step: int, loss, lr: float) -> None:
        """The batch loss (this process's: a number or a 0-d tensor) and the learning rate of optimizer
        step ``step``. Kept until the epoch is logged (:meth:`log`), so a step never waits to read a loss
        off the GPU."""
        if self.writer is not None:
            self._steps.append((step, loss, lr))

    def _write_steps(self) -> None:
        for step, loss, lr in self._steps:
            self.writer.add_scalar("step/train_loss", float(loss), step)
            self.writer.add_scalar("step/lr", lr, step)
        self._steps.clear()

    def log(self, row: dict[str, Any]) -> None:
        """The epoch's steps, then every number of its history row, at step ``row["epoch"]``."""
        if self.writer is None:
            return
        self._write_steps()
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(_tag(key), value, row["epoch"])
        self.writer.flush()

    def log_figure(self, tag: str, make_figure, step: int) -> None:
        """``make_figure()`` (a matplotlib figure, only drawn when logging is on) as image ``tag``."""
        if self.writer is None:
            return
        try:
            self.writer.add_figure(tag, make_figure(), step)
        except Exception as e:  # noqa: BLE001 - a picture must not lose a training run
            log.warning("TensorBoard image %s not written: %s", tag, e)

    def log_hparams(self, config: dict[str, Any], best: dict[str, Any] | None) -> None:
        """The run's config against the best epoch's metrics (TensorBoard's HParams tab)."""
        if self.writer is None or not best:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/best_{k}": float(best[k]) for k in ("val_accuracy", "val_map", "val_f1_macro", "val_loss",
                                                                "epoch")
                   if isinstance(best.get(k), (int, float))}
        for summary in hparams({k: _hparam(v) for k, v in config.items()}, metrics):
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value)

    def close(self) -> None:
        if self.writer is not None:
            self._write_steps()
            self.writer.close()


def log_final(tb: TensorBoardLog, cfg: TrainConfig, best: dict[str, Any] | None, classes: Sequence[str],
              preds, records: Sequence | None) -> None:
    """The end of a run in TensorBoard: the best epoch's validation confusion matrix, a grid of sample
    validation predictions (``preds``; ``records[i]`` is the image of dataset index ``i``) and the hparams.
    """
    from tlkit.train.plots import confusion_matrix_figure, image_grid_figure
    from tlkit.train.reports import GRID_IMAGES, prediction_cells

    epoch = int(best["epoch"]) if best else 0
    if best and "thresholds" in best:  # multi-label: no confusion matrix, no one-label prediction grid
        tb.log_hparams(cfg.to_dict(), best)
        return
    if best and best.get("val_metrics"):
        tb.log_figure("val/confusion_matrix", lambda: confusion_matrix_figure(
            best["val_metrics"]["confusion_matrix"], classes), epoch)
    if preds is not None and records is not None and len(preds.targets):
        paths = [records[i].path for i in preds.indices]
        rows = range(min(GRID_IMAGES, len(paths)))
        tb.log_figure("val/predictions", lambda: image_grid_figure(
            prediction_cells(paths, preds.targets, preds.probs, classes, rows, loss=False),
            "validation: true / predicted, probability"), epoch)
    tb.log_hparams(cfg.to_dict(), best)


__all__ = ["CLASSES", "CONFIG", "LOG", "METRICS", "PLOTS", "SKIPPED", "SPLIT", "TB", "TensorBoardLog", "log_final",
           "write_history", "write_plots", "write_run_header"]
