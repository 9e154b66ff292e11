"""Image records, manifests, robust decoding, transforms and loaders.

Data flows one way: :func:`scan_images` turns a folder or a CSV manifest into an
:class:`ImageSource` (a tuple of :class:`ImageRecord`); :class:`ImageDataset` decodes records with
:func:`load_image` and a transform from :func:`build_transform`; :func:`make_loader` batches them
with :func:`collate_skipping`, which drops files that failed to decode and reports why. The loader's
names (torch) are imported on first use, so ``import tlkit.data`` imports neither torch nor timm.

Sources (:mod:`tlkit.data.sources`):
    * class tree: ``root/<class>/**/<image>``; the first-level folder name is the label.
    * flat folder: ``root/**/<image>``, recursive, every label ``None``.
    * CSV manifest: header ``path[,label]``, paths relative to the CSV's folder, row order kept.
    * multi-label manifest: header ``path,labels`` (or a ``label`` cell holding ``;``): each cell a set of
      labels joined by ``;`` (``label_delim``), empty = no label; ``ImageSource.task == "multilabel"``.

Decoding (:mod:`tlkit.data.decode`): EXIF orientation, alpha over white, 16-bit/float scaled to
8 bit, first frame of animations, decompression bombs (``tlkit.data.decode.MAX_IMAGE_PIXELS``) and
truncated files refused with an :class:`ImageDecodeError` carrying a short ``reason``.

Preprocessing (:mod:`tlkit.data.config`): a :class:`DataConfig` (input size, mean, std,
interpolation, crop) comes with every backbone; :meth:`DataConfig.at_size` changes the input size.

Example:
    >>> src = scan_images("data/train")                                   # doctest: +SKIP
    >>> tf = build_transform(backbone.data_config)                        # doctest: +SKIP
    >>> ds = ImageDataset(src.records, tf, src.class_to_idx,
    ...                   size_hint=size_hint_for(backbone.data_config))  # doctest: +SKIP
    >>> for batch in make_loader(ds, batch_size=64, workers=4, device="cuda"):  # doctest: +SKIP
    ...     batch.images, batch.targets, batch.indices, batch.failures
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlkit.data.config import DataConfig
from tlkit.data.decode import ImageDecodeError, load_image, to_rgb
from tlkit.data.failures import summarize_failures, write_skipped
from tlkit.data.sources import (
    DEFAULT_LABEL_DELIM, IMAGE_EXTENSIONS, TASKS, Imbalance, ImageRecord, ImageSource, check_label_delim, class_imbalance,
    scan_images,
)
from tlkit.data.transforms import build_transform, size_hint_for

if TYPE_CHECKING:
    from tlkit.data.loader import Batch, ImageDataset, collate_skipping, make_loader

_LOADER = frozenset({"Batch", "ImageDataset", "collate_skipping", "make_loader"})


def __getattr__(name: str) -> Any:
    """The loader's names, imported on first use: importing :mod:`tlkit.data` must not import torch."""
    if name in _LOADER:
        from tlkit.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LABEL_DELIM",
    "IMAGE_EXTENSIONS",
    "TASKS",
    "Batch",
    "DataConfig",
    "ImageDataset",
    "Imbalance",
    "ImageDecodeError",
    "ImageRecord",
    "ImageSource",
    "build_transform",
    "check_label_delim",
    "class_imbalance",
    "collate_skipping",
    "load_image",
    "make_loader",
    "scan_images",
    "size_hint_for",
    "summarize_failures",
    "to_rgb",
    "write_skipped",
]
