"""Fine-tuning defaults study (issue #14): tlkit's defaults against a hand-written loop and timm's train.py.

Data: :mod:`ft_data` (five study sets the defaults were chosen on, and the held-out ``digits_wn``,
the issue's rendering, used only for reporting). Every run: efficientnet_lite0 with the bundled
weights, 8 epochs, batch 32, train on ``train/``, pick nothing by hand, test accuracy on ``test/``.

* ``study``: for each dataset x variant x seed, one run; a variant is ``plain`` (the loop below) or
  a set of TrainConfig overrides (``new`` = the current defaults, ``old`` = the defaults before #14,
  ``base`` = plain-loop-like settings, then one factor changed at a time). tlkit runs validate on
  ``val/`` and keep the best epoch (its default); the plain loop keeps its last epoch.
* ``timm``: timm's own ``train.py`` (fetched separately, ``--timm-train``; not part of this repo)
  on the same ImageFolder layout and the same weights, against ``tlkit finetune`` defaults; epoch
  time and test accuracy of its best checkpoint (timm's eval transform: resize + centre crop).
* ``table``: print the per-dataset summary of a results file (mean over seeds).

The plain loop (what a user writes by hand, the issue's reference): torchvision ImageFolder,
RandomResizedCrop(size, scale=(0.7, 1)) + ToTensor + Normalize (the backbone's mean/std), no flip,
AdamW(lr 1e-3, wd 0.01), OneCycleLR (torch defaults), cross-entropy, bf16 autocast, last epoch;
test images resized to size x size.

Usage (the README's figures; results are appended to / read from the JSON file):
    python benchmarks/bench_defaults.py study benchmarks/results/defaults_ablation_64.json \
        --datasets study --variants ablation,new --image-size 64 --seeds 0
    python benchmarks/bench_defaults.py study benchmarks/results/defaults_ablation_64.json \
        --datasets study --variants plain,old,new --image-size 64 --seeds 1
    python benchmarks/bench_defaults.py study benchmarks/results/defaults_study_96.json \
        --datasets held-out --variants plain,old,new --image-size 96 --seeds 0,1
    python benchmarks/bench_defaults.py table benchmarks/results/defaults_ablation_64.json --variants plain,old,new
    python benchmarks/bench_defaults.py table benchmarks/results/defaults_ablation_64.json \
        --variants ablation,new --by-variant --seeds 0
    python benchmarks/bench_defaults.py timm benchmarks/results/defaults_timm_96.json \
        --datasets digits_wn --image-size 96 --timm-train /tmp/timm_train.py
    python benchmarks/bench_defaults.py timm benchmarks/results/defaults_timm_matched_64.json \
        --datasets photos_small --image-size 64 \
        --timm-args='--warmup-epochs 1 --hflip 0 --scale 0.7 1 --color-jitter 0 --smoothing 0'

timm's train.py: ``git --git-dir=<mirror of huggingface/pytorch-image-models> show HEAD:train.py
> /tmp/timm_train.py`` (the study used the snapshot at 1.0.29.dev0 with timm 1.0.31 installed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # this checkout's tlkit, not an installed one
import ft_data  # noqa: E402

EPOCHS, BATCH = 8, 32
OLD = {"hflip": 0.5, "scale_min": 0.5, "color_jitter": 0.2, "layer_decay": 0.8, "schedule": "cosine",
       "warmup_epochs": 1.0, "lr": 1e-3, "label_smoothing": 0.0}
BASE = {"hflip": 0.0, "scale_min": 0.7, "color_jitter": None, "layer_decay": None, "schedule": "onecycle",
        "warmup_epochs": 2.4, "lr": 1e-3, "label_smoothing": 0.0}  # the plain loop's settings in tlkit
ABLATION = {
    "base": {},
    "hflip0.5": {"hflip": 0.5},
    "scale0.5": {"scale_min": 0.5},
    "scale0.35": {"scale_min": 0.35},
    "jitter0.2": {"color_jitter": 0.2},
    "ld0.8": {"layer_decay": 0.8},
    "ld0.9": {"layer_decay": 0.9},
    "cosine-w1": {"schedule": "cosine", "warmup_epochs": 1.0},
    "onecycle-w1": {"warmup_epochs": 1.0},
    "lr2e-3": {"lr": 2e-3},
    "lr5e-4": {"lr": 5e-4},
    "ls0.1": {"label_smoothing": 0.1},
}
NAMED = {"old": OLD, "new": {}, "new-lr2e-3": {"lr": 2e-3}, **{k: {**BASE, **v} for k, v in ABLATION.items()}}
#: the bundled short recipe as it ships, against the defaults at its length (5 epochs)
NAMED["recipe-fast"] = {k: v for k, v in __import__("yaml").safe_load(
    (REPO / "recipes" / "finetune-fast.yaml").read_text()).items()}
NAMED["new-5ep"] = {"epochs": NAMED["recipe-fast"].get("epochs", EPOCHS)}


def variants(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        out += ["plain", "old", *ABLATION] if part == "ablation" else [part]
    return out


def datasets(spec: str) -> list[str]:
    return [n for part in spec.split(",") for n in
            (ft_data.STUDY if part == "study" else ft_data.HELD_OUT if part == "held-out" else (part,))]


# --------------------------------------------------------------------------- the plain loop


def plain_loop(paths: dict[str, Path], size: int, seed: int, epochs: int = EPOCHS, hflip: float = 0.0) -> dict:
    """The hand-written reference (``hflip``: a random horizontal flip with that probability, as a user
    adds for photos); returns test accuracy, macro F1 and seconds per epoch."""
    from sklearn.metrics import f1_score
    from torch.utils.data import DataLoader
    from torchvision import datasets as tvd
    from torchvision import transforms as T

    from tlkit.models.backbones import create_backbone

    torch.manual_seed(seed)
    train_set = tvd.ImageFolder(paths["train"])
    bb = create_backbone("efficientnet_lite0", num_classes=len(train_set.classes))
    norm = T.Normalize(bb.data_config["mean"], bb.data_config["std"])
    rgb = T.Lambda(lambda im: im.convert("RGB"))
    flip = [T.RandomHorizontalFlip(hflip)] if hflip else []
    train_set.transform = T.Compose([rgb, T.RandomResizedCrop(size, scale=(0.7, 1.0)), *flip, T.ToTensor(), norm])
    test_set = tvd.ImageFolder(paths["test"], T.Compose([rgb, T.Resize((size, size)), T.ToTensor(), norm]))
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True)
    model = bb.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * len(loader))
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    pred, true = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in DataLoader(test_set, batch_size=64):
            pred += model(x).argmax(-1).tolist()
            true += y.tolist()
    return {"test_accuracy": float(np.mean(np.array(pred) == np.array(true))),
            "test_f1_macro": float(f1_score(true, pred, average="macro")), "epoch_s": times}


# --------------------------------------------------------------------------- tlkit


def tlkit_run(paths: dict[str, Path], size: int, seed: int, overrides: dict, tmp: Path,
              epochs: int = EPOCHS) -> dict:
    """``tlkit.train.fit`` with the default config plus ``overrides``; best epoch on val, then test."""
    from tlkit.train import evaluate_run, fit, make_config

    cfg = make_config(epochs=epochs, image_size=size, batch_size=BATCH, seed=seed, overrides=overrides)
    out = tmp / f"run{time.monotonic_ns()}"
    res = fit(cfg, data=paths["train"], val=paths.get("val"), out=out)  # no val: tlkit's own hold-out
    test = evaluate_run(out, paths["test"])
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {"test_accuracy": test["accuracy"], "test_f1_macro": test["f1_macro"], "best_epoch": res.best["epoch"],
            "epoch_s": [h["epoch_time_s"] for h in res.history]}


def study(args) -> dict:
    """Runs every dataset x variant x seed; results are appended to ``args.out`` as they come."""
    out = Path(args.out)
    results = json.loads(out.read_text())["runs"] if out.exists() else []
    done = {(r["dataset"], r["variant"], r["seed"], r["image_size"]) for r in results}
    cache = Path(args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in (args.seeds or "0").split(",")]:
            for name in datasets(args.datasets):
                paths = ft_data.dataset(name, cache)
                for v in variants(args.variants):
                    if (name, v, seed, args.image_size) in done:
                        continue
                    t0 = time.perf_counter()
                    r = (plain_loop(paths, args.image_size, seed) if v == "plain" else
                         tlkit_run(paths, args.image_size, seed, NAMED[v], Path(tmp)))
                    row = {"dataset": name, "variant": v, "seed": seed, "image_size": args.image_size,
                           "overrides": None if v == "plain" else NAMED[v],
                           "test_accuracy": round(r["test_accuracy"], 4),
                           "epoch_s_median": round(statistics.median(r["epoch_s"]), 2),
                           "wall_s": round(time.perf_counter() - t0, 1), "loadavg": round(os.getloadavg()[0], 2)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps({"epochs": EPOCHS, "batch_size": BATCH, "runs": results}, indent=0))
    return summary(results)


def summary(results: list[dict]) -> dict:
    """``{dataset: {variant: mean test accuracy over seeds}}`` (plus each variant's mean over study sets)."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results:
        table.setdefault(r["dataset"], {}).setdefault(r["variant"], []).append(r["test_accuracy"])
    out = {d: {v: round(statistics.mean(a), 4) for v, a in row.items()} for d, row in table.items()}
    study_sets = [d for d in out if d in ft_data.STUDY]
    all_v = {v for row in out.values() for v in row}
    out["mean over study sets"] = {v: round(statistics.mean(out[d][v] for d in study_sets), 4) for v in all_v
                                   if study_sets and all(v in out[d] for d in study_sets)}
    return out


def table(args) -> dict:
    """Markdown of ``args.out``: one row per dataset, one column per variant (mean over seeds; n seeds in
    brackets when more than one). ``--by-variant``: one row per variant, with its change against
    ``base`` (mean and worst over the study sets)."""
    runs = json.loads(Path(args.out).read_text())["runs"]
    if args.seeds is not None:
        runs = [r for r in runs if r["seed"] in {int(x) for x in args.seeds.split(",")}]
    s = summary(runs)
    s.pop("mean over study sets")
    vs = [v for v in variants(args.variants) if any(v in row for row in s.values())]
    seeds: dict[tuple[str, str], int] = {}
    for r in runs:
        seeds[r["dataset"], r["variant"]] = seeds.get((r["dataset"], r["variant"]), 0) + 1
    if args.by_variant:
        ds = [d for d in s if d in ft_data.STUDY]
        print("| variant | " + " | ".join(ds) + " | mean | change vs base: mean, worst |")
        print("|---" * (len(ds) + 3) + "|")
        for v in vs:
            acc = [s[d].get(v) for d in ds]
            if None in acc:
                continue
            delta = [a - s[d]["base"] for a, d in zip(acc, ds)] if all("base" in s[d] for d in ds) else []
            change = f"{100 * statistics.mean(delta):+.1f}, {100 * min(delta):+.1f} pts" if delta else ""
            print(f"| {v} | " + " | ".join(f"{a:.3f}" for a in acc) + f" | {statistics.mean(acc):.3f} | {change} |")
        return s
    print("| dataset | " + " | ".join(vs) + " |")
    print("|---" * (len(vs) + 1) + "|")
    for d, row in s.items():
        cells = [f"{row[v]:.3f}" + (f" ({seeds[d, v]})" if seeds.get((d, v), 1) > 1 else "") if v in row else ""
                 for v in vs]
        print(f"| {d} | " + " | ".join(cells) + " |")
    return s


# --------------------------------------------------------------------------- timm train.py


def export_weights(path: Path) -> Path:
    """The bundled efficientnet_lite0 weights as a state dict of ``timm.create_model('efficientnet_lite0')``."""
    from tlkit.models.backbones import create_backbone

    if not path.exists():
        torch.save(create_backbone("efficientnet_lite0", num_classes=1000).model.state_dict(), path)
    return path


def timm_test_accuracy(checkpoint: Path, paths: dict[str, Path], size: int) -> tuple[float, float]:
    """``(top-1, macro F1)`` of a timm train.py checkpoint on ``test/`` with timm's eval transform (resize,
    centre crop)."""
    from sklearn.metrics import f1_score

    import timm
    from timm.data import create_dataset, create_loader, resolve_data_config

    ds = create_dataset("", root=str(paths["test"]))
    model = timm.create_model("efficientnet_lite0", num_classes=len(ds.reader.class_to_idx),
                              checkpoint_path=str(checkpoint))
    cfg = resolve_data_config({"input_size": (3, size, size)}, model=model)
    loader = create_loader(ds, input_size=cfg["input_size"], batch_size=64, mean=cfg["mean"], std=cfg["std"],
                           crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], num_workers=0,
                           use_prefetcher=False, device=torch.device("cpu"))
    model.eval()
    pred, true = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in loader:
            pred += model(x).argmax(-1).tolist()
            true += y.tolist()
    acc = float(np.mean(np.array(pred) == np.array(true)))
    return acc, float(f1_score(true, pred, average="macro"))


