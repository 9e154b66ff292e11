"""The files of ``tlkit tune`` and ``tlkit lr-find``: PNG plots of the lr range test and of the trials
(matplotlib, Agg, atomic writes), and the range test's curve as JSON.

Example:
    >>> plot_lr_find(result, "tune/lr_find.png")          # doctest: +SKIP
    >>> plot_trials(trials, "val_accuracy", "tune/trials.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from tlkit.core.io import write_json
from tlkit.train.lr_find import LRFindResult
from tlkit.train.plots import pyplot, save_figure

STATE_COLORS = {"complete": "tab:blue", "pruned": "tab:orange", "cut": "tab:gray", "failed": "tab:red"}


def plot_lr_find(result: LRFindResult, path: str | os.PathLike) -> Path:
    """Loss against learning rate (log x): raw mini-batch losses, the smoothed curve, the suggestion."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(result.lrs, result.raw_losses, color="0.75", lw=0.8, label="mini-batch loss")
    ax.plot(result.lrs, result.losses, color="tab:blue", label="smoothed")
    ax.axvline(result.suggestion, color="tab:red", ls="--", label=f"suggestion {result.suggestion:.2g} ({result.method})")
    finite = [v for v in result.losses + result.raw_losses if math.isfinite(v)]
    if finite and math.isfinite(result.losses[0]):  # the blow-up at the end would squash the curve
        ax.set_ylim(bottom=min(finite) * 0.95, top=max(result.losses[0] * 1.5, min(finite) * 1.1))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, Path(path))
    return Path(path)


def save_lr_find(result: LRFindResult, folder: str | os.PathLike) -> dict[str, Path]:
    """``lr_find.png`` (loss vs lr, suggestion marked) and ``lr_find.json`` (the curve) in ``folder``."""
    folder = Path(folder)
    write_json(folder / "lr_find.json", result.to_dict())
    return {"lr_find_plot": plot_lr_find(result, folder / "lr_find.png"), "lr_find_json": folder / "lr_find.json"}


#: the right panel's x axis: the first of these the trials searched (``--set`` fixes keys), and its scale
X_KEYS = (("lr", "log"), ("weight_decay", "log"), ("scale_min", "linear"))


def plot_trials(trials: Sequence, monitor: str, path: str | os.PathLike) -> Path:
    """Two panels: the validation metric of each trial (trial 0 = defaults), and the metric against lr
    (against weight decay or crop scale when lr was fixed with ``--set``; empty when all three were).

    ``trials`` are :class:`tlkit.train.tune_space.TrialRecord` (``number``, ``value``, ``state``, ``params``).
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    scored = [t for t in trials if t.value is not None]
    x_key, x_scale = next(((k, sc) for k, sc in X_KEYS if scored and all(k in t.params for t in scored)),
                          (None, "linear"))
    for state, color in STATE_COLORS.items():
        pts = [t for t in scored if t.state == state]
        if pts:
            left.scatter([t.number for t in pts], [t.value for t in pts], color=color, label=state, s=24)
            if x_key:
                right.scatter([t.params[x_key] for t in pts], [t.value for t in pts], color=color, label=state, s=24)
    if scored and scored[0].number == 0:
        left.axhline(scored[0].value, color="0.5", ls=":", lw=1, label="defaults (trial 0)")
    left.set_xlabel("trial")
    right.set_xscale(x_scale)
    right.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels collide on a narrow lr range
    right.set_xlabel(x_key.replace("_", " ") if x_key else "(lr, weight decay and crop scale all fixed)")
    for ax in (left, right):
        ax.set_ylabel(monitor.replace("_", " ") + " (best epoch)")
        ax.grid(alpha=0.3)
    if left.get_legend_handles_labels()[0]:  # nothing scored yet: no legend (and no warning)
        left.legend(fontsize=8)
    save_figure(fig, Path(path))
    return Path(path)


__all__ = ["plot_lr_find", "plot_trials", "save_lr_find"]
