"""Benchmark: does the self-trained head beat the plain head, at every budget, on real photographs?

Both learners run in tlkit's own simulator (same strategies, same start sets, start 10, batches of
10 up to 200 labels) on the real-photo sets of ``benchmarks/photo_data.py``; the full-pool linear
probe (the plain head on every pool label) is printed beside them. Which sets and splits may be
used for tuning and which only for reporting is fixed in ``benchmarks/results/photo_sets_plan.md``.

Usage:
    python benchmarks/bench_ssl.py --sets cifar10,clothing --splits 100,101 --seeds 3 [--strategies random,auto]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_data  # noqa: E402

LEARNERS = ("off", "self-training")
BUDGETS = (10, 20, 50, 100, 200)


def full_pool_probe(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    """Test accuracy of the plain head fitted on every pool label (the ceiling of head mode)."""
    from tlkit.active import head as heads

    k = int(max(y.max(), yt.max())) + 1
    h = heads.fit_head(x, y, tuple(str(i) for i in range(k)), scaler=heads.Scaler.fit(x))
    return float((h.predict_proba(xt).argmax(1) == yt).mean())


def pseudo_label_calibration(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], seeds: list[int]) -> dict:
    """Per budget (random labeled sets): pseudo-labels made, their accuracy against the hidden
    truth, and their mean confidence (a calibrated pseudo-labeler has the two close)."""
    from tlkit.active import head as heads
    from tlkit.active import semi

    cfg, scaler = semi.SelfTraining(), heads.Scaler.fit(x)
    graph = semi.PoolGraph.build(x, semi.graph_rows(len(x), np.zeros(len(x), bool), cfg.max_points,
                                                      np.random.default_rng(0)), cfg.neighbours)
    out = {}
    for b in BUDGETS:
        acc, conf, made = [], [], []
        for seed in seeds:
            lab = np.zeros(len(x), bool)
            lab[np.random.default_rng(seed).choice(len(x), b, replace=False)] = True
            head = heads.fit_head(x[lab], y[lab], classes, scaler=scaler, seed=seed)
            if head is None:
                continue
            rows, pseudo, weight = semi.pseudo_labels(graph, head.predict_proba(x[graph.rows]), lab, y, cfg)
            made.append(rows.size)
            acc.append(float((pseudo == y[rows]).mean()) if rows.size else float("nan"))
            conf.append(float(weight.mean() / cfg.weight) if rows.size else float("nan"))
        out[b] = {"made": float(np.mean(made)), "accuracy": float(np.nanmean(acc)), "confidence": float(np.nanmean(conf))}
    return out


def run_split(name: str, split: int, strategies: list[str], seeds: list[int], rounds: int) -> dict:
    """AUBC and accuracy per budget of each (learner, strategy) on one split; plus the full-pool probe."""
    from tlkit.active.learner import HeadLearner
    from tlkit.active.simulate import simulate

    x, xt, y, yt = (np.asarray(a) for a in photo_data.load(name, split))
    x, xt = x.astype(np.float32), xt.astype(np.float32)
    classes = tuple(str(i) for i in range(int(max(y.max(), yt.max())) + 1))
    out = {"probe": full_pool_probe(x, y, xt, yt), "runs": {},
           "pseudo": pseudo_label_calibration(x, y, classes, seeds) if len(x) <= 10_000 else {}}
    for ssl in LEARNERS:
        learner = HeadLearner(x, classes, x_test=xt, validate=False, ssl=ssl)
        t = time.perf_counter()
        res = simulate(x, y, xt, yt, strategies=strategies, start=10, batch=10, rounds=rounds, seeds=seeds,
                       classes=classes, learner=learner)
        for s, v in res.summary.items():
            out["runs"][f"{ssl}/{s}"] = {"aubc": v["aubc"], "acc": {int(b): a for b, a in v["mean_accuracy"].items()}}
        out.setdefault("seconds", {})[ssl] = round(time.perf_counter() - t, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="cifar10,clothing")
    ap.add_argument("--splits", default="100,101")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="random,auto")
    ap.add_argument("--rounds", type=int, default=19, help="19 rounds of 10 after a start of 10: up to 200 labels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    strategies = args.strategies.split(",")
    results = {}
    for name in args.sets.split(","):
        for split in (int(s) for s in args.splits.split(",")):
            r = run_split(name, split, strategies, list(range(args.seeds)), args.rounds)
            results[f"{name}:{split}"] = r
            print(f"{name} split {split}: full-pool probe {r['probe']:.3f}; seconds {r['seconds']}", flush=True)
            print("  pseudo-labels (random labels): " + "; ".join(
                f"{b}: {v['made']:.0f} made, {v['accuracy']:.3f} right, confidence {v['confidence']:.3f}"
                for b, v in r["pseudo"].items()), flush=True)
            for key, v in r["runs"].items():
                accs = " ".join(f"{b}:{v['acc'][b]:.3f}" for b in BUDGETS if b in v["acc"])
                print(f"  {key:28s} AUBC {v['aubc']:.3f}  {accs}", flush=True)
    print("\nmean over sets and splits (self-training minus off, AUBC points; accuracy at 100 / full-pool probe):")
    for s in strategies:
        for name in args.sets.split(","):
            keys = [k for k in results if k.startswith(name + ":")]
            d = [100 * (results[k]["runs"][f"self-training/{s}"]["aubc"] - results[k]["runs"][f"off/{s}"]["aubc"])
                 for k in keys]
            ratio = [results[k]["runs"][f"self-training/{s}"]["acc"].get(100, float("nan")) / results[k]["probe"]
                     for k in keys]
            print(f"  {s:10s} {name:12s} {np.mean(d):+.2f} (per split {', '.join(f'{v:+.2f}' for v in d)}); "
                  f"acc@100 / probe {np.mean(ratio):.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