def timm_run(train_py: Path, paths: dict[str, Path], size: int, weights: Path, tmp: Path, seed: int,
             extra: list[str] = (), epochs: int = EPOCHS) -> dict:
    """timm's train.py on ``root/{train,val}``: bf16 AMP, channels_last, AdamW, cosine, same weights;
    every other option at train.py's default (warmup 5 epochs, hflip 0.5, scale 0.08-1, jitter 0.4,
    label smoothing 0.1, ...). Epoch time: the last ``Train:`` line of each epoch, average update time
    x updates per epoch (data loading included, validation not; like tlkit's ``epoch_time_s``)."""
    import csv
    import re

    out = tmp / f"timm_{paths['train'].parent.name}"
    n_classes = sum(1 for p in paths["train"].iterdir() if p.is_dir())
    cmd = [sys.executable, str(train_py), str(paths["train"].parent), "--train-split", "train", "--val-split", "val",
           "--model", "efficientnet_lite0", "--pretrained", "--pretrained-path", str(weights),
           "--num-classes", str(n_classes), "--img-size", str(size), "-b", str(BATCH), "--epochs", str(epochs),
           "--opt", "adamw", "--lr", "1e-3", "--sched", "cosine", "--amp", "--amp-dtype", "bfloat16",
           "--channels-last", "--device", "cpu", "--workers", "0", "--seed", str(seed), "--output", str(out),
           "--experiment", "run", "--log-interval", "1000", "--checkpoint-hist", "1", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"timm train.py failed:\n{res.stderr[-3000:]}")
    log = res.stdout + res.stderr
    last = {}
    for m in re.finditer(r"Train: (\d+) \[\s*(\d+)/(\d+) \(100%\)\].*?\((\d+\.\d+)s,", log):
        last[int(m[1])] = float(m[4]) * int(m[3])
    rows = list(csv.DictReader((out / "run" / "summary.csv").open()))
    acc, f1 = timm_test_accuracy(out / "run" / "model_best.pth.tar", paths, size)
    return {"epoch_s": [last[e] for e in sorted(last)], "wall_s": round(wall, 1),
            "val_top1": [float(r["eval_top1"]) for r in rows], "command": " ".join(cmd[1:]),
            "test_accuracy": acc, "test_f1_macro": f1}


