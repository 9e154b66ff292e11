"""Multi-label fine-tuning: ``tlkit finetune`` defaults against a plain BCE loop, measured in the same run (#30).

Data: the 2x2 real-photo mosaic sets of ``benchmarks/multilabel_data.py`` (roles and splits fixed in
``benchmarks/results/multilabel_sets_plan.md``): ``clothing`` split 100 (tuning set), ``intel`` split 0
and ``dtd10`` split 0 (report sets). Each method trains on the split's pool mosaics (1,500) and is scored on
its test mosaics (600, photos disjoint from the pool's).

Each method trains on the pool's first ``--pool-limit`` mosaics (default 750 of 1,500, a random sample) and is
scored on all 600 test mosaics.

Methods (same backbone and starting weights: efficientnet_lite0 with the offline weights tlkit ships; same
image size, epochs and batch size; a CPU-affordable setting, stated in the output):

* ``tlkit``: :func:`tlkit.train.fit` with its defaults on the pool manifest (it holds out 20 % for
  validation: the best epoch by validation mAP, per-class thresholds chosen there), then
  :func:`tlkit.train.evaluate_run` on the test manifest (mAP; micro-F1 at the stored thresholds).
* ``plain``: the loop a user writes first: all the training mosaics (no hold-out), resize + random horizontal flip,
  AdamW (lr 1e-3, weight decay 0.01, constant), ``BCEWithLogitsLoss``, the last epoch's weights, micro-F1 at
  sigmoid 0.5.

The default setting (96 px, 2 epochs, batch 32, the first 750 pool mosaics, 3 seeds, 2 sets: 12 runs) is sized
for a CPU shared with other work; the results file is rewritten after every run, seed-major, so a cut run keeps
whole seeds of every set.

Usage (from the repository root):
    python benchmarks/bench_multilabel_finetune.py [--sets clothing intel] [--seeds 0 1 2] [--epochs 2]
        [--image-size 96] [--out benchmarks/results/multilabel_finetune.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import multilabel_data  # noqa: E402

SPLITS = {"clothing": 100, "intel": 0, "dtd10": 0}
ROLES = {"clothing": "tuning", "intel": "report", "dtd10": "report"}
BACKBONE = "efficientnet_lite0"
BATCH = 32
PLAIN_LR = 1e-3


def _records(csv_path: Path, names: list[str]):
    from tlkit.data import scan_images

    src = scan_images(csv_path, labeled=True, task="multilabel")
    y = np.zeros((len(src.records), len(names)), np.float32)
    for i, r in enumerate(src.records):
        for c in r.labels:
            y[i, names.index(c)] = 1
    return src.records, y


def plain_loop(pool_csv: Path, test_csv: Path, names: list[str], *, epochs: int, image_size: int,
               seed: int) -> dict:
    """The plain BCE loop: returns test mAP (macro, micro), micro-F1 at 0.5, seconds."""
    import torch
    from torchvision import transforms as T

    from tlkit.data import load_image
    from tlkit.models.backbones import create_backbone
    from tlkit.train.multilabel import multilabel_metrics

    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    bb = create_backbone(BACKBONE, pretrained=True, num_classes=len(names))
    model, cfg = bb.model, bb.data_config
    norm = T.Normalize(cfg.mean, cfg.std)
    train_tf = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), norm])
    recs, y = _records(pool_csv, names)
    images = [load_image(r.path).resize((image_size, image_size)) for r in recs]  # decoded and resized once
    opt = torch.optim.AdamW(model.parameters(), lr=PLAIN_LR, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    g = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        order = g.permutation(len(images))
        for b in range(0, len(order) - 1, BATCH):
            idx = order[b:b + BATCH]
            if len(idx) < 2:
                continue
            x = torch.stack([train_tf(images[i]) for i in idx])
            loss = loss_fn(model(x), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    trecs, ty = _records(test_csv, names)
    probs = []
    with torch.no_grad():
        for b in range(0, len(trecs), 64):
            x = torch.stack([eval_tf(load_image(r.path)) for r in trecs[b:b + 64]])
            probs.append(torch.sigmoid(model(x)).numpy())
    m = multilabel_metrics(ty, np.concatenate(probs), names)
    return {"map_macro": m["map_macro"], "map_micro": m["map_micro"], "f1_micro": m["f1_micro"],
            "f1_macro": m["f1_macro"], "seconds": time.perf_counter() - t0}


#: tlkit variants for the multi-label defaults study on the tuning set (``--variants``; plan:
#: ``results/multilabel_finetune_defaults_plan.md``): TrainConfig overrides on top of the defaults.
VARIANTS: dict[str, dict] = {
    "tlkit": {},
    "flip": {"hflip": 0.5},
    "warm": {"warmup_epochs": 0.2},
    "val10": {"val_fraction": 0.1},
    "nocrop": {"scale_min": 1.0},
    "all": {"hflip": 0.5, "warmup_epochs": 0.2, "val_fraction": 0.1, "scale_min": 1.0},
}


def tlkit_run(pool_csv: Path, test_csv: Path, work: Path, *, epochs: int, image_size: int, seed: int,
              variant: str = "tlkit") -> dict:
    """tlkit's defaults (with the overrides of ``variant``): fit, then evaluate on the test manifest."""
    from tlkit.train import evaluate_run, fit, make_config

    t0 = time.perf_counter()
    out = work / f"{variant}_{seed}"
    cfg = make_config(backbone=BACKBONE, epochs=epochs, image_size=image_size, batch_size=BATCH, seed=seed,
                      tensorboard=False, **VARIANTS[variant])
    res = fit(cfg, data=pool_csv, out=out)
    m = evaluate_run(out, test_csv)
    return {"map_macro": m["map_macro"], "map_micro": m["map_micro"], "f1_micro": m["f1_micro"],
            "f1_macro": m["f1_macro"], "best_epoch": res.best["epoch"], "val_map": res.best["val_map"],
            "seconds": time.perf_counter() - t0}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["clothing", "intel"], choices=list(SPLITS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--pool-limit", type=int, default=750,
                    help="train on the first N pool mosaics (a random sample: mosaics are drawn at random); 0: all")
    ap.add_argument("--variants", default="tlkit", help=f"tlkit variants, comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/multilabel_finetune.json"))
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    os.environ.setdefault("TLKIT_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    import torch

    setting = {"backbone": f"{BACKBONE} (tlkit's offline weights)", "image_size": a.image_size, "epochs": a.epochs,
               "batch_size": BATCH, "seeds": a.seeds, "torch_threads": torch.get_num_threads(),
               "pool_limit": a.pool_limit or "all", "test": "all 600 test mosaics",
               "plain": f"AdamW lr {PLAIN_LR} wd 0.01 constant, BCEWithLogitsLoss, resize + hflip, all the training mosaics, "
                        "last epoch, F1 at 0.5",
               "tlkit": "fit() defaults (80/20 split of the pool, best epoch by val mAP, per-class thresholds), "
                        "evaluate_run on the test manifest",
               "variants": {v: VARIANTS[v] for v in variants}}
    results: dict = {"setting": setting, "sets": {}}
    t_all = time.perf_counter()
    data = {name: (limited(multilabel_data.manifests(name, SPLITS[name]), a.pool_limit), multilabel_data.classes(name))
            for name in a.sets}
    rows = {name: {m: [] for m in ("plain", *variants)} for name in a.sets}
    with tempfile.TemporaryDirectory(prefix="mlft-") as tmp:
        for seed in a.seeds:  # seed-major: every set has its first seeds when the run is cut short
            for name in a.sets:
                (pool_csv, test_csv), names = data[name]
                for method in ("plain", *variants):  # alternated: a machine-load drift hits every method
                    r = (plain_loop(pool_csv, test_csv, names, epochs=a.epochs, image_size=a.image_size, seed=seed)
                         if method == "plain" else
                         tlkit_run(pool_csv, test_csv, Path(tmp) / name, epochs=a.epochs, image_size=a.image_size,
                                   seed=seed, variant=method))
                    rows[name][method].append({"seed": seed, **r})
                    print(f"{name} split {SPLITS[name]} seed {seed} {method:5s}: mAP {r['map_macro']:.4f} micro-F1 "
                          f"{r['f1_micro']:.4f} ({r['seconds']:.0f} s)", flush=True)
                results["sets"][name] = summarize(name, names, rows[name])
                results["elapsed_s"] = time.perf_counter() - t_all
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(results, indent=1))  # after every pair: a cut run keeps what it measured
    for name, res in results["sets"].items():
        sm = res["summary"]
        for v in variants:
            print(f"{name} ({res['role']}): {v} mAP {sm[v]['map_macro']:.4f} vs plain {sm['plain']['map_macro']:.4f} "
                  f"({sm[v + '_minus_plain_map']:+.4f}, ahead in {sm[v + '_wins_map']}/{sm['seeds']} seeds); "
                  f"micro-F1 {sm[v]['f1_micro']:.4f} vs {sm['plain']['f1_micro']:.4f}", flush=True)
    print(f"written {a.out} ({results['elapsed_s']:.0f} s)")


