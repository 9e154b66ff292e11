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


def head_round(x: np.ndarray, y_true: np.ndarray, name: str, labeled: int, batch: int) -> dict:
    """One head-mode round as ``al-round --train head`` runs it once the embeddings are cached: fit
    the head on ``labeled`` seeded labels (pool scaler and 5-fold CV included), score the pool,
    select ``batch``. Returns the timings and the pool accuracy; ``x`` may be a float16 memmap."""
    from tlkit.active.learner import HeadLearner
    from tlkit.active.strategies import PoolView, get_strategy, select

    rng = np.random.default_rng(1)
    y = np.full(len(x), -1)
    lab = rng.choice(len(x), labeled, replace=False)
    y[lab] = y_true[lab]
    classes = tuple(str(c) for c in range(int(y_true.max()) + 1))
    info = get_strategy(name)
    t = time.perf_counter()
    fitted = HeadLearner(x, classes).fit(y >= 0, y, seed=0, needs=info.needs)
    t_train = time.perf_counter() - t
    pool = PoolView(embeddings=x, labeled=y != -1, candidates=y == -1, probs=fitted.probs, mc_probs=fitted.mc_probs,
                    labels=np.where(y >= 0, y, -1))
    t = time.perf_counter()
    sel = select(name, pool, batch, seed=0)
    t_sel = time.perf_counter() - t
    assert len(set(sel.indices.tolist())) == batch and not (y[sel.indices] >= 0).any()
    return {"strategy": name, "train_score_s": round(t_train, 2), "select_s": round(t_sel, 2),
            "total_s": round(t_train + t_sel, 2), "accuracy": float((fitted.probs.argmax(1) == y_true).mean()),
            "cv": fitted.validation.accuracy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--strategies", default="auto,margin,entropy,random,coreset,typiclust")
    args = ap.parse_args()

    x, y_true = synthetic_pool(args.pool, args.dim, args.classes)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nhead-mode round: pool {args.pool:,} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MB), "
          f"{args.labeled} labeled, batch {args.batch}")
    print(f"{'strategy':<14}{'train+score s':>14}{'select s':>10}{'total s':>10}{'acc':>7}")
    for name in args.strategies.split(","):
        r = head_round(x, y_true, name, args.labeled, args.batch)
        flag = "" if r["total_s"] < 10 else "  (over the 10 s target)"
        print(f"{name:<14}{r['train_score_s']:>14.2f}{r['select_s']:>10.2f}{r['total_s']:>10.2f}{r['accuracy']:>7.3f}{flag}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB (after building the pool: {base_rss:.0f} MB)")
    print("train+score includes a 5-fold cross-validated accuracy estimate on the labels")


if __name__ == "__main__":
    main()
