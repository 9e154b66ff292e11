"""A trained run ready for inference: load it, prepare the model, predict loaders of images.

One implementation behind ``tlkit evaluate``, ``tlkit predict`` and the fine-tuned active-learning
learner: the run is rebuilt from its checkpoint alone (:func:`tlkit.train.model.load_model`),
run by an inference engine (:func:`tlkit.engines.create_engine`: OpenVINO on a CPU when it
converts, else PyTorch with BatchNorm folded, channels_last and the device's autocast precision),
with the run's own preprocessing.

Example:
    >>> predictor = Predictor.load("runs/flowers")                              # doctest: +SKIP
    >>> preds = predictor.predict(predictor.loader(records))                   # doctest: +SKIP
    >>> preds.probs.shape                                   # [n, K], rows of decodable images
    (120, 5)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tlkit.data.config import DataConfig
from tlkit.engines import Engine
from tlkit.train.checkpoint import RunMeta
from tlkit.train.predictions import Predictions, predict_loader

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A run's model prepared for inference, with what it needs to read images.

    Attributes:
        model: the run's classifier (logits ``[B, K]``), eval mode, on the CPU.
        meta: the checkpoint's :class:`RunMeta` (classes, preprocessing, ...).
        engine: what runs it (:class:`tlkit.engines.Engine`: ``name``, ``precision``, ``device``).
    """

    model: nn.Module
    meta: RunMeta
    engine: Engine

    @classmethod
    def load(cls, run: str | os.PathLike, *, which: str = "best", device: str = "auto",
             precision: str = "auto", engine: str = "auto") -> "Predictor":
        """Rebuild ``run`` (a run folder or one of its ``.safetensors``) for inference on ``device``.

        ``engine``: ``auto`` | ``torch`` | ``openvino`` (see :func:`tlkit.engines.create_engine`).
        """
        from tlkit.engines import ModelSpec, create_engine
        from tlkit.train.model import load_model

        model, meta = load_model(run, which=which, device="cpu")
        spec = ModelSpec.of(model, meta.data_config.input_size, backbone=meta.backbone, classes=list(meta.classes))
        return cls(model, meta, create_engine(spec, engine=engine, device=device, precision=precision))

    @property
    def device(self) -> torch.device:
        """Where batches go (the engine's device)."""
        return self.engine.device

    @property
    def classes(self) -> list[str]:
        """The K class names in output order."""
        return list(self.meta.classes)

    @property
    def data_config(self) -> DataConfig:
        return self.meta.data_config

    def loader(self, records: Sequence, *, class_to_idx: dict[str, int] | None = None,
               batch_size: int | str | None = None, workers: int | None = None, decode: str = "auto"):
        """A loader of :class:`tlkit.data.ImageRecord` s with the run's eval preprocessing.

        ``class_to_idx`` maps record labels to targets (``None``: targets -1); ``batch_size`` (``auto``
        or ``None``: :func:`tlkit.core.batch_size.inference_batch`, 8 on a CPU, probed on CUDA) and ``workers``
        (default :func:`tlkit.core.runtime.default_workers`); ``decode``: ``auto`` (JPEGs decoded on the device
        on CUDA) | ``cpu`` | ``device`` (:func:`tlkit.data.device_decode.eval_loader`).
        """
        from tlkit.core.batch_size import inference_batch
        from tlkit.core.runtime import default_workers
        from tlkit.data.device_decode import eval_loader

        batch = inference_batch(batch_size, self.device, self.engine.forward, self.data_config.input_size,
                                len(records))
        loader, path = eval_loader(records, self.data_config, batch_size=batch.size, device=self.device,
                                   workers=default_workers() if workers is None else workers,
                                   decode=decode if self.engine.name == "torch" else "cpu", class_to_idx=class_to_idx)
        log.info("batch size %d (%s), decoding on the %s", batch.size, batch.how, path)
        return loader

    @property
    def multilabel(self) -> bool:
        """The run predicts a set of labels per image (one sigmoid per class)."""
        return self.meta.multilabel

    @property
    def thresholds(self) -> list[float]:
        """Multi-label: the per-class thresholds stored with the checkpoint (chosen on validation data;
        :data:`~tlkit.train.multilabel.DEFAULT_THRESHOLD` each when it stores none)."""
        from tlkit.train.multilabel import DEFAULT_THRESHOLD

        return list(self.meta.thresholds) if self.meta.thresholds is not None else [DEFAULT_THRESHOLD] * len(self.classes)

    def predict(self, loader, *, tta: bool = False, progress: Callable[[int], None] | None = None) -> Predictions:
        """Probabilities ``[m, K]`` (and targets, indices, failures) over a loader of :meth:`loader`
        (multi-label runs: one sigmoid per class)."""
        return predict_loader(self.model, loader, device=self.device, tta=tta, forward=self.engine.forward,
                              progress=progress, multilabel=self.multilabel)

    def predict_files(self, paths: Sequence[str | os.PathLike], classes: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities ``[n, k]`` for image files, one row per path.

        Columns follow ``classes`` (default: the run's); a class the run never saw gets 0, and so
        does every column of a file that could not be decoded.
        """
        return self.score_files(paths, classes).probs

    def score_files(self, paths: Sequence[str | os.PathLike], classes: Sequence[str] | None = None, *,
                    pixel_store: str | os.PathLike | None = None) -> FileScores:
        """:meth:`predict_files` and how the images were read.

        ``pixel_store``: a folder of :mod:`tlkit.data.pixel_store` stores: the files' eval-geometry pixels are
        read from it (decoding only files it lacks) and normalised on the device; where no store can be
        made (geometry, size, disk), the files are decoded as :meth:`loader` decodes them.
        """
        from tlkit.data import ImageRecord
        from tlkit.data.device_decode import decode_path_of

        classes = list(classes) if classes is not None else self.classes
        records = [ImageRecord(Path(p), Path(p).name, None) for p in paths]
        loader = self._store_loader(paths, pixel_store) if pixel_store is not None else None
        loader = loader or self.loader(records)
        preds = self.predict(loader)
        out = np.zeros((len(records), len(classes)), np.float32)
        cols = [classes.index(c) for c in self.classes if c in classes]
        known = [i for i, c in enumerate(self.classes) if c in classes]
        out[np.ix_(preds.indices, cols)] = preds.probs[:, known]
        if preds.failures:
            log.info("%d of %d files could not be decoded; their rows are 0", len(preds.failures), len(records))
        return FileScores(out, decode_path_of(loader))

    def _store_loader(self, paths: Sequence[str | os.PathLike], folder: str | os.PathLike):
        """:class:`tlkit.data.pixel_store.PixelBatches` over ``paths``, or ``None`` when no store can be made."""
        from tlkit.core.batch_size import inference_batch
        from tlkit.data.pixel_store import PixelBatches, pool_pixels

        rows = pool_pixels(folder, paths, self.data_config)
        if rows is None:
            return None
        batch = inference_batch(None, self.device, self.engine.forward, self.data_config.input_size, len(paths))
        log.info("batch size %d (%s), pixels from the store %s", batch.size, batch.how, rows.folder)
        return PixelBatches(rows, self.data_config, batch_size=batch.size, device=self.device)


@dataclass(frozen=True)
class FileScores:
    """What :meth:`Predictor.score_files` returns.

    Attributes:
        probs: ``[n, k]`` probabilities (see :meth:`Predictor.predict_files`).
        decode: how the images were read: ``store`` (a :mod:`tlkit.data.pixel_store`), ``device``
            (JPEGs decoded on the device) or ``cpu``.
    """

    probs: np.ndarray
    decode: str


__all__ = ["FileScores", "Predictor"]
