"""A model run over a loader of :class:`tlkit.data.Batch`: :func:`predict_loader` -> :class:`Predictions`.

What validation during :func:`tlkit.train.engine.fit`, :class:`tlkit.train.predictor.Predictor` (evaluate,
predict, finetune rounds) and the reports share: probabilities, targets, the rows' dataset indices, the
files that failed and the mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Predictions:
    """Model outputs over a dataset (images that failed to decode are left out).

    Attributes:
        probs: ``[m, K]`` float32 softmax probabilities (multi-label: one sigmoid per class).
        targets: ``[m]`` int64 (-1 for unknown labels); multi-label: ``[m, K]`` float32 multi-hot (rows of -1
            for unknown labels).
        indices: ``[m]`` int64 dataset indices of the rows.
        failures: ``[(dataset index, reason)]`` of skipped files.
        loss: mean cross-entropy over the rows with a known label (``nan`` if none); multi-label: mean
            binary cross-entropy over their (image, class) pairs.
    """

    probs: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    failures: list[tuple[int, str]]
    loss: float


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    multilabel: bool = False,
) -> Predictions:
    """Run ``model`` (eval mode) over a loader of :class:`tlkit.data.Batch`.

    ``tta`` averages the probabilities of the image and its horizontal flip. ``forward``
    replaces ``model(x)`` (e.g. a head over cached features). ``multilabel``: probabilities are the
    sigmoid of each logit and the loss is binary cross-entropy.
    """
    from tlkit.core.runtime import autocast

    model.eval()
    fwd = forward or model
    act = torch.sigmoid if multilabel else (lambda z: z.softmax(-1))
    probs, targets, indices, failures = [], [], [], []
    loss_sum, loss_n = 0.0, 0
    for batch in loader:
        failures.extend(batch.failures)
        if batch.images is None or len(batch.indices) == 0:
            continue
        x = batch.images.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = fwd(x).float()
            p = act(logits)
            if tta:
                p = 0.5 * (p + act(fwd(torch.flip(x, dims=[3])).float()))
        y = batch.targets.to(device)
        if multilabel and y.ndim == 2:
            known = (y >= 0).all(1)
            if known.any():
                loss_sum += float(torch.nn.functional.binary_cross_entropy(
                    p[known].clamp(1e-7, 1 - 1e-7), y[known].float(), reduction="sum")) / p.shape[1]
                loss_n += int(known.sum())
        else:
            known = y >= 0
            if known.any():
                lp = torch.log(p[known].clamp_min(1e-12)) if tta else logits[known].log_softmax(-1)
                loss_sum += float(-lp.gather(1, y[known].unsqueeze(1)).sum())
                loss_n += int(known.sum())
        probs.append(p.cpu().numpy().astype(np.float32))
        targets.append(batch.targets.numpy())
        indices.append(batch.indices.numpy())
        if progress:
            progress(len(batch.indices) + len(batch.failures))
    k = getattr(model, "num_classes", 0) or 0
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
        targets=np.concatenate(targets) if targets else (np.zeros((0, k), np.float32) if multilabel
                                                         else np.zeros(0, np.int64)),
        indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
        failures=failures,
        loss=loss_sum / loss_n if loss_n else float("nan"),
    )


__all__ = ["Predictions", "predict_loader"]
