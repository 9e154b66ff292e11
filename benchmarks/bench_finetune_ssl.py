"""Finetune rounds with and without the unlabeled pool (issue #28): ``--ssl off`` against ``fixmatch``.

Tuning sets only (``cifar10``, ``clothing``; splits 100-104 of ``benchmarks/photo_data.py``), never a
report set. Each fit is one finetune round of ``al-round --train finetune`` / ``al-simulate``, through
:class:`tlkit.active.finetune.FinetuneLearner` itself: a random labeled set of ``B`` images of a pool
sample, the rest of the pool sample unlabeled, test accuracy on a test sample. Arms:

- ``off``: today's learner (the labeled images alone);
- ``fixmatch``: FixMatch consistency on the unlabeled rows (tlkit.train.consistency defaults);
- ``steps-only``: fixmatch with weight 0 (same cycled labeled batches, same steps, no unlabeled loss),
  which separates the unlabeled loss's effect from that of the extra labeled steps.

CPU-sized on purpose (``efficientnet_lite0``, pretrained, at ``--size`` px, ``--epochs`` epochs): the
machine is shared; GPU users run the same code at full size.

Usage (from the repository root; the photo cache must exist, ``python benchmarks/photo_data.py``):
    python benchmarks/bench_finetune_ssl.py --sets cifar10 --budgets 20,50 --seeds 0,1
Writes ``benchmarks/results/finetune_ssl.json`` and prints a markdown table.
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
ARMS = {
    "off": {"ssl": "off", "config": {}},
    "fixmatch": {"ssl": "fixmatch", "config": {}},
    "steps-only": {"ssl": "fixmatch", "config": {"fixmatch_weight": 0.0}},
}


def files(folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return paths, [p.parent.name for p in paths]


def one_fit(name: str, split: int, budget: int, seed: int, arm: str, args) -> dict:
    from tlkit.active.finetune import FinetuneLearner

    pool_dir, test_dir = photo_data.image_folders(name, split)
    paths, labels = files(pool_dir)
    tpaths, tlabels = files(test_dir)
    classes = tuple(sorted(set(labels)))
    rng = np.random.default_rng([split, seed, 7])
    keep = np.sort(rng.choice(len(paths), min(args.pool, len(paths)), replace=False))
    tkeep = np.sort(np.random.default_rng([split, 8]).choice(len(tpaths), min(args.test, len(tpaths)), replace=False))
    paths, y = [paths[i] for i in keep], np.array([classes.index(labels[i]) for i in keep])
    tpaths, yt = [tpaths[i] for i in tkeep], np.array([classes.index(tlabels[i]) for i in tkeep])
    labeled = np.zeros(len(paths), bool)
    labeled[rng.choice(len(paths), budget, replace=False)] = True
    spec = ARMS[arm]
    config = {"backbone": "efficientnet_lite0", "image_size": args.size, "epochs": args.epochs, "tensorboard": False,
              "workers": 0, **spec["config"]}
    learner = FinetuneLearner(paths, classes, test_paths=tpaths, config=config, device="cpu", ssl=spec["ssl"],
                              engine="torch")
    t = time.perf_counter()
    res = learner.fit(labeled, y, seed=seed)
    acc = float((res.test_probs.argmax(1) == yt).mean()) if res.test_probs is not None else float("nan")
    cons = res.notes.get("consistency") or {}
    return {"set": name, "split": split, "budget": budget, "seed": seed, "arm": arm, "accuracy": acc,
            "seconds": round(time.perf_counter() - t, 1), "mask_rate": cons.get("mask_rate"),
            "pseudo_label_accuracy": cons.get("pseudo_label_accuracy"), "unlabeled_images": cons.get("unlabeled_images")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="cifar10")
    ap.add_argument("--budgets", default="20,50")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--split", type=int, default=100)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--pool", type=int, default=1000, help="pool sample per fit (labeled + unlabeled)")
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "finetune_ssl.json")
    args = ap.parse_args()
    sets = [s for s in args.sets.split(",") if s]
    bad = [s for s in sets if s not in TUNING_SETS]
    if bad:
        raise SystemExit(f"{bad}: tuning sets only ({', '.join(TUNING_SETS)})")
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    done = {(r["set"], r["split"], r["budget"], r["seed"], r["arm"]) for r in rows}
    for name in sets:
        for budget in map(int, args.budgets.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for arm in args.arms.split(","):
                    if (name, args.split, budget, seed, arm) in done:
                        continue
                    row = one_fit(name, args.split, budget, seed, arm, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                                                    "rows": rows}, indent=1))
    table(rows)


def table(rows: list[dict]) -> None:
    keys = sorted({(r["set"], r["budget"]) for r in rows})
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    print("| set | labels | " + " | ".join(arms) + " | fixmatch mask rate | pseudo-label acc |")
    print("|---|---|" + "---|" * (len(arms) + 2))
    for s, b in keys:
        cells = []
        for a in arms:
            acc = [r["accuracy"] for r in rows if (r["set"], r["budget"], r["arm"]) == (s, b, a)]
            cells.append(f"{100 * np.mean(acc):.1f} ± {100 * np.std(acc):.1f} (n={len(acc)})" if acc else "")
        fm = [r for r in rows if (r["set"], r["budget"], r["arm"]) == (s, b, "fixmatch")]
        mr = np.mean([r["mask_rate"] for r in fm if r["mask_rate"] is not None]) if fm else float("nan")
        pa = [r["pseudo_label_accuracy"] for r in fm if r["pseudo_label_accuracy"] is not None]
        print(f"| {s} | {b} | " + " | ".join(cells) + f" | {mr:.2f} | {np.mean(pa) if pa else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
