"""The head learner choice of ``al-round --train auto`` (issue #28): can cross-validation on the labeled
images tell, round by round, whether self-training beats the plain head?

Tuning sets only (``cifar10``, ``clothing``; splits 100-104 of ``benchmarks/photo_data.py``, efficientnet_lite0
embeddings at 224 px), never a report set. For each set, split and budget, one random labeled set; both
head learners (:class:`tlkit.active.learner.HeadLearner`, ``ssl`` off and self-training) fit with their
5-fold cross-validation, and are scored on the split's test set. Policies compared:

- ``off`` / ``self-training``: always that learner;
- ``cv-margin-M``: self-training unless the plain head's cross-validated accuracy beats it by more than M.

Usage (from the repository root; needs the photo cache, ``python benchmarks/photo_data.py``):
    python benchmarks/bench_learner_choice.py --splits 100,101,102
Writes ``benchmarks/results/learner_choice.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TLKIT_OFFLINE", "1")

from benchmarks import photo_data  # noqa: E402

TUNING_SETS = ("cifar10", "clothing")
MARGINS = (0.0, 0.02, 0.05, 0.1)


def run(name: str, split: int, budgets: list[int]) -> list[dict]:
    from tlkit.active.learner import HeadLearner

    xp, xt, yp, yt = photo_data.load(name, split)
    classes = tuple(photo_data.classes(name))
    learners = {ssl: HeadLearner(xp, classes, x_test=xt, validate=True, ssl=ssl) for ssl in ("off", "self-training")}
    rows = []
    for b in budgets:
        lab = np.zeros(len(yp), bool)
        lab[np.random.default_rng([split, b, 11]).choice(len(yp), b, replace=False)] = True
        row = {"set": name, "split": split, "budget": b}
        for ssl, learner in learners.items():
            t = time.perf_counter()
            res = learner.fit(lab, yp, seed=split)
            row[ssl] = {"test": float((res.test_probs.argmax(1) == yt).mean()), "cv": res.validation.accuracy,
                        "seconds": round(time.perf_counter() - t, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def policy(row: dict, margin: float) -> str:
    off, st = row["off"]["cv"], row["self-training"]["cv"]
    return "off" if off is not None and st is not None and off > st + margin else "self-training"


def table(rows: list[dict]) -> None:
    cols = ["off", "self-training"] + [f"cv-margin-{m}" for m in MARGINS]
    print("| set | labels | n | " + " | ".join(cols) + " | oracle |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    for key in sorted({(r["set"], r["budget"]) for r in rows}) + [("all", "all")]:
        sel = [r for r in rows if key == ("all", "all") or (r["set"], r["budget"]) == key]
        cells = [np.mean([r[c]["test"] for r in sel]) for c in ("off", "self-training")]
        cells += [np.mean([r[policy(r, m)]["test"] for r in sel]) for m in MARGINS]
        cells.append(np.mean([max(r["off"]["test"], r["self-training"]["test"]) for r in sel]))
        print(f"| {key[0]} | {key[1]} | {len(sel)} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="cifar10,clothing")
    ap.add_argument("--splits", default="100,101,102")
    ap.add_argument("--budgets", default="20,50,100,200")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "learner_choice.json")
    args = ap.parse_args()
    sets = [s for s in args.sets.split(",") if s]
    if any(s not in TUNING_SETS for s in sets):
        raise SystemExit(f"tuning sets only: {', '.join(TUNING_SETS)}")
    rows = []
    for name in sets:
        for split in map(int, args.splits.split(",")):
            rows += run(name, split, [int(b) for b in args.budgets.split(",")])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"settings": vars(args) | {"out": None}, "rows": rows}, indent=1))
    table(rows)


if __name__ == "__main__":
    main()
