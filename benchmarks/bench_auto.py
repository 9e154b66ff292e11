"""Benchmark: is `auto` the best strategy at every budget? Three feature sets, as in the README.

Datasets:
  digits-pixels  scikit-learn digits, raw 64-d pixels (70/30 stratified split)
  digits-lite0   the same digits rendered as PNGs, efficientnet_lite0 embeddings at 224 px
  photos         small crops (10-30 % of the side) of 15 skimage.data photos and textures,
                 efficientnet_lite0 at 224 px

Protocol: start 10 random labels (same for every strategy), batches of 10, 19 rounds (to 200 labels),
5 seeds; head = logistic regression on pool-standardised features. Prints accuracy at 10/20/50/100/200
labels, AUBC per strategy, and whether `auto` is within 1 point of the best at every budget.

Usage:
    python benchmarks/bench_auto.py [--datasets digits-pixels,digits-lite0,photos] [--seeds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGETS = (10, 20, 50, 100, 200)
STRATEGIES = "random,margin,typiclust,badge,coreset,probcover,auto"


def digits_pixels(_: Path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(d.data.astype(np.float32), d.target, test_size=0.3, stratify=d.target, random_state=0)


def _embed(src: Path, out: Path):
    from tlkit.extract import extract_features, load_features

    extract_features(src, out, image_size=224)
    x, idx, _ = load_features(out)
    return np.asarray(x, np.float32), [r["label"] for r in idx], [r["path"] for r in idx]


def digits_lite0(tmp: Path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tlkit.demo import make_digits_folder

    x, _, paths = _embed(make_digits_folder(tmp / "digits"), tmp / "digits-f")
    order = np.argsort([int(Path(p).stem) for p in paths])
    y = load_digits().target
    return train_test_split(x[order], y, test_size=0.3, stratify=y, random_state=0)


def photos(tmp: Path):
    from tlkit.demo import PHOTOS_15, make_photo_crops_folder

    kw = {"photos": PHOTOS_15, "scale": (0.1, 0.3)}
    x, yl, _ = _embed(make_photo_crops_folder(tmp / "pool", per_class=80, seed=3, **kw), tmp / "pool-f")
    xt, ytl, _ = _embed(make_photo_crops_folder(tmp / "test", per_class=30, seed=4, **kw), tmp / "test-f")
    classes = sorted(set(yl))
    return x, xt, np.array([classes.index(c) for c in yl]), np.array([classes.index(c) for c in ytl])


DATASETS = {"digits-pixels": digits_pixels, "digits-lite0": digits_lite0, "photos": photos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    from tlkit.active.simulate import simulate

    strategies = args.strategies.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            xtr, xte, ytr, yte = DATASETS[name](Path(tmp) / name)
            t = time.perf_counter()
            res = simulate(xtr, ytr, xte, yte, strategies=strategies, start=10, batch=10, rounds=19, seeds=args.seeds)
            print(f"\n{name}: pool {len(xtr)}, test {len(xte)}, dim {xtr.shape[1]}, {args.seeds} seeds "
                  f"({time.perf_counter() - t:.0f} s)")
            print(f"{'strategy':<12}" + "".join(f"{b:>7}" for b in BUDGETS) + f"{'AUBC':>9}")
            for s, v in sorted(res.summary.items(), key=lambda kv: -kv[1]["aubc"]):
                ma = v["mean_accuracy"]
                print(f"{s:<12}" + "".join(f"{100 * ma[b]:>7.1f}" for b in BUDGETS) + f"{v['aubc']:>9.4f}")
            best = {b: max(v["mean_accuracy"][b] for v in res.summary.values()) for b in res.budgets}
            gap = max(best[b] - res.summary["auto"]["mean_accuracy"][b] for b in res.budgets)
            top = max(res.summary, key=lambda s: res.summary[s]["aubc"])
            print(f"auto: worst gap to the best strategy over all budgets {100 * gap:.1f} points "
                  f"(target <= 1.0); highest AUBC: {top}")


if __name__ == "__main__":
    main()
