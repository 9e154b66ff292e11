"""Tuning study for `tlkit audit`'s label check, on the tuning photo sets only (cifar10, clothing).

5 % of a pool's labels are flipped (as ``bench_audit_photos.py`` does); each variant produces
out-of-fold probabilities and a suspicion ranking; the figure is the share of flipped images among the
k most suspicious (k = number flipped). Variants: the head's inverse regularisation ``C``, the
ranking score (cleanlab's self-confidence, normalised margin), and a k-NN label-agreement term.

Usage:
    python benchmarks/tune_audit.py --sets clothing,cifar10 --splits 100,101,102,103,104
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_data  # noqa: E402
from bench_audit_photos import flip_labels  # noqa: E402


def oof(x, y, k, C):
    from tlkit.active import head as heads
    from tlkit.audit import labels as lab

    old = heads.DEFAULT_C
    try:
        return lab.out_of_fold_probs(x, y, k, scaler=heads.Scaler.fit(x)) if C is None else _oof_c(x, y, k, C)
    finally:
        heads.DEFAULT_C = old


def _oof_c(x, y, k, C):
    from sklearn.model_selection import StratifiedKFold

    from tlkit.active import head as heads

    scaler = heads.Scaler.fit(x)
    classes = tuple(str(c) for c in range(k))
    smallest = np.bincount(y, minlength=k)[np.unique(y)].min()
    probs = np.zeros((len(y), k), np.float32)
    for tr, te in StratifiedKFold(min(5, smallest), shuffle=True, random_state=0).split(x, y):
        head = heads.fit_head(x[tr], y[tr], classes, scaler=scaler, C=C)
        probs[te] = head.predict_proba(x[te])
    return probs


def knn_agreement(x, y, k, n_neighbours=10):
    """``[m, k]`` share of each row's nearest neighbours (cosine, itself excluded) in each class."""
    xn = x - x.mean(0)
    xn /= np.linalg.norm(xn, axis=1, keepdims=True) + 1e-12
    out = np.zeros((len(y), k), np.float32)
    for i in range(0, len(y), 2048):
        s = xn[i : i + 2048] @ xn.T
        s[np.arange(s.shape[0]), np.arange(i, i + s.shape[0])] = -np.inf
        nb = np.argpartition(-s, n_neighbours, axis=1)[:, :n_neighbours]
        for c in range(k):
            out[i : i + 2048, c] = (y[nb] == c).mean(1)
    return out


def topk(score_low_is_suspect, flip):
    k = len(flip)
    return len(set(np.argsort(score_low_is_suspect, kind="stable")[:k].tolist()) & set(flip.tolist())) / k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sets", default="clothing,cifar10")
    ap.add_argument("--splits", default="100,101,102,103,104")
    ap.add_argument("--Cs", default="0.03,0.01,0.003,0.001")
    args = ap.parse_args(argv)
    Cs = [float(c) for c in args.Cs.split(",")]
    for name in args.sets.split(","):
        res: dict[str, list[float]] = {}
        for split in (int(s) for s in args.splits.split(",")):
            x, _, y_true, _ = photo_data.load(name, split)
            x, y_true = np.asarray(x, np.float32), np.asarray(y_true)
            k = len(photo_data.classes(name))
            y, flip = flip_labels(y_true, k, split)
            rows = np.arange(len(y))
            knns = {nb: knn_agreement(x, y, k, nb)[rows, y] for nb in (10, 20)}
            res.setdefault("knn10 self-agreement", []).append(topk(knns[10], flip))
            for C in Cs:
                p = _oof_c(x, y, k, C)
                sc = p[rows, y]
                other = np.where(np.eye(k, dtype=bool)[y], -np.inf, p).max(1)
                res.setdefault(f"C={C} self-confidence", []).append(topk(sc, flip))
                res.setdefault(f"C={C} normalised margin", []).append(topk(sc - other, flip))
                for nb, kn in knns.items():
                    for w in (0.3, 0.5, 0.7):
                        res.setdefault(f"C={C} self-conf + {w} knn{nb}", []).append(topk((1 - w) * sc + w * kn, flip))
            print(name, split, {kk: round(v[-1], 3) for kk, v in res.items()}, flush=True)
        print(f"\n{name}: mean top-k recall over splits {args.splits}")
        for kk, v in sorted(res.items(), key=lambda kv: -np.mean(kv[1])):
            print(f"  {kk:32s} {100 * np.mean(v):.1f} % (min {100 * min(v):.1f} %)")


if __name__ == "__main__":
    main()
