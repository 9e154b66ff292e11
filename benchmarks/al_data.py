"""Feature sets for the active-learning benchmarks, cached as .npy under a folder outside the repo.

Sets (each a pool/test split; ``split`` picks which one, so tuning and reporting can use different data):
  digits-pixels   scikit-learn digits, raw 64-d pixels; 70/30 stratified split, ``random_state=split``
  digits-lite0    the same digits rendered as 32-px PNGs, efficientnet_lite0 embeddings at 224 px; same split
  digits-lite0-96 the same digits, efficientnet_lite0 at 96 px (a different rendering); same split
  photos          crops (10-30 % of the side) of 15 skimage photos and textures, efficientnet_lite0 at 224 px;
                  80 per class in the pool, 30 in the test set; ``split`` seeds the crops (pool seed
                  ``split``, test seed ``split + 1``; the README's seeds are 3 and 4)

Usage (from the repository root): ``from benchmarks.al_data import load`` or run this file to fill the cache.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "tlkit-al-cache"
SETS = ("digits-pixels", "digits-lite0", "photos", "digits-lite0-96")


def _embed(src: Path, out: Path, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    from tlkit.features.extract import extract_features, load_features

    extract_features(src, out, image_size=size)
    x, idx, _ = load_features(out, mmap=False)
    return np.asarray(x, np.float32), [r["label"] for r in idx], [r["path"] for r in idx]


def _digit_features(kind: str, cache: Path) -> np.ndarray:
    """``[1797, d]`` features of every digit, in dataset order (computed once)."""
    f = cache / f"{kind}.npy"
    if f.exists():
        return np.load(f)
    if kind == "digits-pixels":
        from sklearn.datasets import load_digits

        x = load_digits().data.astype(np.float32)
    else:
        from tlkit.demo import make_digits_folder

        size = 96 if kind.endswith("-96") else 224
        folder = make_digits_folder(cache / "digits-png") if not (cache / "digits-png").exists() else cache / "digits-png"
        x, _, paths = _embed(folder, cache / f"{kind}-extract", size)
        x = x[np.argsort([int(Path(p).stem) for p in paths])]
    np.save(f, x)
    return x


def _photo_features(split: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f = cache / f"photos-{split}.npz"
    if not f.exists():
        from tlkit.demo import PHOTOS_15, make_photo_crops_folder

        kw = {"photos": PHOTOS_15, "scale": (0.1, 0.3)}
        parts = []
        for name, per_class, seed in (("pool", 80, split), ("test", 30, split + 1)):
            src = make_photo_crops_folder(cache / f"photos-{split}-{name}", per_class=per_class, seed=seed, **kw)
            x, labels, _ = _embed(src, cache / f"photos-{split}-{name}-extract", 224)
            parts += [x, np.array([PHOTOS_15.index(c) for c in labels])]
        np.savez(f, x=parts[0], y=parts[1], xt=parts[2], yt=parts[3])
    d = np.load(f)
    return d["x"], d["xt"], d["y"], d["yt"]


def load(name: str, split: int, cache: Path = DEFAULT_CACHE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_pool, x_test, y_pool, y_test)`` of feature set ``name`` under split ``split``."""
    cache.mkdir(parents=True, exist_ok=True)
    if name == "photos":
        return _photo_features(split, cache)
    if name not in SETS:
        raise ValueError(f"unknown feature set {name!r}; choose one of: {', '.join(SETS)}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    return train_test_split(_digit_features(name, cache), y, test_size=0.3, stratify=y, random_state=split)


if __name__ == "__main__":  # fill the cache: python benchmarks/al_data.py digits-lite0:11 photos:3 ...
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for arg in sys.argv[1:]:
        name, split = arg.split(":")
        xs = load(name, int(split))
        print(name, split, [a.shape for a in xs], flush=True)
