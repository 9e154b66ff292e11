"""Time every registered AL strategy on a large synthetic pool; compare diversity strategies to modAL.

Pool: ``--pool`` x ``--dim`` float32 embeddings drawn as clustered blobs (3 blobs per class), probs
from a softmax of a random linear map, ``mc_probs`` from T=10 perturbed maps, ``--labeled`` labeled
rows; every strategy selects ``--select`` rows.

Reference: modAL's ``uncertainty_batch_sampling`` (ranked batch), run on a random subsample of
``--modal-pool`` candidates and on half as many (its cost grows with the pool: each of its picks
scans every unlabeled row against the labeled set). Its time on the full pool is extrapolated along
the line through those two measurements; measured and extrapolated speedups are both printed.

Usage:
    python benchmarks/bench_strategies.py [--pool 20000] [--dim 1280] [--select 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modAL.batch import uncertainty_batch_sampling  # noqa: E402

from tlkit.active.strategies import PoolView, list_strategies, select  # noqa: E402
from tlkit.active.strategies.diversity import _PrecomputedLearner  # noqa: E402

DIVERSITY = ("coreset", "typiclust", "kmeans", "badge", "probcover", "maxherding", "clue")


def softmax(Z: np.ndarray, axis: int = -1) -> np.ndarray:
    Z = Z - Z.max(axis=axis, keepdims=True)
    E = np.exp(Z)
    return (E / E.sum(axis=axis, keepdims=True)).astype(np.float32)


def make_pool(n: int, d: int, k: int, n_labeled: int, T: int, seed: int) -> tuple[PoolView, np.ndarray]:
    """Synthetic pool of clustered blobs; returns the pool and the true class of every row."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3 * k, d), dtype=np.float32)
    blob = rng.integers(0, 3 * k, size=n)
    E = centers[blob]
    for start in range(0, n, 4096):  # float32 noise in blocks: no float64 [n, d] temporaries
        E[start : start + 4096] += 0.6 * rng.standard_normal((min(4096, n - start), d), dtype=np.float32)
    W = rng.standard_normal((d, k), dtype=np.float32)
    logits = E @ W
    logits *= 2.0 / logits.std()
    W_t = W[None] + 0.3 * rng.standard_normal((T, d, k), dtype=np.float32)
    mc = np.stack([softmax((E @ W_t[t]) * (2.0 / logits.std())) for t in range(T)], axis=2)
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    y = blob % k
    return PoolView(E, labeled, ~labeled, softmax(logits), mc, np.where(labeled, y, -1)), y


def timed(fn) -> tuple[float, float, object]:
    """(seconds, peak traced MiB of the call, result)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, out


def modal_reference(pool: PoolView, n_sub: int, n_select: int, seed: int) -> tuple[float, int]:
    """Seconds modAL's uncertainty_batch_sampling takes on ``n_sub`` candidates of the pool."""
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(pool.candidate_indices, min(n_sub, int(pool.candidates.sum())), replace=False))
    learner = _PrecomputedLearner(pool.probs[sub], pool.embeddings[pool.labeled])
    X = pool.embeddings[sub]
    t0 = time.perf_counter()
    uncertainty_batch_sampling(learner, X, n_instances=n_select)
    return time.perf_counter() - t0, sub.size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=200)
    ap.add_argument("--select", type=int, default=100)
    ap.add_argument("--passes", type=int, default=10, help="T stochastic passes for mc_probs")
    ap.add_argument("--modal-pool", type=int, default=5000, help="candidates modAL is run on (0: skip)")
    ap.add_argument("--strategies", nargs="*", default=None, help="default: all registered")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="limit BLAS/OpenMP threads (threadpoolctl)")
    args = ap.parse_args(argv)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (MiB, Linux)
    t0 = time.perf_counter()
    pool, y = make_pool(args.pool, args.dim, args.classes, args.labeled, args.passes, args.seed)
    n_cand = int(pool.candidates.sum())
    select("margin", pool, 1)  # import modAL (and torch, which it imports) before measuring
    print(f"pool {args.pool} x {args.dim} float32 ({pool.embeddings.nbytes / 2**20:.0f} MiB), {args.classes} classes, "
          f"{args.labeled} labeled, mc_probs T={args.passes}; select {args.select}; built in {time.perf_counter() - t0:.1f} s")
    rss_base = rss()

    rows = []
    for name in args.strategies or [s.name for s in list_strategies()]:
        seconds, peak, sel = timed(lambda: select(name, pool, args.select, seed=args.seed))
        rows.append((name, seconds, peak, np.unique(y[sel.indices]).size, rss()))
    rss_ours = rss()

    modal_full = None
    if args.modal_pool > 0:
        t_half, m_half = modal_reference(pool, args.modal_pool // 2, args.select, args.seed)
        t_modal, m = modal_reference(pool, args.modal_pool, args.select, args.seed)
        modal_full = t_modal + (t_modal - t_half) / max(m - m_half, 1) * (n_cand - m)  # affine through both
        print(f"modAL uncertainty_batch_sampling, measured: {t_half:.2f} s on {m_half} candidates, {t_modal:.2f} s on {m}; "
              f"extrapolated (line through both) to all {n_cand}: ~{modal_full:.1f} s")

    print(f"\n{'strategy':<17}{'time s':>8}{'peak MiB':>10}{'RSS MiB':>9}{'classes':>9}{'vs modAL@' + str(args.modal_pool):>15}"
          f"{'vs modAL@full':>15}")
    for name, seconds, peak, n_classes, hwm in rows:
        row = f"{name:<17}{seconds:>8.2f}{peak:>10.0f}{hwm:>9.0f}{n_classes:>9}"
        if name in DIVERSITY and modal_full is not None:
            row += f"{t_modal / seconds:>14.1f}x{modal_full / seconds:>14.1f}x"
        print(row + ("" if seconds <= 5 else "   (> 5 s target)"))
    print(f"\npeak RSS: {rss_base:.0f} MiB after imports (torch, via modAL) + pool; {rss_ours:.0f} MiB after every "
          f"strategy; {rss():.0f} MiB after modAL. 'peak MiB': numpy memory traced during the call; "
          "'RSS MiB': the process's peak RSS after the strategy (a high-water mark: it only grows); "
          "'classes': true classes among the picks")
    print(f"threads: {args.threads or 'default'}; load average (1, 5, 15 min): "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
