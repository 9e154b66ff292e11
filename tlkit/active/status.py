"""Project status: rounds, labels per class, pending queries, validation per round, learning curve."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.active.labeltext import SKIP_LABEL, split_labels
from tlkit.active.learner import Validation
from tlkit.active.project import Project
from tlkit.active.stopping import stopping_hint
from tlkit.core.io import read_json
from tlkit.data import class_imbalance

log = logging.getLogger(__name__)


@dataclass
class ProjectStatus:
    root: Path
    classes: tuple[str, ...]
    pool: int
    labeled_per_class: dict[str, int]
    unlabelable: int
    pending: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    curve_png: Path | None = None
    imbalance: str | None = None  # one-line hint when the largest class has > 10x the labels of the smallest
    stopping: str | None = None  # do more labels still pay? (tlkit.active.stopping)
    task: str = "single"  # multilabel: labeled_per_class counts images with each class present
    labeled_images: int | None = None  # multi-label: images with a label set (empty sets included)

    @property
    def labeled(self) -> int:
        """Labeled images (single-label: the sum over classes)."""
        return self.labeled_images if self.labeled_images is not None else sum(self.labeled_per_class.values())

    def to_dict(self) -> dict[str, Any]:
        out = {
            "project": str(self.root), "classes": list(self.classes), "pool": self.pool,
            "labeled": self.labeled, "labeled_per_class": self.labeled_per_class,
            "unlabelable": self.unlabelable, "pending": self.pending, "rounds": self.rounds,
            "learning_curve": str(self.curve_png) if self.curve_png else None, "imbalance": self.imbalance,
            "stopping": self.stopping,
        }
        if self.task != "single":
            out["task"] = self.task
        return out


def project_status(project_dir: str | Path, *, plot: bool = True) -> ProjectStatus:
    """Summarise a project; with ``plot``, write ``learning_curve.png`` (validation vs labels)."""
    project = Project.open(project_dir)
    labels = project.labels()
    per_class = {c: 0 for c in project.config.classes}
    for lab in labels.values():
        if lab != SKIP_LABEL:
            for c in split_labels(lab) if project.multilabel else (lab,):
                per_class[c] = per_class.get(c, 0) + 1
    rounds = []
    for n in project.rounds():
        path = project.round_dir(n) / "metrics.json"
        m = read_json(path) if path.exists() else {}
        val = Validation.from_metrics(m)
        rounds.append({"round": n, "labeled": m.get("labeled"), "selected": m.get("selected"),
                       "strategy": m.get("strategy"), "train": m.get("train"),
                       "learner": m.get("learner") or m.get("train"), "pseudo_labels": m.get("pseudo_labels"),
                       "learner_reason": (m.get("learner_choice") or {}).get("reason"),
                       "val_accuracy": val.accuracy, "val_method": val.method,
                       "seconds": m.get("elapsed_s"), "stopping": m.get("stopping")})
        if val.metric != "accuracy":
            rounds[-1]["val_metric"] = val.metric
    status = ProjectStatus(project.root, project.config.classes, len(project.pool_paths()), per_class,
                           sum(1 for v in labels.values() if v == SKIP_LABEL), len(project.pending()), rounds)
    if project.multilabel:
        status.task = project.config.task
        status.labeled_images = sum(1 for v in labels.values() if v != SKIP_LABEL)
    status.imbalance = imbalance_hint(per_class)
    status.stopping = stopping_hint(rounds)
    if plot and any(r["val_accuracy"] is not None for r in rounds):
        try:
            status.curve_png = _plot(project.root / "learning_curve.png", rounds)
        except OSError as e:  # a read-only project still has a status
            log.warning("learning_curve.png not written (%s); the status is complete without it", e.strerror or e)
    return status


def imbalance_hint(labeled_per_class: dict[str, int]) -> str | None:
    """A one-line hint when the largest class has more than 10x the labels of the smallest, else ``None``."""
    found = class_imbalance(labeled_per_class)
    if found is None:
        return None
    return (f"labels are imbalanced: {found.describe()}; `tlkit al-round --strategy class-balanced` spreads the "
            f"next picks over the predicted classes, and `tlkit finetune --set class_weights=balanced` weights the loss")


def _plot(path: Path, rounds: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlkit.core.io import save_png

    pts = [(r["labeled"], r["val_accuracy"]) for r in rounds if r["val_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    ax.set_xlabel("labeled images")
    metric = "mAP (macro)" if any(r.get("val_metric") == "mAP" for r in rounds) else "accuracy"
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return path
