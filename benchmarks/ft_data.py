"""Datasets for the fine-tuning defaults study (``bench_finetune.py study`` / ``timm``).

Every set is rendered offline from images that ship with scikit-learn and scikit-image, as a
``root/<name>/{train,val,test}/<class>/*.png`` class tree, deterministic under its seed and cached
(``--cache`` or a temporary folder; never committed).

Study sets (the ones the defaults were *chosen* on):

* ``digits_bw``: scikit-learn's digits, black ink on white, bilinear 8->32 upscale, rotated
  uniformly in [-12, 12] degrees (grey; 480 / 120 / 600).
* ``photos_small``: small crops (6-12 % of the shorter side, ~25-60 px) of 8 colour photos, class =
  source photo, saved at 64 px (colour; 60 / 15 / 50 per class).
* ``photos_large``: large crops (30-70 %) of the same 8 photos at 96 px (colour; 40 / 10 / 40 per class).
* ``textures``: Brodatz-like grey crops (32-80 px) of brick, grass, gravel, moon surface and cell
  tissue, saved at 64 px, rotated by multiples of 90 degrees (grey; 80 / 20 / 80 per class).
* ``photos_imb``: crops (10-20 %) of 6 photos with geometric class counts 150 -> 15 in train and
  val (10x imbalance), a balanced test set (colour; ~400 / ~100 / 50 per class).

Held-out set (used only for reporting, never for choosing): ``digits_wn``, the issue's rendering,
white ink on black, nearest-neighbour 8->32, a seeded (0) stratified 60/10/30 split of all 1,797.

The README figure's set (``tlkit.demo``: dark ink on white, bicubic) is deliberately not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

STUDY = ("digits_bw", "photos_small", "photos_large", "textures", "photos_imb")
HELD_OUT = ("digits_wn",)
PHOTOS8 = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower", "immunohistochemistry",
           "hubble_deep_field")
TEXTURES = ("brick", "grass", "gravel", "moon", "cell")
KINDS = {"digits_bw": "grey", "photos_small": "colour", "photos_large": "colour", "textures": "grey",
         "photos_imb": "colour, imbalanced", "digits_wn": "grey (held out)"}


def _photo(name: str) -> Image.Image:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    from skimage import data as skdata

    arr = getattr(skdata, name)()
    return Image.fromarray(arr).convert("RGB" if arr.ndim == 3 else "L")


def _write(folder: Path, cls: str, k: int, img: Image.Image) -> None:
    (folder / cls).mkdir(parents=True, exist_ok=True)
    img.save(folder / cls / f"{k:04d}.png")


def _digit_splits(labels: np.ndarray, sizes: tuple[float | int, ...], seed: int) -> list[np.ndarray]:
    """Stratified train/val/test index arrays (fractions of all, or counts)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=sizes[0], stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=sizes[1], test_size=sizes[2], stratify=labels[rest],
                                 random_state=seed)
    return [np.sort(train), np.sort(val), np.sort(test)]


def _digits(root: Path, render: Callable[[np.ndarray, np.random.Generator], Image.Image],
            sizes: tuple, seed: int) -> None:
    from tlkit.demo import digits_arrays

    images, labels = digits_arrays()  # ink bright, [1797, 8, 8] uint8
    rng = np.random.default_rng(seed)
    for split, part in zip(("train", "val", "test"), _digit_splits(labels, sizes, seed)):
        for i in part:
            _write(root / split, str(labels[i]), int(i), render(images[i], rng))


def render_white_on_black_nearest(img8: np.ndarray, rng=None) -> Image.Image:
    """The held-out rendering (issue #14): white ink on black, nearest-neighbour 8 -> 32."""
    return Image.fromarray(img8, mode="L").resize((32, 32), Image.NEAREST)


def render_black_on_white_rotated(img8: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Black ink on white, bilinear 8 -> 32, rotated by U(-12, 12) degrees."""
    im = Image.fromarray(255 - img8, mode="L").resize((32, 32), Image.BILINEAR)
    return im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=255)


def _crops(root: Path, names: tuple[str, ...], counts: dict[str, list[int]], scale: tuple[float, float],
           size: int, seed: int, rot90: bool = False) -> None:
    """Random square crops of each source image; ``counts[split][c]`` crops of class ``c``."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        photo = _photo(name)
        w, h = photo.size
        for split, per_class in counts.items():
            for k in range(per_class[c]):
                side = int(min(w, h) * rng.uniform(*scale))
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
                if rot90:
                    crop = crop.rotate(90 * int(rng.integers(4)))
                _write(root / split, name, k, crop)


def _each(n: int, k: int) -> list[int]:
    return [n] * k


BUILDERS: dict[str, Callable[[Path], None]] = {
    "digits_wn": lambda r: _digits(r, render_white_on_black_nearest, (0.6, 0.25, None), 0),
    "digits_bw": lambda r: _digits(r, render_black_on_white_rotated, (480, 120, 600), 1),
    "photos_small": lambda r: _crops(r, PHOTOS8, {"train": _each(60, 8), "val": _each(15, 8), "test": _each(50, 8)},
                                     (0.06, 0.12), 64, 2),
    "photos_large": lambda r: _crops(r, PHOTOS8, {"train": _each(40, 8), "val": _each(10, 8), "test": _each(40, 8)},
                                     (0.3, 0.7), 96, 3),
    "textures": lambda r: _crops(r, TEXTURES, {"train": _each(80, 5), "val": _each(20, 5), "test": _each(80, 5)},
                                 (32 / 512, 80 / 512), 64, 4, rot90=True),
    "photos_imb": lambda r: _crops(r, PHOTOS8[:6], {"train": [150, 95, 60, 38, 24, 15],
                                                    "val": [38, 24, 15, 10, 6, 4], "test": _each(50, 6)},
                                   (0.10, 0.20), 64, 5),
}


def dataset(name: str, cache: str | Path) -> dict[str, Path]:
    """``{"train", "val", "test"}`` folders of ``name`` under ``cache`` (built on first use)."""
    if name not in BUILDERS:
        raise SystemExit(f"unknown dataset {name!r}; choose one of: {', '.join(BUILDERS)}")
    root = Path(cache) / name
    done = root / ".done"
    if not done.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        BUILDERS[name](root)
        done.touch()
    return {s: root / s for s in ("train", "val", "test")}


def counts(paths: dict[str, Path]) -> dict[str, int]:
    return {s: sum(1 for _ in p.rglob("*.png")) for s, p in paths.items()}


if __name__ == "__main__":
    import sys

    cache = sys.argv[1] if len(sys.argv) > 1 else "/tmp/tlkit_ft_data"
    for n in BUILDERS:
        print(n, counts(dataset(n, cache)))
