"""Benchmark: active learning at a million images, and what its approximations cost in selection quality.

Two parts:

``--pool N`` (default 1,000,000 x 1,280): one head-mode round per registered strategy, each in its
own process so that its peak RSS is its own, as ``tlkit al-round --train head`` runs it after the
embeddings are cached: the cache is a float16 (``--dtype``) ``.npy`` read as a memmap; fit the head
(pool-standardised logistic regression, 5-fold CV on the labels), score the pool, select a batch.
The embeddings are synthetic clustered Gaussians written once to ``--cache``. Targets: every
strategy < 60 s and < 6 GB peak RSS on a 2-core / 24 GB machine. ``--faiss 0`` measures the same
with faiss turned off (numpy/sklearn k-means).

``--aubc``: on real features (digits pixels, digits efficientnet_lite0, photo crops; the report
splits of ``bench_auto.py``), the simulator's AUBC for each geometric strategy three ways: exact;
with every big-pool approximation forced on (128-d projection, large-pool k-means through faiss);
``sampled``, the same with k-means trained on 32 rows per cluster (at a million, 256 per cluster of
a much larger pool); and with float16-rounded embeddings. Target: within 0.5 point of exact.

Usage:
    python benchmarks/bench_scale.py --pool 1000000 [--dim 1280] [--dtype float16] [--strategies ...]
    python benchmarks/bench_scale.py --aubc [--datasets digits-pixels,digits-lite0,photos] [--seeds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GEOMETRIC = "auto,maxherding,maxherding-entropy,clue,kmeans,coreset,typiclust,badge,probcover"


def make_pool(path: Path, n: int, d: int, dtype: str, k: int = 10, seed: int = 0) -> None:
    """Clustered Gaussians (k centres ~ N(0, 1), noise N(0, 2)) written block by block as ``.npy``."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d)).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, d))
    labels = rng.integers(0, k, n)
    for i in range(0, n, 20000):
        m = min(20000, n - i)
        out[i : i + m] = centers[labels[i : i + m]] + rng.normal(0, 2.0, (m, d)).astype(np.float32)
    out.flush()
    del out
    np.save(path.with_suffix(".labels.npy"), labels)
    os.replace(tmp, path)


def one_round(path: Path, strategy: str, labeled: int, batch: int) -> dict:
    """A head-mode round on the memmapped pool (``bench_al.head_round``): the figures of one strategy."""
    from bench_al import head_round

    x = np.load(path, mmap_mode="r")
    row = head_round(x, np.load(path.with_suffix(".labels.npy")), strategy, labeled, batch)
    return {**row, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_pool(args) -> None:
    from tlkit.active.strategies import list_strategies

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"pool-{args.pool}x{args.dim}-{args.dtype}.npy"
    t = time.perf_counter()
    make_pool(path, args.pool, args.dim, args.dtype)
    print(f"pool {args.pool:,} x {args.dim} {args.dtype} at {path} ({path.stat().st_size / 2**30:.2f} GiB; "
          f"{time.perf_counter() - t:.0f} s to make), {args.labeled} labeled, batch {args.batch}, faiss "
          f"{'on' if args.faiss == '1' else 'off'}, load {os.getloadavg()[0]:.1f}", flush=True)
    names = args.strategies.split(",") if args.strategies else [s.name for s in list_strategies()]
    print("| strategy | train+score s | select s | total s | peak RSS GB | pool accuracy |\n|---|---|---|---|---|---|")
    rows = []
    for name in names:
        env = {**os.environ, "TLKIT_FAISS": args.faiss}
        r = subprocess.run([sys.executable, __file__, "--one", name, "--path", str(path), "--labeled",
                            str(args.labeled), "--batch", str(args.batch)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode} |")
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        flag = "" if row["total_s"] < 60 and row["peak_rss_gb"] < 6 else " (over target)"
        print(f"| {name} | {row['train_score_s']:.1f} | {row['select_s']:.1f} | {row['total_s']:.1f}{flag} | "
              f"{row['peak_rss_gb']:.2f} | {row['accuracy']:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"pool": args.pool, "dim": args.dim, "dtype": args.dtype,
                                               "faiss": args.faiss, "rows": rows}, indent=1))


