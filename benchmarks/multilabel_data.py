"""Multi-label benchmark sets built from real photos: 2x2 mosaics (issue #30).

Each mosaic is four photos of one real-photo set of ``benchmarks/photo_data.py`` (a 112 px centre-cropped
tile each, 224 px in all); its labels are the set of classes its tiles show. Mosaics of a split's pool are
made from that photo split's pool photos only, mosaics of its test set from its test photos only, so no
photo appears on both sides.

How a mosaic is drawn (``_draw``; ``numpy.random.default_rng([split, MOSAIC_SEED, side])``, side 1 = pool,
2 = test):
  1. the number of distinct classes ``d`` is 1, 2, 3 or 4 with probabilities ``DISTINCT_P`` (a quarter of
     the mosaics show one class only);
  2. ``d`` distinct classes are drawn without replacement, each with probability proportional to its
     number of photos on that side (a set's natural class imbalance carries over to the labels);
  3. the four tiles are the ``d`` classes once each plus ``4 - d`` more drawn from the same ``d``, in a
     random order;
  4. each tile's photo is the next one of its class in a shuffled cycle over that class's photos (every
     photo is used about equally often; a photo appears at most once in a mosaic when its class has
     enough photos).

Sets (``SETS``; roles fixed in ``benchmarks/results/multilabel_sets_plan.md`` before any result):
  clothing   TUNING  10 classes (products, 7x imbalance)      1,500 pool / 600 test mosaics
  intel      REPORT  6 classes (scenes, balanced)             1,500 pool / 600 test mosaics
  dtd10      REPORT  10 classes (textures, balanced)          1,500 pool / 600 test mosaics (second report set)
  cifar10    TUNING  10 classes (objects, balanced, 32 px)    1,500 pool / 600 test mosaics (second tuning
             set, added by results/multilabel_al_retune_plan.md)

Layout (``build``): ``cache/<name>/split<split>/`` holds ``images/pool/*.jpg``, ``images/test/*.jpg``,
``pool.csv`` and ``test.csv`` (manifests ``path,labels``: paths relative to the CSV's folder, labels
joined by ``;``), ``classes.txt``, and after :func:`load_embeddings` ``embeddings.npy`` (rows in
``pool.csv`` then ``test.csv`` order). The cache lives outside the repository (``DEFAULT_CACHE``); the
photos are read from ``photo_data``'s cache, read only.

Usage (from the repository root):
  python benchmarks/multilabel_data.py [NAME ...] [--split N]   build + embed (all sets when none is named)
  python benchmarks/multilabel_data.py --check                  a self-check on a tiny dtd10 export
  ``from benchmarks.multilabel_data import build, manifests, load_embeddings, classes``
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import photo_data  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "tlkit-multilabel-cache"
#: Tile side in pixels; a mosaic is 2 x 2 tiles (224 px, the embedding size of photo_data).
TILE = 112
MOSAIC = 2 * TILE
#: Second entry of every mosaic seed (``[split, MOSAIC_SEED, side]``): keeps mosaic draws apart from
#: photo_data's split seeds ``[split, 1]`` / ``[split, 2]``; the issue number.
MOSAIC_SEED = 30
#: P(1, 2, 3, 4 distinct classes in a mosaic): uniform, so a quarter of the mosaics are one class and the
#: mean label cardinality is 2.5 (before the rare repeats of a class with few photos).
DISTINCT_P = (0.25, 0.25, 0.25, 0.25)
#: Label delimiter in the manifests (tlkit's default for ``--label-delim``).
DELIM = ";"
JPEG_QUALITY = 92
EMBED_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class MosaicSet:
    """A multi-label mosaic set over photo set ``photos`` with ``n_pool`` / ``n_test`` mosaics per split."""

    name: str
    photos: str
    role: str
    n_pool: int = 1500
    n_test: int = 600


SETS: dict[str, MosaicSet] = {s.name: s for s in (
    MosaicSet("clothing", "clothing", "tuning"),
    MosaicSet("intel", "intel", "report"),
    MosaicSet("dtd10", "dtd10", "report"),
    # a second, balanced tuning set (results/multilabel_al_retune_plan.md); cifar10 is a photo tuning set
    MosaicSet("cifar10", "cifar10", "tuning"),
)}


def get_set(name: str) -> MosaicSet:
    if name not in SETS:
        raise ValueError(f"unknown multi-label set {name!r}; choose one of: {', '.join(SETS)}")
    return SETS[name]


def classes(name: str, photo_cache: Path = photo_data.DEFAULT_CACHE) -> list[str]:
    """Class names of set ``name``, sorted (the columns of the ``Y`` arrays of :func:`load_embeddings`)."""
    return photo_data.classes(get_set(name).photos, photo_cache)


# -- drawing --------------------------------------------------------------------------------------

def _draw(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """``n`` mosaics over photos with class indices ``labels`` [m]: per mosaic (4 photo positions into
    ``labels``, the sorted distinct class indices)."""
    present = np.unique(labels)
    counts = np.array([np.sum(labels == c) for c in present], float)
    cycles = {int(c): [] for c in present}
    members = {int(c): np.flatnonzero(labels == c) for c in present}

    def next_photo(c: int, used: set[int]) -> int:
        for _ in range(2):
            if not cycles[c]:
                cycles[c] = list(rng.permutation(members[c]))
            for j, p in enumerate(cycles[c]):
                if p not in used:
                    return int(cycles[c].pop(j))
            if len(members[c]) <= len(used):
                break
        return int(rng.choice(members[c]))  # the class has fewer photos than tiles: a repeat

    out = []
    for _ in range(n):
        d = min(int(rng.choice(4, p=DISTINCT_P)) + 1, len(present))
        chosen = rng.choice(present, d, replace=False, p=counts / counts.sum())
        tiles = list(chosen) + list(rng.choice(chosen, 4 - d))
        tiles = [int(tiles[i]) for i in rng.permutation(4)]
        used: set[int] = set()
        photos = []
        for c in tiles:
            p = next_photo(c, used)
            used.add(p)
            photos.append(p)
        out.append((photos, sorted({int(c) for c in chosen})))
    return out


def _tile(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return im.resize((TILE, TILE), Image.BICUBIC)


def _compose(paths: list[Path]):
    from PIL import Image

    canvas = Image.new("RGB", (MOSAIC, MOSAIC))
    for k, p in enumerate(paths):
        canvas.paste(_tile(p), ((k % 2) * TILE, (k // 2) * TILE))
    return canvas


# -- building -------------------------------------------------------------------------------------

def build(name: str, split: int = 0, cache: Path = DEFAULT_CACHE,
          photo_cache: Path = photo_data.DEFAULT_CACHE, *, n_pool: int | None = None,
          n_test: int | None = None) -> Path:
    """Make split ``split`` of mosaic set ``name`` (once) and return its folder ``cache/<name>/split<split>``.

    The photos come from ``photo_data``'s split ``split`` of the same photo set (pool mosaics from its
    pool, test mosaics from its test set). ``n_pool`` / ``n_test`` override the set's sizes (the
    ``--check`` run uses them; a folder built with other sizes is rebuilt).
    """
    spec = get_set(name)
    n_pool = spec.n_pool if n_pool is None else n_pool
    n_test = spec.n_test if n_test is None else n_test
    out = Path(cache) / name / f"split{split}"
    stamp = f"{spec.photos} split {split} pool {n_pool} test {n_test} seed {MOSAIC_SEED} tile {TILE}\n"
    if (out / "done.txt").is_file() and (out / "done.txt").read_text() == stamp:
        return out
    recs = photo_data.exported(spec.photos, photo_cache)
    names = photo_data.classes(spec.photos, photo_cache)
    images = photo_data.export(spec.photos, photo_cache) / "images"
    y = np.array([names.index(r.label) for r in recs])
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    for side, (part, idx, n) in enumerate(zip(("pool", "test"), photo_data.split_indices(spec.photos, split, photo_cache),
                                              (n_pool, n_test)), start=1):
        rng = np.random.default_rng([split, MOSAIC_SEED, side])
        (tmp / "images" / part).mkdir(parents=True)
        rows = []
        for k, (photos, labs) in enumerate(_draw(y[idx], n, rng)):
            rel = f"images/{part}/{part}{k:05d}.jpg"
            _compose([images / recs[idx[p]].path for p in photos]).save(tmp / rel, quality=JPEG_QUALITY)
            rows.append((rel, DELIM.join(names[c] for c in labs), "|".join(recs[idx[p]].path for p in photos)))
        with open(tmp / f"{part}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels"])
            w.writerows(r[:2] for r in rows)
        with open(tmp / f"{part}_sources.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "labels", "photos"])
            w.writerows(rows)
    (tmp / "classes.txt").write_text("\n".join(names) + "\n")
    (tmp / "done.txt").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def manifests(name: str, split: int = 0, cache: Path = DEFAULT_CACHE,
              photo_cache: Path = photo_data.DEFAULT_CACHE) -> tuple[Path, Path]:
    """``(pool.csv, test.csv)`` of split ``split`` of set ``name`` (built once): ``path,labels`` manifests
    whose labels are joined by ``;``, ready for ``tlkit finetune`` / ``evaluate`` / ``predict``."""
    folder = build(name, split, cache, photo_cache)
    return folder / "pool.csv", folder / "test.csv"


def read_manifest(path: Path, names: list[str]) -> tuple[list[str], np.ndarray]:
    """``(paths, Y)`` of a mosaic manifest: paths relative to its folder, ``Y`` [n, k] uint8 multi-hot."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.zeros((len(rows), len(names)), np.uint8)
    col = {c: i for i, c in enumerate(names)}
    for i, r in enumerate(rows):
        for lab in filter(None, r["labels"].split(DELIM)):
            y[i, col[lab]] = 1
    return [r["path"] for r in rows], y


