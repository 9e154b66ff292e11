"""Benchmark: is `auto` within 1 point of the best strategy of tlkit *and* scikit-activeml at every budget?

Runs tlkit's strategies and scikit-activeml's best ones (through ``benchmarks/peers.py``) in tlkit's
own simulator: same learner (``head.fit_head``), same random start sets, start 10, batches of 10 to
200 labels. Feature sets and splits come from ``benchmarks/al_data.py`` (embeddings cached outside
the repo, in ``--cache``).

Tune on some data, report on other data: ``auto``'s constants were tuned on splits 100-104 of
digits-pixels, digits-lite0 and photos (``benchmarks/tune_auto.py``); the README reports split 11
(digits) and crop seeds 3/4 (photos), plus digits-lite0-96, which tuning never saw.

Usage:
    python benchmarks/bench_auto.py [--datasets digits-pixels,digits-lite0,photos,digits-lite0-96]
        [--split 11] [--seeds 5] [--strategies ...] [--no-peers]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from al_data import DEFAULT_CACHE, SETS, load  # noqa: E402

BUDGETS = (10, 20, 30, 40, 50, 100, 200)
STRATEGIES = "random,margin,typiclust,maxherding,clue,badge,coreset,probcover,bald,batchbald,auto"
REPORT_SPLIT = {"photos": 3}
"""The split each set is reported on when --split is not given (digits: 11, as in the issue)."""


def run_set(name: str, split: int, strategies: list[str], seeds, cache: Path = DEFAULT_CACHE, rounds: int = 19,
            ssl: str = "off", start: int = 10, batch: int = 10):
    """Simulate ``strategies`` on one feature set and split; returns the :class:`SimulationResult`.

    ``ssl="off"``: the plain head, the learner every figure of this benchmark (and ``auto``'s tuning
    by tune_auto.py) was measured with; ``benchmarks/bench_ssl.py`` measures self-training.
    """
    from tlkit.active.simulate import simulate

    xtr, xte, ytr, yte = load(name, split, cache)
    return simulate(xtr, ytr, xte, yte, strategies=strategies, start=start, batch=batch, rounds=rounds, seeds=seeds, ssl=ssl)


def worst_gap(res, strategy: str = "auto") -> tuple[float, int]:
    """(largest shortfall of ``strategy`` to the best strategy at any budget, that budget)."""
    gaps = {b: max(v["mean_accuracy"][b] for v in res.summary.values()) - res.summary[strategy]["mean_accuracy"][b]
            for b in res.budgets}
    b = max(gaps, key=gaps.get)
    return gaps[b], b


def paired_aubc(res, a: str, b: str) -> tuple[float, float, int]:
    """AUBC of ``a`` minus ``b``, paired by seed: (mean, standard error, seeds), in points."""
    from tlkit.active.simulate import aubc_by_seed

    area_a, area_b = aubc_by_seed(res.rows, a), aubc_by_seed(res.rows, b)
    d = np.array([area_a[x] - area_b[x] for x in sorted(area_a.keys() & area_b.keys())]) * 100
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()) if d.size else float("nan"), se, int(d.size)


def print_table(title: str, res) -> None:
    budgets = [b for b in BUDGETS if b in res.budgets]
    print(f"\n{title}")
    print("| strategy | " + " | ".join(str(b) for b in budgets) + " | AUBC |")
    print("|---|" + "---|" * (len(budgets) + 1))
    for s, v in sorted(res.summary.items(), key=lambda kv: -kv[1]["aubc"]):
        ma = v["mean_accuracy"]
        print(f"| {s} | " + " | ".join(f"{100 * ma[b]:.1f}" for b in budgets) + f" | {v['aubc']:.3f} |")
    if "auto" in res.summary:
        gap, at = worst_gap(res)
        top = max(res.summary, key=lambda s: res.summary[s]["aubc"])
        best_at = max(res.summary, key=lambda s: res.summary[s]["mean_accuracy"][at])
        runner_up = max((s for s in res.summary if s != "auto"), key=lambda s: res.summary[s]["aubc"], default=None)
        vs = ""
        if runner_up is not None:
            d, se, n = paired_aubc(res, "auto", runner_up)
            vs = f" (auto - {runner_up}: {d:+.2f} ± {se:.2f} AUBC points, paired over {n} seeds)"
        print(f"auto: worst gap to the best strategy {100 * gap:.1f} points at {at} labels ({best_at}); "
              f"highest AUBC: {top}{vs}", flush=True)


def stopping_report(res, strategy: str = "auto") -> None:
    """Where the stopping signal fires (first 3-round stable streak of kappa, per seed) vs the curve."""
    from tlkit.active.stopping import STABLE_KAPPA, STABLE_ROUNDS, stable_streak

    acc = {(seed, b): a for s, seed, b, a in res.rows if s == strategy}
    kap: dict[int, list[tuple[int, float]]] = {}
    for s, seed, b, k in res.kappa:
        if s == strategy:
            kap.setdefault(seed, []).append((b, None if np.isnan(k) else k))
    fired, at_stop, final = [], [], []
    for seed, pts in kap.items():
        pts.sort()
        b_last = pts[-1][0]
        stop = next((b for i, (b, _) in enumerate(pts) if stable_streak([k for _, k in pts[: i + 1]]) >= STABLE_ROUNDS), None)
        fired.append(stop)
        if stop is not None:
            at_stop.append(acc[(seed, stop)])
            final.append(acc[(seed, b_last)])
    mean_k = {b: np.nanmean([k for s, _, bb, k in res.kappa if s == strategy and bb == b]) for b in res.budgets[1:]}
    print(f"stopping signal ({strategy}; stable = kappa >= {STABLE_KAPPA} for {STABLE_ROUNDS} rounds): fired at "
          f"{[f for f in fired]} labels per seed" + (
              f"; accuracy there {100 * np.mean(at_stop):.1f} % vs {100 * np.mean(final):.1f} % at {res.budgets[-1]}"
              if at_stop else ""))
    print("mean kappa by labels: " + ", ".join(f"{b}: {k:.3f}" for b, k in mean_k.items() if b in BUDGETS or b % 30 == 0))


def _merged(res, files):
    """``res`` plus the curves in ``files`` (saved with --save), re-summarised."""
    import json

    from tlkit.active.simulate import SimulationResult, summarise

    rows, kappa = (list(res.rows), list(res.kappa)) if res is not None else ([], [])
    for f in files:
        d = json.loads(f.read_text())
        rows += [tuple(r) for r in d["rows"]]
        kappa += [tuple(r) for r in d["kappa"]]
    names = list(dict.fromkeys(r[0] for r in rows))
    return SimulationResult(rows, sorted({r[2] for r in rows}), summarise(rows, names), kappa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(SETS))
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--split", type=int, default=None, help="digits split random_state / photo crop seed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--rounds", type=int, default=19)
    ap.add_argument("--no-peers", action="store_true", help="tlkit strategies only (no scikit-activeml)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--stopping", action="store_true", help="also report where the stopping signal fires for auto")
    ap.add_argument("--save", type=Path, default=None, help="write the curves as JSON (one file per set: <save>.<set>.json)")
    ap.add_argument("--merge", type=Path, nargs="*", default=(),
                    help="curves saved by earlier runs (same splits and seeds) to print together with this run's")
    args = ap.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    if not args.no_peers:
        from peers import register_peers

        strategies += register_peers()
    for name in args.datasets.split(","):
        split = args.split if args.split is not None else REPORT_SPLIT.get(name, 11)
        t = time.perf_counter()
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        res = run_set(name, split, strategies, seeds, args.cache, args.rounds) if strategies else None
        res = _merged(res, [f for f in args.merge if f.name.endswith(f".{name}.json")])
        if args.save:
            import json

            Path(f"{args.save}.{name}.json").write_text(json.dumps({"rows": res.rows, "kappa": res.kappa}))
        n_seeds = len({r[1] for r in res.rows})
        print_table(f"{name}, split {split}, {n_seeds} seeds ({time.perf_counter() - t:.0f} s)", res)
        if args.stopping and "auto" in res.summary:
            stopping_report(res)


if __name__ == "__main__":
    main()
