"""Benchmark: one head-mode active-learning round on a large pool of cached embeddings.

Times what `tlkit al-round --train head` does after the embeddings are cached: fit the head
(pool-standardised logistic regression) on the labels, score the whole pool, select a batch. The
embeddings are synthetic (clustered Gaussians, float32) at the size of a real pool. Target on a
2-core CPU: < 10 s for 100,000 x 1,280. Also prints peak memory.

Usage:
    python benchmarks/bench_al.py [--pool 100000] [--dim 1280] [--labeled 1000] [--batch 100]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def synthetic_pool(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 10000):
        x[i : i + 10000] = centers[y[i : i + 10000]] + rng.normal(0, 2.0, (min(10000, n - i), d)).astype(np.float32)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--strategies", default="auto,margin,entropy,random,coreset,typiclust")
    args = ap.parse_args()

    from tlkit.active.learner import HeadLearner
    from tlkit.active.strategies import PoolView, get_strategy, select

    x, y_true = synthetic_pool(args.pool, args.dim, args.classes)
    rng = np.random.default_rng(1)
    y = np.full(args.pool, -1)
    lab = rng.choice(args.pool, args.labeled, replace=False)
    y[lab] = y_true[lab]
    classes = tuple(str(c) for c in range(args.classes))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nhead-mode round: pool {args.pool:,} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MB), "
          f"{args.labeled} labeled, batch {args.batch}")
    print(f"{'strategy':<14}{'train+score s':>14}{'select s':>10}{'total s':>10}{'acc':>7}")
    for name in args.strategies.split(","):
        info = get_strategy(name)
        t = time.perf_counter()
        fitted = HeadLearner(x, classes).fit(y >= 0, y, seed=0, needs=info.needs)  # as a round: scaler included
        probs, mc = fitted.probs, fitted.mc_probs
        t_train = time.perf_counter() - t
        pool = PoolView(embeddings=x, labeled=y != -1, candidates=y == -1, probs=probs, mc_probs=mc,
                        labels=np.where(y >= 0, y, -1))
        t = time.perf_counter()
        sel = select(name, pool, args.batch, seed=0)
        t_sel = time.perf_counter() - t
        acc = float((probs.argmax(1) == y_true).mean())
        total = t_train + t_sel
        flag = "" if total < 10 else "  (over the 10 s target)"
        print(f"{name:<14}{t_train:>14.2f}{t_sel:>10.2f}{total:>10.2f}{acc:>7.3f}{flag}")
        assert len(set(sel.indices.tolist())) == args.batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB (after building the pool: {base_rss:.0f} MB)")
    print("train+score includes a 5-fold cross-validated accuracy estimate on the labels")


if __name__ == "__main__":
    main()
