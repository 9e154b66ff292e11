"""Benchmark: active learning on real photographs, tlkit's strategies and scikit-activeml's side by side.

Every strategy runs in tlkit's own simulator with the same learner (the default: the self-trained head
of ``tlkit.active.semi``, or ``--ssl off`` for the plain head), the same random start sets (start 10,
batches of 10 up to 200 labels) on the real-photo sets of ``benchmarks/photo_data.py``. scikit-activeml's
MaxHerding, Clue, TypiClust and ProbCover come in through ``benchmarks/peers.py``.

Which sets, splits and seeds may be used for tuning and which only for reporting is fixed in
``benchmarks/results/photo_sets_plan.md``: tune on ``cifar10``/``clothing`` splits 100-104, report on
``grocery``/``intel``/``dtd10``/``caltech101`` splits 0-4 with seeds 0-9.

Each (set, split, strategy) run is appended to ``--out`` (JSON lines) as soon as it ends, and a run
already there is skipped: an interrupted study resumes where it stopped. ``--report`` prints the
tables from the file alone.

Figures (averaged over the splits of a set: the mean over splits of each split's mean over seeds):
- accuracy at 10, 20, 50, 100, 200 labels and AUBC (10-200) per strategy;
- ``auto``'s gap to the best strategy at every budget (the issue's bar: within 1 point everywhere);
- AUBC standard errors over all split x seed runs, and ``auto`` minus the best other strategy, paired by
  (split, seed).

Usage:
    python benchmarks/bench_photo_al.py --sets cifar10,clothing --splits 100,101,102,103,104 --seeds 5 \
        --out benchmarks/results/photo_al_tuning.jsonl
    python benchmarks/bench_photo_al.py --report --out benchmarks/results/photo_al_tuning.jsonl
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

STRATEGIES = "random,auto,maxherding-entropy,maxherding,margin,typiclust,probcover,clue,badge"
PEER_PREFIX = "skactiveml-"
BUDGETS = (10, 20, 30, 50, 100, 150, 200)


def _done(out: Path) -> set[tuple[str, int, str, str]]:
    if not out.exists():
        return set()
    return {(r["set"], r["split"], r["ssl"], r["strategy"]) for r in map(json.loads, out.read_text().splitlines()) if r}


def _split_data(name: str, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(x_pool, x_test, y_pool, y_test, classes)`` of a photo split: float32 embeddings, int labels, and
    class names ``"0".."k-1"`` covering both sides."""
    x, xt, y, yt = (np.asarray(a) for a in photo_data.load(name, split))
    classes = tuple(str(i) for i in range(int(max(y.max(), yt.max())) + 1))
    return x.astype(np.float32), xt.astype(np.float32), y, yt, classes


def run(sets: list[str], splits: list[int], seeds: list[int], strategies: list[str], ssl: str, out: Path,
        rounds: int, start: int = 10, batch: int = 10) -> None:
    """Simulate every (set, split, strategy) not in ``out`` yet; append each as one JSON line."""
    from tlkit.active.simulate import simulate

    done = _done(out)
    for split in splits:  # split-major: an interrupted study has every set on its first splits
        for name in sets:
            todo = [s for s in strategies if (name, split, ssl, s) not in done]
            if not todo:
                continue
            x, xt, y, yt, classes = _split_data(name, split)
            for s in todo:
                t = time.perf_counter()
                res = simulate(x, y, xt, yt, strategies=[s], start=start, batch=batch, rounds=rounds, seeds=seeds,
                               classes=classes, ssl=ssl)
                rec = {"set": name, "split": split, "ssl": ssl, "strategy": s, "seeds": seeds,
                       "rows": [[seed, n, acc] for _, seed, n, acc in res.rows],
                       "seconds": round(time.perf_counter() - t, 1)}
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name}:{split} {s:28s} AUBC {res.summary[s]['aubc']:.3f} ({rec['seconds']:.0f} s)", flush=True)


def _aubc(points: list[tuple[int, float]]) -> float:
    from tlkit.active.simulate import aubc

    return float(aubc(*zip(*sorted(points))))


