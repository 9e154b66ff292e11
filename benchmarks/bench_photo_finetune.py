"""Fine-tuning on real photographs: ``tlkit finetune`` defaults against the peers, in the same run (#28).

Data: the real-photo sets of ``benchmarks/photo_data.py`` (roles fixed in ``results/photo_sets_plan.md``:
``cifar10``/``clothing`` are tuning sets, ``grocery``/``intel``/``dtd10``/``caltech101`` report sets). Every
method gets a split's whole pool and is scored on its test images (never in the pool).

Methods (efficientnet_lite0 with the weights tlkit ships offline; same image size, epochs and batch):

* ``tlkit``: :func:`tlkit.train.fit` with its defaults on the pool folder, as a user runs
  ``tlkit finetune pool/`` (it holds out ``val_fraction`` for the best epoch), then ``evaluate_run``.
* ``plain``: the loop a user writes (``bench_defaults.plain_loop``: RandomResizedCrop 0.7-1, **horizontal
  flip 0.5** as a user adds for photos, AdamW 1e-3, one-cycle, cross-entropy, the last epoch) on the pool.
* ``timm``: timm's own ``train.py`` (``--timm-train``; fetch huggingface/pytorch-image-models and
  ``git show HEAD:train.py``) with its defaults on a 90/10 split of the pool (train.py needs a val split;
  the best checkpoint by val top-1), bf16, AdamW 1e-3, cosine.
* ``tlkit:key=value,...``: tlkit's defaults with TrainConfig overrides (a study of one cause at a time, e.g.
  ``tlkit:class_weights=balanced``; ``results/photo_finetune_why_plan.md``).
* ``probe``: a linear probe, scikit-learn's ``LogisticRegression`` (C 1, standardised features) on the
  frozen 224 px features of the same backbone (``photo_data.load``), the features ``tlkit extract`` writes.

Figures: test accuracy and macro F1 per method (mean over seeds; the probe is deterministic, one run),
and tlkit minus each peer. The issue's bar: tlkit >= every peer on both, on every report set.

Runs are appended to ``--out`` (JSON lines) as they end and skipped when already there (resumable).

Usage (from the repository root):
    python benchmarks/bench_photo_finetune.py --sets dtd10 --seeds 0 --image-size 128 --epochs 6 \\
        --out benchmarks/results/photo_finetune_cpu.jsonl
    python benchmarks/bench_photo_finetune.py --report --out benchmarks/results/photo_finetune_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import photo_data  # noqa: E402

METHODS = ("probe", "plain", "tlkit", "timm")
VAL_SHARE = 0.1  # timm's val split of the pool


def timm_layout(name: str, split: int, per_class: int | None = None) -> Path:
    """``root/{train,val}``: the pool split 90/10 per class (seeded, symlinks) for timm's train.py."""
    pool, _ = photo_data.image_folders(name, split, pool_per_class=per_class)
    root = pool.parent / "timm"
    if not root.is_dir():
        tmp = root.with_name("timm.part")
        rng = np.random.default_rng([split, 3])
        for cls in sorted(p for p in pool.iterdir() if p.is_dir()):
            files = sorted(cls.iterdir())
            val = set(rng.choice(len(files), max(1, int(round(VAL_SHARE * len(files)))), replace=False).tolist())
            for i, f in enumerate(files):
                link = tmp / ("val" if i in val else "train") / cls.name / f.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f.resolve())
        tmp.rename(root)
    return root


