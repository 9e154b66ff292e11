"""Records -> batches: :class:`ImageDataset`, :func:`collate_skipping`, :func:`make_loader`,
and reporting of the files skipped (:func:`write_skipped`, :func:`summarize_failures`)."""

from __future__ import annotations

import collections
import logging
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from tlkit.core.errors import TlkitError
from tlkit.data.decode import ImageDecodeError, load_image
from tlkit.data.failures import summarize_failures, write_skipped
from tlkit.data.sources import ImageRecord

log = logging.getLogger(__name__)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [0, 1] (the transform used when none is given)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class ImageDataset(Dataset):
    """Records -> ``(image [3, H, W] | None, target, index, reason | None)``.

    ``__getitem__`` never raises for a bad file: it returns ``(None, target, i, reason)`` and
    :func:`collate_skipping` drops it from the batch.

    Args:
        records: the images.
        transform: PIL RGB image -> tensor [3, H, W] (see :func:`build_transform`); ``None`` gives
            float [0, 1] tensors at the decoded size.
        class_to_idx: label -> target; records whose label is ``None`` (or all records when
            ``class_to_idx`` is ``None``) get target -1. A label missing from it is a TlkitError.
            Multi-label records (``labels`` set) get a float32 multi-hot target ``[K]`` instead (all -1
            when their labels are unknown).
        size_hint: passed to :func:`load_image`.
    """

    def __init__(self, records: Sequence[ImageRecord],
                 transform: Callable[[Image.Image], torch.Tensor] | None,
                 class_to_idx: dict[str, int] | None = None, size_hint: int | None = None):
        self.records = tuple(records)
        self.transform = transform if transform is not None else _to_tensor
        self.class_to_idx = class_to_idx
        self.size_hint = size_hint
        if class_to_idx is None:
            self.targets = [-1] * len(self.records)
            return
        if any(r.labels is not None for r in self.records):
            self.targets = multi_hot_targets(self.records, class_to_idx)
            return
        unknown = collections.Counter(r.label for r in self.records
                                      if r.label is not None and r.label not in class_to_idx)
        if unknown:
            listed = ", ".join(f"{k!r} ({n} images)" for k, n in sorted(unknown.items()))
            raise TlkitError(f"labels not among the model's classes: {listed}; known classes: "
                             f"{', '.join(class_to_idx)}")
        self.targets = [-1 if r.label is None else class_to_idx[r.label] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, int, str | None]:
        target = self.targets[i]
        try:
            img = load_image(self.records[i].path, size_hint=self.size_hint)
        except ImageDecodeError as e:
            log.debug("skipping %s: %s", self.records[i].rel, e.reason)
            return None, target, i, e.reason
        return self.transform(img), target, i, None


def multi_hot_targets(records: Sequence[ImageRecord], class_to_idx: dict[str, int]) -> list[np.ndarray]:
    """Multi-hot float32 targets ``[K]`` of multi-label records (all -1 for unknown labels); a single-label
    record among them, or a label missing from ``class_to_idx``, is a one-line TlkitError."""
    single = [r.rel for r in records if r.labels is None and r.label is not None]
    if single:
        raise TlkitError(f"single-label and multi-label images mixed ({single[0]!r} has one label, others a set); "
                         "give all images as a manifest path,labels")
    unknown = collections.Counter(c for r in records for c in (r.labels or ()) if c not in class_to_idx)
    if unknown:
        listed = ", ".join(f"{k!r} ({n} images)" for k, n in sorted(unknown.items()))
        raise TlkitError(f"labels not among the model's classes: {listed}; known classes: {', '.join(class_to_idx)}")
    out = []
    for r in records:
        t = np.full(len(class_to_idx), -1.0 if r.labels is None else 0.0, np.float32)
        for c in r.labels or ():
            t[class_to_idx[c]] = 1.0
        out.append(t)
    return out


class Batch(NamedTuple):
    """A batch from :func:`collate_skipping`.

    Attributes:
        images: [B, 3, H, W], or ``None`` when every image of the batch failed to decode (B = 0;
            the shape of a missing image is unknown).
        targets: [B] long, -1 for unknown labels; for multi-label data ``[B, K]`` float32 multi-hot
            (rows of -1 for unknown labels).
        indices: [B] long, dataset indices of the images.
        failures: ``[(dataset index, reason), ...]`` of the files left out.
    """

    images: torch.Tensor | None
    targets: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str]]


def stack_targets(targets: Sequence) -> torch.Tensor:
    """Items' targets -> ``[B]`` long, or ``[B, K]`` float32 when they are multi-hot arrays (multi-label)."""
    if targets and isinstance(targets[0], np.ndarray):
        return torch.from_numpy(np.stack(targets))
    return torch.tensor(list(targets), dtype=torch.long)


def collate_skipping(batch: Sequence[tuple[torch.Tensor | None, int, int, str | None]]) -> Batch:
    """Stack the decoded items of ``batch`` and list the failed ones.

    Example:
        >>> b = collate_skipping([(torch.zeros(3, 2, 2), 1, 0, None), (None, 0, 1, "truncated")])
        >>> b.images.shape, b.indices.tolist(), b.failures
        (torch.Size([1, 3, 2, 2]), [0], [(1, 'truncated')])
    """
    good = [item for item in batch if item[0] is not None]
    failures = [(int(i), str(reason)) for img, _, i, reason in batch if img is None]
    images = torch.stack([item[0] for item in good]) if good else None
    targets = stack_targets([item[1] for item in good])
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return Batch(images, targets, indices, failures)


def make_loader(dataset: Dataset, *, batch_size: int, workers: int,
                device: torch.device | str, shuffle: bool = False, sampler: Sampler | None = None,
                drop_last: bool = False, seed: int = 0,
                multiprocessing_context: str | None = None,
                prefetch_factor: int | None = None, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader yielding :class:`Batch` es, bad files skipped.

    Args:
        dataset: usually an :class:`ImageDataset`.
        batch_size: items per batch (before failed files are dropped).
        workers: worker processes; 0 decodes in the calling process.
        device: batches are pinned when it is a CUDA device.
        shuffle: reshuffle every epoch with a generator seeded by ``seed`` (reproducible).
        sampler: custom sampler (exclusive with ``shuffle``).
        drop_last: drop the last incomplete batch.
        seed: seeds the shuffle order and the workers' base seed.
        multiprocessing_context: ``None`` = the platform default (fork on Linux).
        prefetch_factor: batches loaded ahead per worker (default 2 when ``workers > 0``).
        collate_fn: items -> batch (default :func:`collate_skipping`).
    """
    if batch_size < 1 or workers < 0:
        raise TlkitError(f"batch size must be >= 1 and workers >= 0 (got {batch_size}, {workers})")
    if shuffle and sampler is not None:
        raise ValueError("make_loader: pass either shuffle=True or a sampler, not both")
    device = torch.device(device)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last,
        num_workers=workers, collate_fn=collate_fn or collate_skipping, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=(prefetch_factor or 2) if workers > 0 else None,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


__all__ = ["Batch", "ImageDataset", "collate_skipping", "make_loader", "summarize_failures", "write_skipped"]