def load_runs(out: Path, ssl: str | None = None, before: Path | None = None) -> dict:
    """``{set: {strategy: {split: {seed: [(labels, accuracy), ...]}}}}`` from the JSON-lines file; with
    ``before``, that file's rows too, each strategy named ``<strategy> (before)`` (an earlier version's runs)."""
    runs: dict = {}
    lines = [(line, "") for line in out.read_text().splitlines()]
    if before is not None:
        lines += [(line, " (before)") for line in before.read_text().splitlines()]
    for line, suffix in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        if ssl is not None and r["ssl"] != ssl:
            continue
        per_seed = runs.setdefault(r["set"], {}).setdefault(r["strategy"] + suffix, {}).setdefault(r["split"], {})
        for seed, n, acc in r["rows"]:
            per_seed.setdefault(seed, []).append((n, acc))
    return runs


def set_summary(by_strategy: dict) -> dict:
    """Per strategy: ``acc`` per budget and ``aubc`` (means over splits of per-split means), ``aubc_se``
    (over all split x seed runs), ``per_run`` AUBC keyed by (split, seed)."""
    common = set.intersection(*(set(v) for v in by_strategy.values()))  # splits every strategy has
    summary = {}
    for s, splits in by_strategy.items():
        acc, aubcs, per_run = {}, [], {}
        for split in sorted(common):
            curves = splits[split]
            for seed, pts in curves.items():
                per_run[(split, seed)] = _aubc(pts)
            aubcs.append(np.mean([per_run[(split, seed)] for seed in curves]))
            for b in {n for pts in curves.values() for n, _ in pts}:
                acc.setdefault(b, []).append(np.mean([a for pts in curves.values() for n, a in pts if n == b]))
        runs = np.array(list(per_run.values()))
        summary[s] = {"acc": {b: float(np.mean(v)) for b, v in sorted(acc.items())}, "aubc": float(np.mean(aubcs)),
                      "aubc_se": float(runs.std(ddof=1) / np.sqrt(runs.size)) if runs.size > 1 else float("nan"),
                      "per_run": per_run, "splits": sorted(common), "n_runs": int(runs.size)}
    return summary


def report(out: Path, ssl: str | None, strategy: str = "auto", before: Path | None = None) -> dict:
    """Print one table per set and ``strategy``'s gaps; return ``{set: {"worst_gap", "at", "aubc_rank", ...}}``.
    ``before``: see :func:`load_runs`."""
    verdicts = {}
    for name, by_strategy in load_runs(out, ssl, before).items():
        if len(by_strategy) < 2:  # a set just started: nothing to compare yet
            print(f"\n{name}: only {', '.join(by_strategy)} run so far; no table")
            continue
        summ = set_summary(by_strategy)
        budgets = [b for b in BUDGETS if all(b in v["acc"] for v in summ.values())]
        any_v = next(iter(summ.values()))
        print(f"\n{name}: {len(any_v['splits'])} splits {any_v['splits']}, {any_v['n_runs']} runs per strategy"
              + (f", learner {ssl}" if ssl else ""))
        print("| strategy | " + " | ".join(str(b) for b in budgets) + " | AUBC ± se |")
        print("|---|" + "---|" * (len(budgets) + 1))
        for s, v in sorted(summ.items(), key=lambda kv: -kv[1]["aubc"]):
            print(f"| {s} | " + " | ".join(f"{100 * v['acc'][b]:.1f}" for b in budgets)
                  + f" | {100 * v['aubc']:.2f} ± {100 * v['aubc_se']:.2f} |")
        if strategy not in summ:
            continue
        gaps = {b: max(v["acc"][b] for v in summ.values()) - summ[strategy]["acc"][b] for b in budgets}
        at = max(gaps, key=gaps.get)
        best_at = max(summ, key=lambda s: summ[s]["acc"][at])
        others = [s for s in summ if s != strategy]
        rival = max(others, key=lambda s: summ[s]["aubc"]) if others else None
        line = f"{strategy}: worst gap {100 * gaps[at]:.2f} points at {at} labels (best there: {best_at})"
        verdict = {"worst_gap": 100 * gaps[at], "at": at, "best_at": best_at, "gaps": {b: 100 * g for b, g in gaps.items()},
                   "aubc": 100 * summ[strategy]["aubc"]}
        if rival is not None:
            keys = sorted(summ[strategy]["per_run"].keys() & summ[rival]["per_run"].keys())
            d = np.array([summ[strategy]["per_run"][k] - summ[rival]["per_run"][k] for k in keys]) * 100
            se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
            line += f"; AUBC minus the best other ({rival}) {d.mean():+.2f} ± {se:.2f} (paired, {d.size} runs)"
            verdict.update(rival=rival, vs_rival=float(d.mean()), vs_rival_se=float(se))
        print(line)
        verdicts[name] = verdict
    return verdicts