def probe(name: str, split: int, per_class: int | None = None) -> dict:
    """Logistic regression on the frozen 224 px features: test accuracy and macro F1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    x, xt, y, yt = photo_data.load(name, split, pool_per_class=per_class)
    sc = StandardScaler().fit(x)
    pred = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(x), y).predict(sc.transform(xt))
    return {"test_accuracy": float(np.mean(pred == yt)), "test_f1_macro": float(f1_score(yt, pred, average="macro"))}


def run_one(method: str, name: str, split: int, seed: int, args, tmp: Path) -> dict:
    import bench_defaults as bd

    pool, test = photo_data.image_folders(name, split, pool_per_class=args.pool_per_class)
    if method == "probe":
        return probe(name, split, args.pool_per_class)
    if method == "plain":
        return bd.plain_loop({"train": pool, "test": test}, args.image_size, seed, args.epochs, hflip=0.5)
    if method.startswith("tlkit"):  # "tlkit" or "tlkit:key=value,key=value" (a TrainConfig override study)
        from tlkit.train.config import parse_overrides

        _, _, spec = method.partition(":")
        overrides = parse_overrides(spec.split(",")) if spec else {}
        return bd.tlkit_run({"train": pool, "test": test}, args.image_size, seed, overrides, tmp, epochs=args.epochs)
    root = timm_layout(name, split, args.pool_per_class)
    weights = bd.export_weights(tmp.parent.parent / "efficientnet_lite0_bundled.pth")
    return bd.timm_run(Path(args.timm_train), {"train": root / "train", "val": root / "val", "test": test},
                       args.image_size, weights, tmp, seed, args.timm_args.split(), epochs=args.epochs)


def run(args) -> None:
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["set"], r["split"], r["method"], r["seed"], r["image_size"], r["epochs"], r.get("pool_per_class"))
                for r in map(json.loads, out.read_text().splitlines()) if r}
    methods = [m for m in args.methods.split(";" if ":" in args.methods else ",") if m]
    with tempfile.TemporaryDirectory(prefix="photo-ft-") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: a cut run has every set's first seeds
            for name in args.sets.split(","):
                for split in (int(s) for s in args.splits.split(",")):
                    for m in methods:
                        s = 0 if m == "probe" else seed  # deterministic: one run
                        key = (name, split, m, s, args.image_size, args.epochs, args.pool_per_class)
                        if key in done:
                            continue
                        t0 = time.perf_counter()
                        work = Path(tmp) / "runs" / f"{name}-{split}-{m}-{s}"  # a fresh folder per run
                        work.mkdir(parents=True)
                        r = run_one(m, name, split, s, args, work)
                        rec = {"set": name, "split": split, "method": m, "seed": s, "image_size": args.image_size,
                               "epochs": args.epochs, "pool_per_class": args.pool_per_class, "test_accuracy": round(r["test_accuracy"], 4),
                               "test_f1_macro": round(r["test_f1_macro"], 4),
                               "seconds": round(time.perf_counter() - t0, 1), "loadavg": round(os.getloadavg()[0], 2)}
                        done.add(key)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with out.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
                        print(json.dumps(rec), flush=True)


def report(out: Path) -> dict:
    """Per (set, size, epochs): each method's mean accuracy and macro F1, and tlkit minus each peer."""
    groups: dict = {}
    for r in map(json.loads, out.read_text().splitlines()):
        g = groups.setdefault((r["set"], r["image_size"], r["epochs"], r.get("pool_per_class")), {}).setdefault(r["method"], [])
        g.append(r)
    summary = {}
    for (name, size, epochs, per_class), by_m in sorted(groups.items(), key=lambda kv: (*kv[0][:3], kv[0][3] or 0)):
        mean = {m: {k: statistics.mean(r[k] for r in rs) for k in ("test_accuracy", "test_f1_macro")} | {"runs": len(rs)}
                for m, rs in by_m.items()}
        role = "tuning" if name in ("cifar10", "clothing") else "report"
        cut = "" if per_class is None else f", pool cut to {per_class} per class"
        print(f"\n{name} ({role}), {size} px, {epochs} epochs{cut}")
        print("| method | runs | accuracy | macro F1 | tlkit - it (acc, F1) |\n|---|---|---|---|---|")
        for m in [*METHODS, *sorted(k for k in mean if k not in METHODS)]:
            if m not in mean:
                continue
            d = ("" if m == "tlkit" or "tlkit" not in mean else
                 f"{100 * (mean['tlkit']['test_accuracy'] - mean[m]['test_accuracy']):+.1f}, "
                 f"{100 * (mean['tlkit']['test_f1_macro'] - mean[m]['test_f1_macro']):+.1f} pts")
            print(f"| {m} | {mean[m]['runs']} | {mean[m]['test_accuracy']:.4f} | {mean[m]['test_f1_macro']:.4f} | {d} |")
        summary[f"{name}/{size}/{epochs}" + ("" if per_class is None else f"/pool{per_class}")] = mean
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="dtd10")
    ap.add_argument("--splits", default="0")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="';'-separated when a tlkit variant is named, e.g. 'tlkit;tlkit:class_weights=balanced;probe'")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pool-per-class", type=int, default=None,
                    help="cut each split's pool to this many images per class (a seeded draw; small-data studies)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core CPU; more on a GPU box)")
    ap.add_argument("--timm-train", default="/tmp/timm_train.py")
    ap.add_argument("--timm-args", default="", help="more train.py options")
    ap.add_argument("--out", type=Path, required=True, help="JSON-lines results (appended; resumable)")
    ap.add_argument("--report", action="store_true", help="only print the tables of --out")
    args = ap.parse_args(argv)
    os.environ.setdefault("TLKIT_OFFLINE", "1")
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # timm's train.py subprocess
        if "timm" in args.methods.split(",") and not Path(args.timm_train).is_file():
            ap.error(f"--timm-train {args.timm_train} is not a file (see the module docstring)")
        run(args)
    report(args.out)


if __name__ == "__main__":
    main()
