"""Tune `auto` (and MaxHerding's bandwidth) on data the README does not report.

Tuning data: splits 100-104 (one seed each, so 5 different pool/test splits) of digits-pixels and
digits-lite0, and photo crop seeds 13/14 (5 seeds); the README reports split 11 / crop seeds 3/4
and digits-lite0-96 (never tuned on). A variant is a registered strategy run with some module
constants overridden for the call, e.g. ``maxherding@herding.MAXHERDING_BANDWIDTH=2``.

Usage:
    python benchmarks/tune_auto.py --variants "maxherding@herding.MAXHERDING_BANDWIDTH=2;..." [--rounds 19] [--wide]
        [--datasets digits-pixels,...] [--save PREFIX] [--ssl self-training]

The strategies of ``tune_experiments.py`` (designs tried and not adopted) are registered too. Each
variant's AUBC is also printed minus the first variant's, paired by split and seed (mean ± SE).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_auto import paired_aubc, print_table, run_set  # noqa: E402
from tune_experiments import register_experiments  # noqa: E402

TUNE = {"digits-pixels": [(s, [0]) for s in range(100, 105)], "digits-lite0": [(s, [0]) for s in range(100, 105)],
        "photos": [(13, list(range(5)))]}
TUNE_WIDE = {**{ds: [(s, [0, 1]) for s in range(100, 110)] for ds in ("digits-pixels", "digits-lite0", "digits-lite0-96")},
             "photos": [(13, list(range(10)))]}
"""``--wide``: twice the splits, two seeds each, and digits-lite0-96 (its split 11 is reported, never tuned on before)."""


def variant(spec: str) -> str:
    """Register ``base@mod.CONST=value,...`` as a strategy; returns its name."""
    from tlkit.active.strategies import get_strategy, register_strategy

    base, _, overrides = spec.partition("@")
    if not overrides:
        return base
    sets = []
    for item in overrides.split(","):
        key, value = item.split("=")
        mod, const = key.rsplit(".", 1)
        sets.append((importlib.import_module(f"tlkit.active.strategies.{mod}"), const, eval(value)))  # noqa: S307
    info = get_strategy(base)
    name = "v-" + "".join(c if c.isalnum() else "-" for c in spec.lower()).strip("-")
    name = "-".join(p for p in name.split("-") if p)

    def run(pool, n, rng, _sets=tuple(sets), _fn=info.fn):
        with contextlib.ExitStack() as stack:
            for m, c, v in _sets:
                stack.enter_context(mock.patch.object(m, c, v))
            return _fn(pool, n, rng)

    register_strategy(name, description=spec, needs=info.needs, full_dim=info.full_dim)(run)
    return name


def by_split(rows, a: str, b: str) -> str:
    """``a`` minus ``b`` averaged within each split (run ids are ``seed + 1000 * split``): the
    split-level mean ± SE and the range, in AUBC points ('' with one split)."""
    from tlkit.active.simulate import SimulationResult

    m = np.array([paired_aubc(SimulationResult([r for r in rows if r[1] // 1000 == split]), a, b)[0]
                  for split in sorted({r[1] // 1000 for r in rows})])
    if m.size < 2:
        return ""
    return (f"; by split: {m.mean():+.2f} ± {m.std(ddof=1) / np.sqrt(m.size):.2f} over {m.size} splits, "
            f"from {m.min():+.2f} to {m.max():+.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", required=True, help="';'-separated specs")
    ap.add_argument("--wide", action="store_true", help="the wider tuning data (TUNE_WIDE)")
    ap.add_argument("--splits", default="", help="comma-separated: only these splits of each dataset (e.g. 105,106)")
    ap.add_argument("--datasets", default="")
    ap.add_argument("--rounds", type=int, default=19)
    ap.add_argument("--start", type=int, default=10, help="random labels before the first round")
    ap.add_argument("--batch", type=int, default=10, help="labels per round")
    ap.add_argument("--ssl", default="off", help="the learner: off (the plain head, as auto's earlier tuning) or self-training")
    ap.add_argument("--peers", default="", help="comma-separated peer names to include, e.g. skactiveml-maxherding")
    ap.add_argument("--save", type=Path, default=None, help="write the curves as JSON (<save>.<set>.json)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # one process per core; see bench_photo_al.py --threads
    register_experiments()
    names = [variant(s) for s in args.variants.split(";")]
    if args.peers:
        from peers import register_peers

        register_peers()
        names += args.peers.split(",")
    from tlkit.active.simulate import SimulationResult, summarise

    tune = TUNE_WIDE if args.wide else TUNE
    for ds in (args.datasets or ",".join(tune)).split(","):
        rows = []
        only = {int(x) for x in args.splits.split(",") if x}
        for split, seeds in tune[ds]:
            if only and split not in only:
                continue
            res = run_set(ds, split, names, seeds, rounds=args.rounds, ssl=args.ssl, start=args.start, batch=args.batch)
            rows += [(s, seed + 1000 * split, b, a) for s, seed, b, a in res.rows]
        merged = SimulationResult(rows, sorted({r[2] for r in rows}), summarise(rows, names))
        if "auto" not in names:
            merged.summary["auto"] = merged.summary[names[0]]  # gaps relative to the first variant
        print_table(f"TUNE {ds}: " + "; ".join(f"{n} = {s}" for n, s in zip(names, args.variants.split(";"))), merged)
        for n in names[1:]:
            d, se, k = paired_aubc(merged, n, names[0])
            print(f"{n} - {names[0]}: {d:+.2f} ± {se:.2f} AUBC points (paired over {k} runs){by_split(rows, n, names[0])}")
        if args.save:
            import json

            Path(f"{args.save}.{ds}.json").write_text(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
