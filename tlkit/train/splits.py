"""Training data: scan the class folders, refuse bad input, hold out a stratified validation split.

Every check runs before anything is written, so a bad input leaves no half-made run folder.

Example:
    >>> s = prepare_splits("data/train", val_fraction=0.2, seed=0)     # doctest: +SKIP
    >>> s.classes, len(s.train), len(s.val)                             # doctest: +SKIP
    (('cat', 'dog'), 80, 20)
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.core.errors import TlkitError
from tlkit.train.config import TASK_DEFAULTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Training and validation records.

    Attributes:
        classes: sorted class names of the training data (the model's outputs, in order).
        train: training records.
        val: validation records.
        val_origin: ``"folder"`` (given with --val) or ``"split"`` (held out of the training data).
        root: the training source's root (``rel`` paths are relative to it).
        task: ``single`` or ``multilabel`` (records carry ``labels``; see :mod:`tlkit.data.sources`).
    """

    classes: tuple[str, ...]
    train: tuple
    val: tuple
    val_origin: str
    root: Path
    task: str = "single"

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> list[int]:
        """Training images per class (multi-label: images with that label), in ``classes`` order."""
        if self.multilabel:
            c = collections.Counter(k for r in self.train for k in r.labels)
        else:
            c = collections.Counter(r.label for r in self.train)
        return [c.get(k, 0) for k in self.classes]


def _scan_labeled(path: str | os.PathLike, what: str, task: str = "auto", label_delim: str = ";"):
    from tlkit.data import scan_images

    source = scan_images(path, labeled=True, task=task, label_delim=label_delim)
    if source.empty_classes:
        raise TlkitError(
            f"{what} {path}: class folders without any image: {', '.join(map(repr, source.empty_classes))}; "
            "add images to them or remove them"
        )
    if not source.records:
        raise TlkitError(f"{what} {path}: no images found; expected one subfolder of images per class")
    return source


def stratified_split(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask ``[n]``, True = validation; per class ``round(fraction x n)`` images, at least 1
    and at most n - 1 (classes with a single image stay in training).

    Example:
        >>> stratified_split(["a"] * 10 + ["b"] * 5, 0.2, seed=0).sum()
        3
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    by_class: dict[str, list[int]] = collections.defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    for label in sorted(by_class):
        idx = np.asarray(by_class[label])
        if len(idx) < 2:
            continue
        n_val = int(min(len(idx) - 1, max(1, round(fraction * len(idx)))))
        mask[rng.permutation(idx)[:n_val]] = True
    return mask


def rarest_label_keys(labels: list[tuple[str, ...]]) -> list[str]:
    """Each image's rarest label (``""`` for none): the key a multi-label split stratifies on, so every label
    keeps a share of its images on each side."""
    freq = collections.Counter(c for ls in labels for c in ls)
    return [min(ls, key=lambda c: (freq[c], c)) if ls else "" for ls in labels]


def prepare_splits(
    data: str | os.PathLike, val: str | os.PathLike | None = None, *, val_fraction: float | None = None, seed: int = 0,
    task: str = "auto", label_delim: str = ";",
) -> Splits:
    """Scan ``data`` (class tree or labeled manifest) and ``val`` (or hold out ``val_fraction``; ``None``: the
    task's default, :data:`tlkit.train.config.TASK_DEFAULTS`).

    ``task`` / ``label_delim``: see :func:`tlkit.data.scan_images`; ``val`` is read with the training
    data's task. A multi-label hold-out is stratified on each image's rarest label.

    Raises:
        TlkitError: fewer than 2 classes; an empty class folder; validation classes the training
            data lacks; too few images for a validation split; validation data of another task.
    """
    train_src = _scan_labeled(data, "training data", task, label_delim)
    classes = tuple(train_src.classes)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise TlkitError(
            f"training data {data}: a classifier needs at least 2 classes (one subfolder each); found {found}"
        )
    if val is not None:
        val_src = _scan_labeled(val, "validation data", train_src.task, label_delim)
        extra = sorted(set(val_src.classes) - set(classes))
        if extra:
            raise TlkitError(
                f"validation data {val}: classes {', '.join(map(repr, extra))} are not in the training data "
                f"({', '.join(classes)}); remove them or add training images for them"
            )
        return Splits(classes, train_src.records, val_src.records, "folder", train_src.root, train_src.task)
    multilabel = train_src.task == "multilabel"
    labels = rarest_label_keys([r.labels for r in train_src.records]) if multilabel else \
        [r.label for r in train_src.records]
    if val_fraction is None:
        val_fraction = TASK_DEFAULTS[train_src.task]["val_fraction"]
    mask = stratified_split(labels, val_fraction, seed)
    if not mask.any():
        raise TlkitError(
            f"training data {data}: too few images to hold out a validation split; pass --val DIR "
            "or add images (each class needs at least 2)"
        )
    singles = [c for c, n in collections.Counter(labels).items() if n < 2]
    if singles and not multilabel:
        log.warning("classes with a single image are not validated: %s", ", ".join(sorted(singles)))
    records = train_src.records
    train = tuple(r for r, v in zip(records, mask) if not v)
    held = tuple(r for r, v in zip(records, mask) if v)
    log.info("stratified split of %s: %d train, %d val (seed %d)", data, len(train), len(held), seed)
    return Splits(classes, train, held, "split", train_src.root, train_src.task)


__all__ = ["Splits", "prepare_splits", "rarest_label_keys", "stratified_split"]