def limited(manifests: tuple[Path, Path], n: int) -> tuple[Path, Path]:
    """``(pool.csv, test.csv)`` with the pool cut to its first ``n`` rows (``pool_first<n>.csv`` beside it)."""
    pool, test = manifests
    if not n:
        return pool, test
    lines = pool.read_text().splitlines(keepends=True)
    cut = pool.with_name(f"pool_first{n}.csv")
    if not cut.is_file() or cut.read_text() != "".join(lines[:n + 1]):
        cut.write_text("".join(lines[:n + 1]))
    return cut, test


def summarize(name: str, names: list[str], rows: dict) -> dict:
    """Means (and the sd of mAP) per method over the seeds run so far, and the paired tlkit - plain mAP."""
    summary: dict = {}
    for method, rs in rows.items():
        summary[method] = {k: statistics.mean(r[k] for r in rs) for k in ("map_macro", "map_micro", "f1_micro",
                                                                            "f1_macro", "seconds")}
        summary[method]["map_macro_sd"] = statistics.stdev(r["map_macro"] for r in rs) if len(rs) > 1 else 0.0
    for v in (m for m in rows if m != "plain"):
        d = [t["map_macro"] - p["map_macro"] for t, p in zip(rows[v], rows["plain"])]
        summary[f"{v}_minus_plain_map"] = statistics.mean(d)
        summary[f"{v}_minus_plain_f1_micro"] = statistics.mean(
            t["f1_micro"] - p["f1_micro"] for t, p in zip(rows[v], rows["plain"]))
        summary[f"{v}_wins_map"] = sum(x > 0 for x in d)
    summary["seeds"] = len(rows["plain"])
    return {"split": SPLITS[name], "role": ROLES[name], "classes": names, "runs": rows, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
