"""Predict classes of images with a trained run: one CSV row per image, top-k, optional flip TTA.

Example:
    >>> res = predict("runs/flowers", "new_photos/", out="preds.csv", topk=3)    # doctest: +SKIP
    >>> res.count, res.skipped                                                  # doctest: +SKIP
    (120, 1)

``preds.csv`` columns: ``path`` (relative to IMAGES), ``label``, ``probability``, then
``top2_label``, ``top2_probability`` ... up to ``topk``. Files that cannot be decoded are left out
and listed in ``skipped.csv`` next to it (``path,reason``).

A multi-label run writes ``path``, ``labels`` (the labels whose probability reaches the run's stored
per-class threshold, joined by ``label_delim``; empty for none), then one ``probability:<class>`` column per
class (its sigmoid probability), in class order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_file, write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` wrote: ``out`` (CSV), ``count`` rows, ``skipped`` files (see ``skipped_csv``)."""

    out: Path
    count: int
    skipped: int
    skipped_csv: Path | None
    classes: tuple[str, ...]


def _records(images: str | os.PathLike):
    from tlkit.data import IMAGE_EXTENSIONS, ImageRecord, scan_images

    path = Path(images)
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return (ImageRecord(path.resolve(), path.name, None),)
    records = scan_images(path, labeled=False).records
    if not records:
        raise TlkitError(f"{images}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return records


def prediction_rows(probs: np.ndarray, rels: list[str], classes: list[str], topk: int) -> list[list]:
    """CSV rows ``[path, label, probability, top2_label, top2_probability, ...]`` from ``probs [n, K]``."""
    k = min(topk, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = []
    for rel, p, idx in zip(rels, probs, order):
        row: list = [rel]
        for j in idx:
            row += [classes[j], f"{p[j]:.6f}"]
        rows.append(row)
    return rows


def multilabel_rows(probs: np.ndarray, rels: list[str], classes: list[str], thresholds: list[float],
                    delim: str = ";") -> list[list]:
    """CSV rows ``[path, labels, p_1, ..., p_K]`` of a multi-label run: the labels at or above their threshold
    joined by ``delim``, then every class probability."""
    from tlkit.train.multilabel import predict_sets

    chosen = predict_sets(probs, thresholds)
    return [[rel, delim.join(c for c, on in zip(classes, row) if on), *(f"{v:.6f}" for v in p)]
            for rel, p, row in zip(rels, probs, chosen)]


def predict(
    run: str | os.PathLike,
    images: str | os.PathLike,
    *,
    out: str | os.PathLike,
    topk: int = 5,
    tta: bool = False,
    which: str = "best",
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    engine: str = "auto",
    progress: Callable[[int], None] | None = None,
    decode: str = "auto",
    label_delim: str = ";",
) -> PredictResult:
    """Classify every image of a folder (any layout, recursive), a CSV manifest, or one file.

    Args:
        run: a finetune run folder (or one of its ``.safetensors``).
        images: what to classify; labels in a class tree are ignored.
        out: the CSV to write.
        topk: columns for the k most likely classes (at most K).
        tta: average with the horizontally flipped image.
        which: ``best`` or ``last`` checkpoint.
        engine: ``auto`` | ``torch`` | ``openvino`` (:func:`tlkit.engines.create_engine`).
        batch_size, decode: see :meth:`tlkit.train.predictor.Predictor.loader`.
        label_delim: multi-label runs: the separator of the ``labels`` column (``topk`` does not apply).
    """
    from tlkit.data import write_skipped
    from tlkit.train.predictor import Predictor

    from tlkit.data import check_label_delim

    if topk < 1:
        raise TlkitError(f"--topk {topk}: must be at least 1")
    check_label_delim(label_delim)
    check_output_file(out)
    predictor = Predictor.load(run, which=which, device=device, precision=precision, engine=engine)
    classes = predictor.classes
    records = _records(images)
    preds = predictor.predict(predictor.loader(records, batch_size=batch_size, workers=workers, decode=decode), tta=tta,
                              progress=progress)
    out = Path(out)
    rels = [records[i].rel for i in preds.indices]
    if predictor.multilabel:
        header = ["path", "labels", *(f"probability:{c}" for c in classes)]
        write_csv(out, header, multilabel_rows(preds.probs, rels, classes, predictor.thresholds, label_delim))
    else:
        k = min(topk, len(classes))
        header = ["path", "label", "probability"]
        for i in range(2, k + 1):
            header += [f"top{i}_label", f"top{i}_probability"]
        write_csv(out, header, prediction_rows(preds.probs, rels, classes, k))
    skipped_csv = None
    if preds.failures:
        skipped_csv = out.parent / "skipped.csv"
        write_skipped(skipped_csv, records, preds.failures)
        log.warning("%d files could not be read; see %s", len(preds.failures), skipped_csv)
    return PredictResult(out, len(preds.indices), len(preds.failures), skipped_csv, tuple(classes))


__all__ = ["PredictResult", "multilabel_rows", "predict", "prediction_rows"]