def timm_compare(args) -> dict:
    """timm train.py vs ``tlkit finetune`` defaults, one after the other on each dataset (same threads)."""
    out = Path(args.out)
    weights = export_weights(Path(args.cache) / "efficientnet_lite0_bundled.pth")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in datasets(args.datasets):
            paths = ft_data.dataset(name, args.cache)
            t = timm_run(Path(args.timm_train), paths, args.image_size, weights, Path(tmp), 0, args.timm_args.split())
            ours = tlkit_run(paths, args.image_size, 0, {}, Path(tmp))
            t_ep, o_ep = statistics.median(t["epoch_s"][1:]), statistics.median(ours["epoch_s"][1:])
            rows.append({"dataset": name, "image_size": args.image_size, "threads": args.threads,
                         "timm_test_accuracy": round(t["test_accuracy"], 4),
                         "tlkit_test_accuracy": round(ours["test_accuracy"], 4),
                         "timm_epoch_s": round(t_ep, 2), "tlkit_epoch_s": round(o_ep, 2),
                         "epoch_time_ratio": round(o_ep / t_ep, 3),
                         "timm_epoch_s_all": [round(x, 2) for x in t["epoch_s"]],
                         "tlkit_epoch_s_all": [round(x, 2) for x in ours["epoch_s"]],
                         "timm_val_top1": t["val_top1"], "timm_command": t["command"],
                         "loadavg": round(os.getloadavg()[0], 2)})
            print(json.dumps(rows[-1]), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"epochs": EPOCHS, "batch_size": BATCH, "rows": rows}, indent=1))
    return {"rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("study", "timm", "table"))
    p.add_argument("out", nargs="?", default=None, help="results JSON (study: appended to; table: read)")
    p.add_argument("--datasets", default="study,held-out")
    p.add_argument("--variants", default="plain,old,new")
    p.add_argument("--seeds", default=None, help="comma-separated (study: default 0; table: default all)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tlkit_ft_data"))
    p.add_argument("--timm-train", default="/tmp/timm_train.py")
    p.add_argument("--timm-args", default="", help="timm: more train.py options, e.g. the plain loop's "
                   "augmentation: '--warmup-epochs 1 --hflip 0 --scale 0.7 1 --color-jitter 0 --smoothing 0'")
    p.add_argument("--by-variant", action="store_true", help="table: one row per variant")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every run (1: on a shared 2-core CPU, 2 threads ran 4x slower per step)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # timm's train.py subprocess
    if args.out is None:
        args.out = f"benchmarks/results/defaults_{args.what}_{args.image_size}.json"
    print(json.dumps({"study": study, "timm": timm_compare, "table": table}[args.what](args), indent=1, default=str))


if __name__ == "__main__":
    main()
