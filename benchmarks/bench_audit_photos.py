"""Benchmark: does `tlkit audit` find injected label flips on real photographs?

For each real-photo set of ``benchmarks/photo_data.py`` and split, 5 % of the pool's labels are flipped
to another class at random (flip seed = seed), and the audit's label check runs exactly as ``tlkit
audit`` runs it (``tlkit.audit.labels.out_of_fold_probs`` and ``ranking_probs`` with the audit's
default folds, then ``find_issues`` with ``knn_agreement``: cleanlab's ``find_label_issues``, ranked by the audit's label
quality). Reported per set, averaged
over splits x seeds: the share of the flipped images among the k most suspicious (k = the number
flipped; the issue's bar is >= 80 % on every report set), and cleanlab's own flag list (recall,
precision).

Which sets are tuning and which report sets is fixed in ``benchmarks/results/photo_sets_plan.md``;
nothing in the audit was tuned for this benchmark.

Usage:
    python benchmarks/bench_audit_photos.py --sets grocery,intel,dtd10,caltech101 --splits 0,1,2,3,4 --seeds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_data  # noqa: E402

FLIP_SHARE = 0.05


def flip_labels(y: np.ndarray, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy y, flipped rows)``: ``FLIP_SHARE`` of the rows moved to another class, uniformly."""
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(y), int(round(FLIP_SHARE * len(y))), replace=False)
    noisy = y.copy()
    noisy[flip] = (noisy[flip] + rng.integers(1, n_classes, len(flip))) % n_classes
    return noisy, flip


def one_run(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> dict:
    """Top-k recall and cleanlab's flag recall/precision for one flip draw."""
    from tlkit.active.head import Scaler
    from tlkit.audit.labels import find_issues, knn_agreement, out_of_fold_probs, ranking_probs

    noisy, flip = flip_labels(y, n_classes, seed)
    t = time.perf_counter()
    scaler = Scaler.fit(x)
    probs = out_of_fold_probs(x, noisy, n_classes, scaler=scaler)
    rank = ranking_probs(x, noisy, n_classes, scaler=scaler)
    found = find_issues(noisy, probs, knn_agreement(x, noisy), rank)
    k, flipped = len(flip), set(flip.tolist())
    hits = len(set(found.issues.tolist()) & flipped)
    return {"topk": len(set(found.ranking[:k].tolist()) & flipped) / k, "flag_recall": hits / k,
            "flag_precision": hits / max(1, len(found.issues)), "k": k, "seconds": time.perf_counter() - t}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="grocery,intel,dtd10,caltech101")
    ap.add_argument("--splits", default="0,1,2,3,4")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)
    print("| set | pool | flipped | top-k recall (mean, min) | cleanlab flags: recall | precision | runs |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        runs = []
        for split in (int(s) for s in args.splits.split(",")):
            x, _, y, _ = photo_data.load(name, split)
            x, y = np.asarray(x, np.float32), np.asarray(y)
            n_classes = len(photo_data.classes(name))
            runs += [one_run(x, y, n_classes, seed) | {"n": len(y)} for seed in range(args.seeds)]
        topk = [r["topk"] for r in runs]
        print(f"| {name} | {runs[0]['n']} | {runs[0]['k']} | {100 * np.mean(topk):.1f} % ({100 * min(topk):.1f} %) | "
              f"{100 * np.mean([r['flag_recall'] for r in runs]):.1f} % | "
              f"{100 * np.mean([r['flag_precision'] for r in runs]):.1f} % | {len(runs)} |", flush=True)


if __name__ == "__main__":
    main()
