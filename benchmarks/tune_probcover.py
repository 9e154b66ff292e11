"""Tuning study of ProbCover's radius on real photos (tuning sets only; see results/probcover_tuning.txt).

Variants: the embeddings as they are or centred and L2-normalised (``centred_unit_rows``), and the
purity ``PROBCOVER_PURITY`` that sets δ. Each runs in tlkit's simulator with the plain head
(``ssl="off"``), start 10, batches of 10 up to 50 labels (ProbCover is a cold-start strategy).

Usage:
    python benchmarks/tune_probcover.py [--sets cifar10:100,cifar10:101,clothing:100,clothing:101]
        [--purities 0.95,0.6,0.4,0.3,0.2,0.1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_data  # noqa: E402


def run(name: str, split: int, purity: float, centred: bool, seeds: int) -> float:
    from tlkit.active.learner import HeadLearner
    from tlkit.active.simulate import simulate
    from tlkit.active.strategies import coldstart

    x, xt, y, yt = (np.asarray(a) for a in photo_data.load(name, split))
    classes = tuple(str(i) for i in range(int(max(y.max(), yt.max())) + 1))
    learner = HeadLearner(x.astype(np.float32), classes, x_test=xt.astype(np.float32), validate=False, ssl="off")
    plain = (lambda X: np.asarray(X, np.float32))
    with mock.patch.object(coldstart, "PROBCOVER_PURITY", purity), \
            mock.patch.object(coldstart, "centred_unit_rows", coldstart.centred_unit_rows if centred else plain):
        res = simulate(x, y, xt, yt, strategies=["probcover"], start=10, batch=10, rounds=4, seeds=seeds,
                       classes=classes, learner=learner)
    return res.summary["probcover"]["aubc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="cifar10:100,cifar10:101,clothing:100,clothing:101")
    ap.add_argument("--purities", default="0.95,0.6,0.4,0.3,0.2,0.1")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    sets = [(s.split(":")[0], int(s.split(":")[1])) for s in args.sets.split(",")]
    variants = [("raw", 0.95, False)] + [(f"centred-{p}", float(p), True) for p in args.purities.split(",")]
    for label, purity, centred in variants:
        areas = [run(name, split, purity, centred, args.seeds) for name, split in sets]
        print(f"{label:14s} mean AUBC to 50 labels {np.mean(areas):.3f}  "
              + "  ".join(f"{n}:{s} {a:.3f}" for (n, s), a in zip(sets, areas)), flush=True)


if __name__ == "__main__":
    main()