def probe_report(out: Path, ssl: str | None, strategy: str = "auto", budget: int = 100) -> dict:
    """The issue's probe bar: ``strategy``'s accuracy at ``budget`` labels against the full-pool linear probe
    (tlkit's plain head fitted on every pool label), both averaged over the splits of each set's table.
    Prints one line per set; returns ``{set: (accuracy, probe, ratio)}``."""
    from tlkit.active.head import fit_head

    res = {}
    for name, by_strategy in load_runs(out, ssl).items():
        if len(by_strategy) < 2 or strategy not in by_strategy:
            continue
        summ = set_summary(by_strategy)[strategy]
        if budget not in summ["acc"]:
            continue
        probes = []
        for split in summ["splits"]:
            x, xt, y, yt, classes = _split_data(name, split)
            probes.append(float((fit_head(x, y, classes).predict_proba(xt).argmax(1) == yt).mean()))
        acc, probe = summ["acc"][budget], float(np.mean(probes))
        res[name] = (acc, probe, acc / probe)
        print(f"{name}: {strategy} at {budget} labels {100 * acc:.1f} %, full-pool probe {100 * probe:.1f} % "
              f"({len(probes)} splits): {100 * acc / probe:.1f} % of the probe")
    return res


def main(argv: list[str] | None = None) -> None:
    from tlkit.core.constants import DEFAULT_SSL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="cifar10,clothing")
    ap.add_argument("--splits", default="100,101,102,103,104")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--strategies", default=STRATEGIES,
                    help="comma-separated names; or ';'-separated with tune_auto.py variants (name@module.CONST=value)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--ssl", default=DEFAULT_SSL)
    ap.add_argument("--rounds", type=int, default=19, help="19 rounds of 10 after a start of 10: up to 200 labels")
    ap.add_argument("--start", type=int, default=10, help="random labels before the first round (use a new --out "
                    "when changing it: results are keyed by set, split, learner and strategy)")
    ap.add_argument("--batch", type=int, default=10, help="labels per round (the same caveat)")
    ap.add_argument("--out", type=Path, required=True, help="JSON-lines results file (appended; resumable)")
    ap.add_argument("--report", action="store_true", help="only print the tables of --out")
    ap.add_argument("--probe", action="store_true", help="also the accuracy at 100 labels against the full-pool probe")
    ap.add_argument("--before", type=Path, default=None,
                    help="with --report: also this file's runs, as '<strategy> (before)' (e.g. an earlier auto)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS/OpenMP threads (1: run one process per core; on a busy machine a second BLAS thread "
                         "spinning made the heads' fits many times slower)")
    args = ap.parse_args(argv)
    if not args.report:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
        strategies = [s for s in args.strategies.split(";" if "@" in args.strategies else ",") if s]
        from tune_auto import variant
        from tune_experiments import register_experiments

        register_experiments()  # the designs tried for auto, e.g. maxherding-entropy-centred
        # tune_auto-style variants too, e.g. maxherding@herding.MAXHERDING_BANDWIDTH=0.25
        strategies = [variant(s) for s in strategies]
        if not args.no_peers:
            from peers import register_peers

            strategies += register_peers()
        run(args.sets.split(","), [int(s) for s in args.splits.split(",")], list(range(args.seeds)), strategies,
            args.ssl, args.out, args.rounds, args.start, args.batch)
    report(args.out, args.ssl, before=args.before)
    if args.probe:
        probe_report(args.out, args.ssl)


if __name__ == "__main__":
    main()
