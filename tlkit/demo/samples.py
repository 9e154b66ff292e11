"""Sample datasets made from images that ship with installed packages (no download).

* :func:`make_digits_folder` renders scikit-learn's 1,797 handwritten digits (8x8, real scans) as
  PNG files in a class-folder tree.
* :func:`make_photo_crops_folder` cuts random crops out of the photos in ``skimage.data``; the
  class is the photo a crop comes from.

Both are deterministic under a seed, so tests and benchmarks can rebuild the same folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")
PHOTOS_15 = PHOTOS + ("brick", "cell", "clock", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
                      "moon", "retina")
"""A harder set: 15 photos and textures that ship with scikit-image (no download needed)."""


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images ``[1797, 8, 8]`` (ink bright) and labels ``[1797]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)


def render_digit(img8: np.ndarray, size: int) -> Image.Image:
    """An 8x8 digit upsampled (bicubic) to ``size`` px, dark ink on white paper."""
    return Image.fromarray(255 - img8, mode="L").resize((size, size), Image.BICUBIC)


def make_digits_folder(
    root: str | Path,
    *,
    per_class: int | None = None,
    size: int = 32,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> Path:
    """Write digits as ``root/<digit>/<index>.png``.

    Args:
        root: output folder (created).
        per_class: how many images per class (random under ``seed``); None = all.
        size: side of the PNGs in pixels.
        indices: exact dataset indices to write (overrides ``per_class``).

    Returns:
        ``root``.
    """
    images, labels = digits_arrays()
    if indices is None:
        indices = pick_per_class(labels, per_class, seed)
    root = Path(root)
    for i in indices:
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        render_digit(images[i], size).save(folder / f"{int(i):04d}.png")
    return root


def pick_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def make_photo_crops_folder(
    root: str | Path,
    *,
    per_class: int = 30,
    size: int = 96,
    photos: tuple[str, ...] = PHOTOS,
    seed: int = 0,
    scale: tuple[float, float] = (0.25, 0.6),
) -> Path:
    """Write random crops of ``skimage.data`` photos as ``root/<photo>/<n>.jpg``.

    Crops cover ``scale`` (a fraction range) of the photo's shorter side, at a random position,
    resized to ``size``. Smaller crops make a harder task.
    """
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in photos:
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        w, h = photo.size
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            side = int(min(w, h) * rng.uniform(*scale))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
            crop.save(folder / f"{k:03d}.jpg", quality=92)
    return root
