"""timm's eval preprocessing in PIL + NumPy, without torch: :func:`numpy_eval_transform`.

The same steps, in the same arithmetic, as ``timm.data.create_transform(**cfg)`` (eval, center
crop): the short side resized to ``floor(size / crop_pct)`` with PIL's filter (torchvision's
``Resize`` on a PIL image calls ``Image.resize``), torchvision's center crop (``int(round(...))``
offsets, zero padding when the crop is larger), then ``/ 255`` and ``(x - mean) / std`` in float32.
The result is bit-for-bit timm's tensor (``tests/test_fast_start.py`` checks it on real photos at
several sizes, aspect ratios and filters). Configs it does not cover (``squash``/``border`` crops,
non-square inputs, an unknown filter) get ``None``: the caller uses timm's transform instead.

Example:
    >>> from PIL import Image
    >>> cfg = DataConfig((3, 64, 64), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875, "center")
    >>> numpy_eval_transform(cfg)(Image.new("RGB", (100, 80))).shape
    (3, 64, 64)
"""

from __future__ import annotations

import logging
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from tlkit.data.config import DataConfig
from tlkit.data.decode import ImageDecodeError, load_image
from tlkit.data.sources import ImageRecord

log = logging.getLogger(__name__)

#: timm's defaults for a config that leaves them unset (timm.data.transforms_factory).
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bilinear"
PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
               "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}


def numpy_eval_transform(cfg: DataConfig) -> Callable[[Image.Image], np.ndarray] | None:
    """PIL RGB image -> float32 ``[3, H, W]`` equal to timm's eval transform; ``None`` when not covered."""
    _, h, w = cfg.input_size
    interp = cfg.interpolation or DEFAULT_INTERPOLATION
    if h != w or (cfg.crop_mode or "center") != "center" or interp not in PIL_FILTERS or len(cfg.mean) != 3:
        return None
    scale = math.floor(h / (cfg.crop_pct or DEFAULT_CROP_PCT))
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    if (std == 0).any():
        return None
    resample = PIL_FILTERS[interp]

    def transform(img: Image.Image) -> np.ndarray:
        arr = _center_crop(np.asarray(_resize_short(img, scale, resample)), h, w)
        # C order: astype would keep the transposed (HWC) memory layout, and every later step
        # would stride through it (0.36 ms instead of 0.07 per 224 px image)
        x = arr.transpose(2, 0, 1).astype(np.float32, order="C")
        x /= np.float32(255)
        x -= mean
        x /= std
        return x

    return transform


def numpy_eval_pixels(cfg: DataConfig) -> Callable[[Image.Image], np.ndarray] | None:
    """PIL RGB image -> uint8 ``[3, H, W]``: :func:`numpy_eval_transform` before ``/ 255`` and the
    normalisation (the same resize and crop); ``None`` for the configs it does not cover."""
    _, h, w = cfg.input_size
    interp = cfg.interpolation or DEFAULT_INTERPOLATION
    if h != w or (cfg.crop_mode or "center") != "center" or interp not in PIL_FILTERS or len(cfg.mean) != 3:
        return None
    scale = math.floor(h / (cfg.crop_pct or DEFAULT_CROP_PCT))
    resample = PIL_FILTERS[interp]

    def pixels(img: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(_center_crop(np.asarray(_resize_short(img, scale, resample)), h, w).transpose(2, 0, 1))

    return pixels


def resized_short(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``'s output ``(width, height)`` for a ``w`` x ``h`` image: short side to
    ``size``, long side truncated."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _resize_short(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image (:func:`resized_short`)."""
    new = resized_short(*img.size, size)
    return img if new == img.size else img.resize(new, resample)


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """torchvision ``CenterCrop((ch, cw))`` on an ``[H, W, 3]`` array, zero-padded when it is smaller."""
    h, w = arr.shape[:2]
    if cw > w or ch > h:
        pad = ((ch - h) // 2 if ch > h else 0, (ch - h + 1) // 2 if ch > h else 0)
        padw = ((cw - w) // 2 if cw > w else 0, (cw - w + 1) // 2 if cw > w else 0)
        arr = np.pad(arr, (pad, padw, (0, 0)))
        h, w = arr.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top : top + ch, left : left + cw]


class ArrayBatch(NamedTuple):
    """A batch from :func:`collate_arrays`: :class:`tlkit.data.Batch` in NumPy, without targets.

    Attributes:
        images: float32 ``[B, 3, H, W]``, or ``None`` when every image of the batch failed to decode.
        indices: int64 ``[B]``, dataset indices of the images.
        failures: ``[(dataset index, reason), ...]`` of the files left out.
    """

    images: np.ndarray | None
    indices: np.ndarray
    failures: list[tuple[int, str]]


class ArrayImages:
    """Records -> ``(image float32 [3, H, W] | None, index, reason | None)``; never raises for a bad file.

    The NumPy twin of :class:`tlkit.data.ImageDataset` (same decoding, :func:`load_image` with ``size_hint``).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[Image.Image], np.ndarray],
                 size_hint: int | None = None):
        self.records, self.transform, self.size_hint = tuple(records), transform, size_hint

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int, str | None]:
        try:
            img = load_image(self.records[i].path, size_hint=self.size_hint)
        except ImageDecodeError as e:
            log.debug("skipping %s: %s", self.records[i].rel, e.reason)
            return None, i, e.reason
        return self.transform(img), i, None


def collate_arrays(items: Sequence[tuple[np.ndarray | None, int, str | None]]) -> ArrayBatch:
    """Stack the decoded items of :class:`ArrayImages` and list the failed ones (:func:`tlkit.data.collate_skipping`)."""
    good = [item for item in items if item[0] is not None]
    failures = [(int(i), str(reason)) for img, i, reason in items if img is None]
    images = np.stack([item[0] for item in good]) if good else None
    return ArrayBatch(images, np.array([item[1] for item in good], dtype=np.int64), failures)


__all__ = ["ArrayBatch", "ArrayImages", "collate_arrays", "numpy_eval_pixels", "numpy_eval_transform"]
