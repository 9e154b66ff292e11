"""`tlkit audit` targets, on data the tests do not use.

    python benchmarks/bench_audit.py dups     # threshold study + near-duplicate recall/precision
    python benchmarks/bench_audit.py labels   # flipped-label top-k recall (digits, photo crops)
    python benchmarks/bench_audit.py leak     # leakage between two folders, found exactly?
    python benchmarks/bench_audit.py knn      # 100,000 x 1,280 neighbour search: time + peak RSS, vs faiss

Data: scikit-learn digits (the 1,797 scans, rendered at 32 px) and crops of the 15 scikit-image photos
(``tlkit.demo.PHOTOS_15``), embedded with efficientnet_lite0 at ``--image-size`` (default 224, the
backbone's own). Copies for the duplicate study: JPEG re-encoded at quality 70, resized to half size,
and a 90 % centre crop, of randomly chosen originals. "Distinct" pairs are pairs of different source
images; for photo crops, pairs of crops that overlap by more than 30 % (IoU) are left out of the
precision count, since they show largely the same pixels.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COPY_KINDS = ("reencode", "resize", "crop90")


def make_copy(img: Image.Image, kind: str) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    if kind == "resize":
        return img.resize((max(8, w // 2), max(8, h // 2)), Image.BICUBIC)
    if kind == "crop90":
        dw, dh = int(round(w * 0.05)), int(round(h * 0.05))
        return img.crop((dw, dh, w - dw, h - dh))
    return img  # re-encoded as JPEG q=70 by the caller


def base_digits(root: Path, n: int, seed: int) -> list[tuple[Path, str, int]]:
    from tlkit.demo import digits_arrays, render_digit

    images, labels = digits_arrays()
    idx = np.random.default_rng(seed).choice(len(labels), n, replace=False)
    out = []
    for i in idx:
        f = root / str(labels[i]) / f"d{int(i):04d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        if not f.exists():
            render_digit(images[i], 32).save(f)
        out.append((f, str(labels[i]), int(i)))
    return out


def base_photos(root: Path, per_class: int, seed: int, size: int = 96) -> tuple[list, dict]:
    """Crops (10-30 % of the side) of the 15 photos; returns [(file, class, id)] and id -> (photo, box)."""
    from skimage import data as skdata

    from tlkit.demo import PHOTOS_15

    rng = np.random.default_rng(seed)
    out, boxes = [], {}
    for name in PHOTOS_15:
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        w, h = photo.size
        for k in range(per_class):
            side = int(min(w, h) * rng.uniform(0.1, 0.3))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            f = root / name / f"p{k:03d}.jpg"
            f.parent.mkdir(parents=True, exist_ok=True)
            if not f.exists():
                photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC).save(f, quality=92)
            uid = len(boxes)
            boxes[uid] = (name, (x, y, x + side, y + side))
            out.append((f, name, uid))
    return out, boxes


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def add_copies(base: list, n_copies: int, seed: int) -> list[tuple[Path, str, int, str]]:
    """Copies of randomly chosen originals, next to them; returns [(file, class, source id, kind)]."""
    rng = np.random.default_rng(seed)
    out = []
    for j, b in enumerate(rng.choice(len(base), n_copies, replace=False)):
        f, label, uid = base[b]
        kind = COPY_KINDS[j % len(COPY_KINDS)]
        dst = f.with_name(f"{f.stem}_{kind}.jpg" if kind == "reencode" else f"{f.stem}_{kind}.png")
        if not dst.exists():
            img = make_copy(Image.open(f), kind)
            img.save(dst, quality=70) if kind == "reencode" else img.save(dst)
        out.append((dst, label, uid, kind))
    return out


def embed(folder: Path, image_size: int):
    from tlkit.features.extract import extract_features, load_features

    extract_features(folder, folder.parent / (folder.name + "-feats"), image_size=image_size)
    feats, index, meta = load_features(folder.parent / (folder.name + "-feats"), mmap=False)
    root = Path(meta["source"]["root"])
    return np.asarray(feats, np.float32), [str(root / r["path"]) for r in index]


def dup_study(work: Path, image_size: int) -> None:
    """Files already in a kept ``--work`` are not rewritten (same seeds, same images), so features are reused."""
    from tlkit.audit.duplicates import DEFAULT_THRESHOLD
    from tlkit.audit.neighbours import normalise, search

    sets = {}
    digits = work / "digits"
    base = base_digits(digits, 400, seed=11)
    sets["digits"] = (digits, base, add_copies(base, 120, seed=12), None)
    photos = work / "photos"
    pbase, boxes = base_photos(photos, 27, seed=13)
    sets["photo crops"] = (photos, pbase, add_copies(pbase, 120, seed=14), boxes)
    for name, (folder, base, copies, boxes) in sets.items():
        feats, files = embed(folder, image_size)
        _combined_study(name, feats, files, base, copies, boxes)
        if os.environ.get("BENCH_EMBEDDING_ONLY") is None:
            continue
        row = {f: i for i, f in enumerate(files)}
        uid_of = {str(f): uid for f, _, uid in base} | {str(f): uid for f, _, uid, _ in copies}
        uids = np.array([uid_of[f] for f in files])
        for rep in ("raw", "centred"):
            x = feats - feats.mean(0) if rep == "centred" else feats
            xn = normalise(x)
            copy_cos = {k: [] for k in COPY_KINDS}
            for f, _, uid, kind in copies:
                src = next(str(b[0]) for b in base if b[2] == uid)
                copy_cos[kind].append(float(xn[row[str(f)]] @ xn[row[src]]))
            nb = search(xn, k=1, threshold=0.5)
            i, j = nb.pairs[:, 0], nb.pairs[:, 1]
            distinct = uids[i] != uids[j]
            if boxes is not None:
                ok = np.array([boxes[a][0] != boxes[b][0] or iou(boxes[a][1], boxes[b][1]) < 0.3
                               for a, b in zip(uids[i], uids[j])], bool)
                distinct &= ok
            top_distinct = np.sort(nb.cosine[distinct])[::-1]
            print(f"\n{name} ({len(files)} images, {len(copies)} copies), {rep} features:")
            for k, v in copy_cos.items():
                print(f"  copy cosine {k:9s}: min {min(v):.4f}  p5 {np.percentile(v, 5):.4f}  median {np.median(v):.4f}")
            print(f"  distinct pairs: max cosine {top_distinct[0] if len(top_distinct) else 0:.4f}, "
                  f"99.99th pct of all distinct pairs > 0.5: {top_distinct[:5].round(4).tolist()}")
            for t in (0.85, 0.88, 0.9, 0.92, 0.94, 0.95, DEFAULT_THRESHOLD):
                _recall_precision(xn, nb, uids, distinct, copies, row, base, t, rep, name)


def _truth(files, base, copies, boxes):
    row = {f: i for i, f in enumerate(files)}
    uid_of = {str(f): uid for f, _, uid in base} | {str(f): uid for f, _, uid, _ in copies}
    uids = np.array([uid_of[f] for f in files])
    src_row = {b[2]: row[str(b[0])] for b in base}
    want = {(min(row[str(f)], src_row[uid]), max(row[str(f)], src_row[uid])) for f, _, uid, _ in copies}

    def is_distinct(a: int, b: int) -> bool:
        if uids[a] == uids[b]:
            return False
        if boxes is None:
            return True
        (pa, ba), (pb, bb) = boxes[uids[a]], boxes[uids[b]]
        return pa != pb or iou(ba, bb) < 0.3

    return want, is_distinct


def _combined_study(name, feats, files, base, copies, boxes) -> None:
    """Recall/precision of near_pairs (thumbnails + embedding cosine) over a grid of the two thresholds."""
    from tlkit.audit.duplicates import near_pairs
    from tlkit.audit.neighbours import normalise
    from tlkit.audit.pixels import thumbnails

    want, is_distinct = _truth(files, base, copies, boxes)
    xn = normalise(feats)
    for side in (16, 24):
      whole, centre, _ = thumbnails([Path(f) for f in files], side=side)
      print(f"\n{name}: {side}x{side} thumbnails + embedding cosine ({len(files)} images, {len(want)} copies)")
      for tp in (0.97, 0.98, 0.985, 0.99):
        for te in (0.6, 0.7, 0.8):
            pairs, *_ = near_pairs(xn, (whole, centre), threshold=te, pixel_threshold=tp)
            got = {tuple(p) for p in pairs.tolist()}
            false = sum(is_distinct(a, b) for a, b in got)
            true = len(got) - false
            print(f"  pixel {tp:.3f} embedding {te:.2f}: recall {len(want & got) / len(want):.3f}  "
                  f"precision {true / max(1, true + false):.3f}  (false pairs {false})")


def _recall_precision(xn, nb, uids, distinct, copies, row, base, t, rep, name) -> None:
    sel = nb.cosine >= t
    src_row = {}
    for b in base:
        src_row[b[2]] = row[str(b[0])]
    want = {(min(row[str(f)], src_row[uid]), max(row[str(f)], src_row[uid])) for f, _, uid, _ in copies}
    got_true = {tuple(p) for p, s, d in zip(nb.pairs.tolist(), sel, distinct) if s and not d}
    got_false = int((sel & distinct).sum())
    recall = len(want & got_true) / len(want)
    precision = len(got_true) / max(1, len(got_true) + got_false)
    print(f"  threshold {t:.2f}: recall {recall:.3f}  precision {precision:.3f}  (false pairs {got_false})")


def label_study(work: Path, image_size: int, seed: int = 21) -> None:
    """5 % of labels flipped at random: share of them among the k most suspicious (k = number flipped)."""
    from tlkit.active.head import Scaler
    from tlkit.audit.labels import find_issues, out_of_fold_probs
    from tlkit.demo import PHOTOS_15, make_digits_folder, make_photo_crops_folder

    sets = {"digits": make_digits_folder(work / "ldigits", per_class=60, seed=seed),
            "photo crops": make_photo_crops_folder(work / "lphotos", per_class=40, photos=PHOTOS_15, seed=seed,
                                                   scale=(0.1, 0.3))}
    for name, folder in sets.items():
        feats, files = embed(folder, image_size)
        classes = sorted({Path(f).parent.name for f in files})
        y_true = np.array([classes.index(Path(f).parent.name) for f in files])
        rng = np.random.default_rng(seed)
        flip = rng.choice(len(y_true), int(round(0.05 * len(y_true))), replace=False)
        y = y_true.copy()
        y[flip] = (y[flip] + rng.integers(1, len(classes), len(flip))) % len(classes)
        t = time.perf_counter()
        probs = out_of_fold_probs(feats, y, len(classes), scaler=Scaler.fit(feats))
        found = find_issues(y, probs)
        k = len(flip)
        topk = len(set(found.ranking[:k].tolist()) & set(flip.tolist())) / k
        hits = len(set(found.issues.tolist()) & set(flip.tolist()))
        print(f"{name}: {len(y)} images, {k} flipped; top-{k} suspects hold {topk:.1%} of them; cleanlab flags "
              f"{len(found.issues)} (recall {hits / k:.1%}, precision {hits / max(1, len(found.issues)):.1%}); "
              f"{time.perf_counter() - t:.1f} s")


def leak_study(work: Path, image_size: int, seed: int = 31) -> None:
    """Two disjoint folders plus 20 test copies of training images (exact, re-encoded, resized, 90 % crop)."""
    from tlkit.audit import run_audit
    from tlkit.demo import PHOTOS_15, make_photo_crops_folder

    train = make_photo_crops_folder(work / "ltrain", per_class=20, photos=PHOTOS_15, seed=seed, scale=(0.1, 0.3))
    test = make_photo_crops_folder(work / "ltest", per_class=6, photos=PHOTOS_15, seed=seed + 1, scale=(0.1, 0.3))
    files = sorted(train.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    want = set()
    for j, b in enumerate(rng.choice(len(files), 20, replace=False)):
        f = files[b]
        kind = ("exact",) + COPY_KINDS
        kind = kind[j % 4]
        dst = test / f.parent.name / f"leak{j}_{kind}.jpg"
        if kind == "exact":
            dst.write_bytes(f.read_bytes())
        else:
            make_copy(Image.open(f), kind).save(dst, quality=70 if kind == "reencode" else 92)
        want.add((dst.relative_to(test).as_posix(), f.relative_to(train).as_posix()))
    res = run_audit(train, out=work / "lout", test=test, image_size=image_size, sheets=False)
    got = {(r["test_path"], r["train_path"]) for r in res.leaks}
    print(f"leakage: {len(want)} injected, {len(got)} reported, {len(want & got)} correct, "
          f"{len(got - want)} extra, {len(want - got)} missed -> {'exact' if got == want else 'NOT exact'}")


def knn_data(n: int, d: int = 1280) -> np.ndarray:
    """Synthetic relu-like clustered features (200 centres), seeded."""
    rng = np.random.default_rng(0)
    centers = rng.random((200, d), dtype=np.float32) * 2
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 10_000):
        m = min(10_000, n - i)
        x[i:i + m] = np.maximum(centers[rng.integers(0, 200, m)] + rng.normal(0, 0.5, (m, d)).astype(np.float32), 0)
    return x


def knn_child(n: int, peer: bool = False) -> None:
    """Run in a child process so that its peak RSS is the search's own. ``peer``: faiss's exact
    ``IndexFlatIP`` instead (k + 1 neighbours, the row itself dropped; pairs by ``range_search``)."""
    from tlkit.audit.duplicates import EMBEDDING_ONLY_THRESHOLD
    from tlkit.audit.neighbours import normalise, search

    x = knn_data(n)
    t, c = time.perf_counter(), time.process_time()
    xn = normalise(x)
    del x
    if peer:
        import faiss

        index = faiss.IndexFlatIP(xn.shape[1])
        index.add(xn)
        _, nbr = index.search(xn, 11)
        lims, _, found = index.range_search(xn, EMBEDDING_ONLY_THRESHOLD)
        what = f"faiss {faiss.__version__} IndexFlatIP ({nbr.shape}, {(len(found) - n) // 2} pairs)"
    else:
        nb = search(xn, k=10, threshold=EMBEDDING_ONLY_THRESHOLD)  # the pair search of the no-images path
        what = f"tlkit ({nb.index.shape}, {len(nb.pairs)} pairs)"
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"knn {n:,} x 1,280: k=10 neighbours + pairs, {what}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"peak RSS {rss:.2f} GB (input {n * 1280 * 4 / 2**30:.2f} GB)")


def knn_study(n: int) -> None:
    """tlkit's search, then faiss's exact flat index when installed (each in its own process)."""
    import importlib.util

    runs = [[], ["--peer"]]
    if importlib.util.find_spec("faiss") is None:  # a benchmark-only peer, never a dependency of tlkit
        runs = [[]]
        print("faiss not installed (pip install faiss-cpu): tlkit only")
    for extra in runs:
        proc = subprocess.run([sys.executable, __file__, "knn-child", "--n", str(n), *extra], capture_output=True,
                              text=True)
        print(proc.stdout.strip() or proc.stderr[-2000:], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["dups", "labels", "leak", "knn", "knn-child"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--peer", action="store_true", help="knn-child: faiss instead of tlkit")
    ap.add_argument("--work", type=Path, default=None, help="keep the images and features here (reused)")
    args = ap.parse_args()
    os.environ.setdefault("TLKIT_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.what == "dups":
            dup_study(work, args.image_size)
        elif args.what == "labels":
            label_study(work, args.image_size)
        elif args.what == "leak":
            leak_study(work, args.image_size)
        elif args.what == "knn":
            knn_study(args.n)
        else:
            knn_child(args.n, args.peer)


if __name__ == "__main__":
    main()