def run_aubc(args) -> None:
    from al_data import load

    from tlkit.active.simulate import simulate
    from tlkit.active.strategies import Approx, _geometry

    split = {"photos": 3}
    strategies = args.strategies.split(",") if args.strategies else GEOMETRIC.split(",")
    out = {}
    for name in args.datasets.split(","):
        xtr, xte, ytr, yte = load(name, split.get(name, 11))
        variants = {
            "exact": (xtr, xte, None),
            "approx": (xtr, xte, Approx.forced()),
            "sampled": (xtr, xte, Approx.forced()),
            "float16": (xtr.astype(np.float16).astype(np.float32), xte.astype(np.float16).astype(np.float32), None),
        }
        res = {}
        for v, (a, b, approx) in variants.items():
            if v not in args.variants.split(","):
                continue
            t = time.perf_counter()
            fewer = mock.patch.object(_geometry, "FAISS_POINTS_PER_CENTROID", SAMPLED_POINTS_PER_CENTROID)
            with fewer if v == "sampled" else contextlib.nullcontext():
                sim = simulate(a, ytr, b, yte, strategies=strategies, start=10, batch=10, rounds=19,
                               seeds=args.seeds, approx=approx, ssl="off")  # the plain head, as measured
            res[v] = {s: per_seed_aubc(sim, s) for s in strategies}
            print(f"{name} {v}: {time.perf_counter() - t:.0f} s", flush=True)
        out[name] = res
        print(f"\n{name} ({xtr.shape[0]} x {xtr.shape[1]}), AUBC over 10-200 labels, {args.seeds} seeds:")
        shown = [v for v in ("approx", "sampled", "float16") if v in res]
        print("| strategy | exact | " + " | ".join(f"{v} | diff ± SE (points)" for v in shown) + " |\n|---|---|"
              + "---|---|" * len(shown))
        for s in strategies:
            e = np.array(res.get("exact", {}).get(s, [np.nan]))
            cells = [(np.array(res[v][s]), e) for v in shown]
            print(f"| {s} | {e.mean():.3f} | " + " | ".join(f"{a.mean():.3f} | {paired(a, b)}" for a, b in cells) + " |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


SAMPLED_POINTS_PER_CENTROID = 32
"""``sampled``: the approximations forced on, and the large-pool k-means trained on this many rows per
cluster instead of 256, so that training on a sample is measured on pools this small (at a batch of
10, 320 of ~1,250 rows)."""


def per_seed_aubc(sim, strategy: str) -> list[float]:
    """AUBC of each seed's curve (seeds in order)."""
    from tlkit.active.simulate import aubc

    seeds = sorted({r[1] for r in sim.rows})
    return [aubc(*zip(*sorted((b, a) for s, sd, b, a in sim.rows if s == strategy and sd == seed))) for seed in seeds]


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean difference of paired per-seed AUBCs, in points, with its standard error."""
    d = 100 * (a - b)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.1f} ± {se:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--strategies", default="")
    ap.add_argument("--faiss", default="1", choices=("0", "1"))
    ap.add_argument("--cache", default="/tmp/tlkit-scale")
    ap.add_argument("--aubc", action="store_true")
    ap.add_argument("--datasets", default="digits-pixels,digits-lite0,photos")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--variants", default="exact,approx,float16", help="which of exact,approx,sampled,float16 to run")
    ap.add_argument("--json", default="")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_round(Path(args.path), args.one, args.labeled, args.batch)))
    elif args.aubc:
        run_aubc(args)
    else:
        run_pool(args)


if __name__ == "__main__":
    main()
