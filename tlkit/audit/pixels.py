"""Pixel thumbnails: the second signal of near-duplicate detection.

Pooled backbone embeddings say "same content", not "same photo": two different scans of a 7, or two
crops of one gravel texture, reach cosines of 0.99, above many real copies (README, ``tlkit audit``). A
copy also keeps the *pixels*: each image gets a :data:`SIDE` x :data:`SIDE` grey thumbnail of the whole
image and one of its central :data:`CROP` part, each zero-mean and unit-norm. Two images are pixel-alike
when the best correlation of (whole, whole), (whole, centre) or (centre, whole) reaches the pixel
threshold, which covers re-encoded, resized and cropped copies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SIDE = 16
CROP = 0.9


def thumbnails(files: list[Path | None], side: int = SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``([n, side²] whole, [n, side²] centre, [n] bool ok)``; a missing or undecodable file gives zeros."""
    from tlkit.data import ImageDecodeError, load_image

    n = len(files)
    whole = np.zeros((n, side * side), np.float32)
    centre = np.zeros((n, side * side), np.float32)
    ok = np.zeros(n, bool)
    for i, f in enumerate(files):
        if f is None:
            continue
        try:
            img = load_image(f, size_hint=4 * side).convert("L")
        except (ImageDecodeError, OSError):
            continue
        w, h = img.size
        dw, dh = w * (1 - CROP) / 2, h * (1 - CROP) / 2
        whole[i] = _vector(img.resize((side, side), Image.BOX))
        centre[i] = _vector(img.resize((side, side), Image.BOX, box=(dw, dh, w - dw, h - dh)))
        ok[i] = True
    return whole, centre, ok


def _vector(img: Image.Image) -> np.ndarray:
    v = np.asarray(img, np.float32).ravel()
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def alike_pairs(whole: np.ndarray, centre: np.ndarray, threshold: float,
                ref: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose best thumbnail correlation reaches ``threshold``.

    Args:
        whole, centre: thumbnails of the queries (:func:`thumbnails`).
        ref: thumbnails of a reference set; None pairs the queries among themselves (``i < j``).

    Returns:
        ``([p, 2] int64 pairs, [p] float32 best correlation)``.
    """
    from tlkit.audit.neighbours import search

    rw, rc = (whole, centre) if ref is None else ref
    found: dict[tuple[int, int], float] = {}
    parts = [search(whole, k=0, threshold=threshold, ref=None if ref is None else rw),
             search(whole, k=0, threshold=threshold, ref=rc),
             search(centre, k=0, threshold=threshold, ref=rw)]
    for part in parts:
        for (i, j), c in zip(part.pairs.tolist(), part.cosine.tolist()):
            if ref is None:
                if i == j:
                    continue
                i, j = min(i, j), max(i, j)
            found[(i, j)] = max(found.get((i, j), -1.0), c)
    pairs = np.array(sorted(found), np.int64).reshape(-1, 2)
    return pairs, np.array([found[tuple(p)] for p in pairs.tolist()], np.float32)
