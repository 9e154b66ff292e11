"""Fine-tuning benchmark on scikit-learn digits (real scans rendered as 32 px PNGs).

Three measurements on the same data:

* ``speed`` (default): epoch time of ``tlkit finetune`` (defaults: bf16 autocast where the CPU has
  it with depthwise convolutions kept in fp32, channels_last, denormals flushed, freed memory kept
  for reuse) against a plain reference loop (fp32, NCHW, AdamW + CE) over the same model, weights,
  transform, loader and batch size. Each runs as a whole process of its own: reference, tlkit,
  reference again; the first epoch of each process is a warm-up (oneDNN kernel generation) and the
  medians of the others are compared (4 epochs: three timed ones per process).
  A last reference run under tlkit's allocator setting (``MALLOC_MMAP_MAX_=0``) shows how much of
  the gain that one setting is.
* ``accuracy``: ``tlkit.train.fit`` with default hyperparameters on a 60/10/30 stratified split
  (train/val/test), default offline backbone (efficientnet_lite0, bundled weights), then
  ``evaluate_run`` on the held-out 30%.

Usage:
    python benchmarks/bench_finetune.py speed    [--epochs 4] [--image-size 224] [--train-images 320] [--batch-size 32]
    python benchmarks/bench_finetune.py speed --image-size 96 --train-images 0   # small inputs, all 1,078 digits
    python benchmarks/bench_finetune.py accuracy [--epochs 8] [--image-size 96]
    python benchmarks/bench_finetune.py photos   [--image-size 160]   # linear-probe on photo crops
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tlkit, not an installed one


def digits_splits(root: Path, seed: int = 0) -> dict[str, Path]:
    """``root/{train,val,test}`` class trees: a stratified 60/10/30 split of the 1,797 digits."""
    from sklearn.model_selection import train_test_split

    from tlkit.demo import digits_arrays, make_digits_folder

    _, labels = digits_arrays()
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=0.6, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=0.25, stratify=labels[rest], random_state=seed)
    out = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        folder = root / name
        if not folder.exists():
            make_digits_folder(folder, indices=np.sort(part), size=32)
        out[name] = folder
    return out


def subset_tree(src: Path, dst: Path, n: int, seed: int = 0) -> Path:
    """``dst``: a stratified sample of ``n`` files of the class tree ``src`` (copied)."""
    import shutil

    from sklearn.model_selection import train_test_split

    files = sorted(p for p in src.rglob("*.png"))
    labels = [p.parent.name for p in files]
    keep, _ = train_test_split(files, train_size=n, stratify=labels, random_state=seed)
    for f in keep:
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / f.parent.name / f.name)
    return dst


def reference_epochs(model, loader, epochs: int) -> list[float]:
    """A plain loop: fp32, NCHW, AdamW(lr 1e-3), cross-entropy. Seconds per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch.images), batch.targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def reference(args) -> dict:
    """The plain loop over ``args.data``, run in a fresh process of its own (``_reference``)."""
    import resource

    from tlkit.data import ImageDataset, build_transform, make_loader, scan_images
    from tlkit.models.backbones import create_backbone
    from tlkit.train import make_config

    cfg = make_config(image_size=args.image_size, batch_size=args.batch_size, workers=args.workers)
    # same backbone and weights, same training transform, loader and batch size as the engine
    bb = create_backbone(cfg.backbone, num_classes=10)
    data_config = dict(bb.data_config, input_size=(3, args.image_size, args.image_size))
    src = scan_images(Path(args.data))
    tf = build_transform(data_config, training=True, scale=(cfg.scale_min, 1.0), hflip=cfg.hflip,
                         color_jitter=cfg.color_jitter)
    loader = make_loader(ImageDataset(src.records, tf, src.class_to_idx), batch_size=args.batch_size,
                         workers=args.workers, device="cpu", shuffle=True, drop_last=True)
    times = reference_epochs(bb.model, loader, args.epochs)
    return {"epoch_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}


def _run(cmd: list[str], env: dict | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed:\n{res.stderr[-2000:]}")
    return res.stdout


def speed(args) -> dict:
    """Reference process, ``tlkit finetune`` process, reference process again (machine-load drift
    hits both), then the reference under tlkit's allocator setting to show that setting's share."""
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    with tempfile.TemporaryDirectory() as tmp:
        splits = digits_splits(Path(args.cache or tmp))
        if args.train_images:
            splits["train"] = subset_tree(splits["train"], Path(tmp) / f"train{args.train_images}", args.train_images)
        shape = ["--epochs", str(args.epochs), "--image-size", str(args.image_size),
                 "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        ref_cmd = [sys.executable, __file__, "_reference", "--data", str(splits["train"]), *shape]

        def ref_run(extra_env=None) -> dict:
            return json.loads(_run(ref_cmd, {**env, **(extra_env or {})}))

        ref = ref_run()
        _run([sys.executable, "-m", "tlkit", "finetune", "--data", str(splits["train"]), "--val", str(splits["val"]),
              "--out", str(Path(tmp) / "run"), *shape], env)
        history = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["history"]
        ref2 = ref_run()
        ref_heap = ref_run({"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)})
        n_train = len(list(splits["train"].rglob("*.png")))
    ours = [h["epoch_time_s"] for h in history]
    plain = ref["epoch_s"][1:] + ref2["epoch_s"][1:]  # epoch 1 of each process: warm-up
    o, r, rh = statistics.median(ours[1:]), statistics.median(plain), statistics.median(ref_heap["epoch_s"][1:])
    return {"engine_epoch_s": [round(t, 2) for t in ours],
            "reference_epoch_s": [round(t, 2) for t in ref["epoch_s"] + ref2["epoch_s"]],
            "reference_heap_epoch_s": [round(t, 2) for t in ref_heap["epoch_s"]],
            "engine_median_s": round(o, 2), "reference_median_s": round(r, 2), "speedup": round(r / o, 2),
            "speedup_vs_reference_with_tlkit_allocator": round(rh / o, 2),
            "train_images": n_train, "batch_size": args.batch_size,
            "image_size": args.image_size, "reference_peak_rss_mb": ref["peak_rss_mb"], "loadavg": os.getloadavg()}


def accuracy(args) -> dict:
    from tlkit.train import evaluate_run, fit, make_config

    with tempfile.TemporaryDirectory() as tmp:
        splits = digits_splits(Path(args.cache or tmp))
        cfg = make_config(args.recipe, epochs=args.epochs, image_size=args.image_size, workers=args.workers,
                          overrides=args.set)
        t0 = time.perf_counter()
        res = fit(cfg, data=splits["train"], val=splits["val"], out=Path(tmp) / "run")
        train_s = time.perf_counter() - t0
        test = evaluate_run(Path(tmp) / "run", splits["test"], workers=args.workers)
    return {"test_accuracy": test["accuracy"], "test_f1_macro": test["f1_macro"], "best_epoch": res.best["epoch"],
            "best_val_accuracy": res.best["val_accuracy"], "weights_from": res.best["weights_from"],
            "train_s": train_s, "history": [{k: round(v, 4) for k, v in h.items()} for h in res.history]}


def photos(args) -> dict:
    """The linear-probe recipe on crops of the skimage photos (6 classes), tested on other crops."""
    from tlkit.demo import make_photo_crops_folder
    from tlkit.train import evaluate_run, fit, make_config

    with tempfile.TemporaryDirectory() as tmp:
        train = make_photo_crops_folder(Path(tmp) / "train", per_class=40, seed=10)
        test = make_photo_crops_folder(Path(tmp) / "test", per_class=20, seed=11)
        cfg = make_config(args.recipe or "linear-probe", image_size=args.image_size, workers=args.workers,
                          overrides=args.set)
        t0 = time.perf_counter()
        res = fit(cfg, data=train, out=Path(tmp) / "run")
        train_s = time.perf_counter() - t0
        m = evaluate_run(Path(tmp) / "run", test, workers=args.workers)
    return {"recipe": args.recipe or "linear-probe", "test_accuracy": m["accuracy"], "test_f1_macro": m["f1_macro"],
            "train_images": res.n_train, "test_images": 120, "train_s": round(train_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "accuracy", "photos", "_reference"), nargs="?", default="speed")
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None,
                   help="default: speed 224 (the backbone's own, what `tlkit finetune` uses), accuracy 96, photos 160")
    p.add_argument("--train-images", type=int, default=320,
                   help="speed: train on a stratified subset of this size (0: all 1,078)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--recipe", default=None)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--threads", type=int, default=0, help="speed: OMP_NUM_THREADS of every process (0: default)")
    p.add_argument("--cache", default=None, help="keep the rendered digits here between runs")
    args = p.parse_args()
    if args.epochs is None:
        args.epochs = 4 if args.what == "speed" else 8
    if args.image_size is None:
        args.image_size = {"speed": 224, "accuracy": 96, "photos": 160}.get(args.what, 224)
    torch.manual_seed(0)
    result = {"speed": speed, "accuracy": accuracy, "photos": photos, "_reference": reference}[args.what](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
