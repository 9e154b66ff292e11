"""The evaluation of a trained run on labeled images, and the files it writes.

:func:`evaluate_run` rebuilds a run's model (:class:`~tlkit.train.predictor.Predictor`), predicts a labeled
folder, computes the metrics (:func:`tlkit.train.metrics.compute_metrics`) and writes them to
``RUN/evaluation.json`` with the predictions and figures beside them.

Example:
    >>> m = evaluate_run("runs/photos", "photos/val/")      # doctest: +SKIP
    >>> m["accuracy"], m["n"]                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_file, write_json
from tlkit.train.metrics import compute_metrics
from tlkit.train.predictions import Predictions

EVALUATION_FILE = "evaluation.json"


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


__all__ = ["EVALUATION_FILE", "evaluate_run", "write_evaluation_files", "write_multilabel_evaluation_files"]