def labels(name: str, split: int = 0, cache: Path = DEFAULT_CACHE,
           photo_cache: Path = photo_data.DEFAULT_CACHE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(Y_pool, Y_test, classes)``: [n, k] uint8 multi-hot labels of split ``split`` (no embedding)."""
    names = classes(name, photo_cache)
    pool_csv, test_csv = manifests(name, split, cache, photo_cache)
    return read_manifest(pool_csv, names)[1], read_manifest(test_csv, names)[1], names


def load_embeddings(name: str, split: int = 0, cache: Path = DEFAULT_CACHE,
                    photo_cache: Path = photo_data.DEFAULT_CACHE
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(x_pool, x_test, Y_pool, Y_test, classes)`` of split ``split`` of mosaic set ``name``.

    ``x_*`` are ``[n, 1280]`` float32 embeddings of the 224 px mosaics by tlkit's own extract
    (efficientnet_lite0 with the offline weights tlkit ships, as ``photo_data.embeddings``), computed once
    into ``embeddings.npy``; ``Y_*`` are ``[n, k]`` uint8 multi-hot labels whose columns are ``classes``.

    Example:
        >>> xp, xt, yp, yt, names = load_embeddings("intel", 0)   # 1,500 / 600 mosaics, 6 classes
    """
    folder = build(name, split, cache, photo_cache)
    names = classes(name, photo_cache)
    pool_paths, y_pool = read_manifest(folder / "pool.csv", names)
    test_paths, y_test = read_manifest(folder / "test.csv", names)
    f = folder / "embeddings.npy"
    if not f.is_file():
        from tlkit.features.extract import extract_features, load_features

        extract_features(folder / "images", folder / "extract", backbone=EMBED_BACKBONE, image_size=MOSAIC)
        x, idx, _ = load_features(folder / "extract", mmap=False)
        row = {"images/" + photo_data._rel(r["path"], folder / "images"): i for i, r in enumerate(idx)}
        files = pool_paths + test_paths
        missing = [p for p in files if p not in row]
        if missing:
            raise RuntimeError(f"{len(missing)} mosaics of {name} split {split} have no embedding (e.g. "
                               f"{missing[0]}); delete {folder / 'extract'} and run again")
        x = np.asarray(x, np.float32)[[row[p] for p in files]]
        np.save(f.with_suffix(".tmp.npy"), x)
        f.with_suffix(".tmp.npy").rename(f)
    x = np.load(f)
    n = len(pool_paths)
    return x[:n], x[n:], y_pool, y_test, names


def load_crop_embeddings(name: str, split: int = 0, frac: float = 0.5, cache: Path = DEFAULT_CACHE,
                         photo_cache: Path = photo_data.DEFAULT_CACHE) -> np.ndarray:
    """``[n_pool, 4, 1280]`` embeddings of four corner crops of each pool mosaic (``pool.csv`` order), each
    crop ``frac`` of the mosaic's side, resized to 224 px by tlkit's extract (as :func:`load_embeddings`).

    ``frac = 0.5`` cuts exactly the mosaic's four cells (an upper bound of what crops give: real photos do
    not put one object per quadrant); ``frac = 2/3`` cuts overlapping crops that straddle the cells. For the
    audit's tile-evidence study (``results/multilabel_audit_tiles_plan.md``). Cached as
    ``crops<frac>/crops.npy`` beside the mosaics.
    """
    from PIL import Image

    folder = build(name, split, cache, photo_cache)
    paths, _ = read_manifest(folder / "pool.csv", classes(name, photo_cache))
    out = folder / f"crops{frac:.2f}"
    f = out / "crops.npy"
    if not f.is_file():
        from tlkit.features.extract import extract_features, load_features

        crops = out / "images"
        crops.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(paths):
            with Image.open(folder / p) as im:
                im = im.convert("RGB")
                w, h = im.size
                cw, ch = round(frac * w), round(frac * h)
                for t, (a, b) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
                    x0, y0 = a * (w - cw), b * (h - ch)
                    im.crop((x0, y0, x0 + cw, y0 + ch)).save(crops / f"{i:05d}_{t}.png")
        extract_features(crops, out / "extract", backbone=EMBED_BACKBONE, image_size=MOSAIC)
        x, idx, _ = load_features(out / "extract", mmap=False)
        row = {Path(r["path"]).name: j for j, r in enumerate(idx)}
        x = np.asarray(x, np.float32)
        xc = np.stack([x[[row[f"{i:05d}_{t}.png"] for t in range(4)]] for i in range(len(paths))])
        np.save(f.with_suffix(".tmp.npy"), xc)
        f.with_suffix(".tmp.npy").rename(f)
        shutil.rmtree(crops)
    return np.load(f)


# -- command line ---------------------------------------------------------------------------------

def describe(name: str, split: int = 0, cache: Path = DEFAULT_CACHE) -> str:
    yp, yt, names = labels(name, split, cache)
    card = np.concatenate([yp, yt]).sum(1)
    freq = yp.mean(0)
    return (f"{name} split {split}: pool {len(yp)}, test {len(yt)} mosaics, {len(names)} classes; "
            f"labels per mosaic {card.mean():.2f} (1: {np.mean(card == 1):.0%}, 4: {np.mean(card == 4):.0%}); "
            f"class frequency in the pool {freq.min():.2f}-{freq.max():.2f}")


def check() -> None:
    """A self-check on dtd10 exported at 6 photos per class into a temporary cache."""
    with tempfile.TemporaryDirectory() as tmp:
        pcache, mcache = Path(tmp) / "photos", Path(tmp) / "mosaics"
        photo_data.export("dtd10", pcache, per_class=6)
        folder = build("dtd10", 0, mcache, pcache, n_pool=40, n_test=20)
        names = photo_data.classes("dtd10", pcache)
        pool_paths, yp = read_manifest(folder / "pool.csv", names)
        _, yt = read_manifest(folder / "test.csv", names)
        assert yp.shape == (40, 10) and yt.shape == (20, 10), "shapes"
        assert yp.sum(1).min() >= 1 and yp.sum(1).max() <= 4, "1 to 4 labels per mosaic"
        pool_idx, test_idx = photo_data.split_indices("dtd10", 0, pcache)
        recs = photo_data.exported("dtd10", pcache)
        pool_src = {recs[i].path for i in pool_idx}
        test_src = {recs[i].path for i in test_idx}
        for part, allowed in (("pool", pool_src), ("test", test_src)):
            with open(folder / f"{part}_sources.csv", newline="") as f:
                for r in csv.DictReader(f):
                    photos = r["photos"].split("|")
                    assert set(photos) <= allowed, f"{part} mosaic uses a photo of the other side"
                    assert {p.split("/")[0] for p in photos} == set(r["labels"].split(DELIM)), "labels = classes"
        from PIL import Image

        with Image.open(folder / pool_paths[0]) as im:
            assert im.size == (MOSAIC, MOSAIC), "mosaic size"
        again = build("dtd10", 0, Path(tmp) / "again", pcache, n_pool=40, n_test=20)
        assert (again / "pool.csv").read_text() == (folder / "pool.csv").read_text(), "not deterministic"
    print("check ok: dtd10 mosaics 40/20, 1-4 labels each, labels = tile classes, pool/test photos disjoint, seeded")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--split", type=int, action="append")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--no-embed", action="store_true", help="build the mosaics only")
    a = ap.parse_args(argv)
    if a.check:
        return check()
    for name in a.names or list(SETS):
        for split in a.split or [0]:
            t0 = time.perf_counter()
            build(name, split)
            t1 = time.perf_counter()
            if not a.no_embed:
                load_embeddings(name, split)
            t2 = time.perf_counter()
            print(f"{describe(name, split)}; build {t1 - t0:.0f} s, embed {t2 - t1:.0f} s", flush=True)
    print(f"cache {DEFAULT_CACHE}")


if __name__ == "__main__":
    main(sys.argv[1:])
