"""Helper of benchmarks/gpu_check.sh: synthetic data, plain-PyTorch bounds, and the final report.

Subcommands (all write JSON into the work folder; `report` prints the table):
    info          versions, GPU, CPU count, tlkit's device/precision/engine/worker choices
    make-data     N synthetic JPEGs (class tree, 10 classes) at SIZE px, in parallel
    make-project  a flat pool (copies) + seed labels for `tlkit al-init`
    bounds        decode-only loader rates (tlkit's own dataset/transforms; training images also
                  through the device decoder, #29) and model-only GPU rates (bf16, channels_last)
                  on the same images, decoded once to the GPU. --tiny: a few images, tiny models,
                  a few steps, on the CPU when there is no GPU (tests/test_gpu_helper.py runs it)
    report        the compact table of img/s and ratios
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import glob
import json
import os
import re
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

CLASSES = 10


# --------------------------------------------------------------------------- info


def cmd_info(a) -> None:
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpus": len(os.sched_getaffinity(0))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
    out["cudnn_benchmark_default"] = torch.backends.cudnn.benchmark
    out["matmul_tf32_default"] = torch.backends.cuda.matmul.allow_tf32
    # API that tlkit uses but its torch>=2.2 floor does not guarantee
    out["torch.OutOfMemoryError"] = hasattr(torch, "OutOfMemoryError")
    out["torch.amp.GradScaler"] = hasattr(torch.amp, "GradScaler")
    try:
        import timm

        out["timm"] = timm.__version__
        from tlkit.core.runtime import (
            default_workers, inference_batch_size, precision_name, resolve_device, resolve_precision,
        )
        from tlkit.engines import planned_engine

        dev = resolve_device("auto")
        out.update(tlkit_device=str(dev), tlkit_precision=precision_name(resolve_precision("auto", dev)),
                   tlkit_extract_engine="/".join(planned_engine("auto", dev)),
                   tlkit_workers=default_workers(), tlkit_infer_batch=inference_batch_size(dev))
    except Exception as e:  # noqa: BLE001
        out["tlkit_error"] = f"{type(e).__name__}: {e}"
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


# --------------------------------------------------------------------------- data


def _one_image(job) -> None:
    import numpy as np
    from PIL import Image

    path, cls, seed, size = job
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hue = np.array([(cls * 37) % 256, (cls * 91 + 60) % 256, (cls * 151 + 120) % 256], np.float32)
    f1, f2, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
    wave = 0.55 + 0.45 * np.sin(2 * np.pi * (xx * f1 * (1 + cls % 3) + yy * f2) + ph)
    img = hue[None, None, :] * wave[..., None]
    for _ in range(rng.integers(2, 6)):  # a few blobs: edges and texture like a photo, not a flat field
        x0, y0 = rng.integers(0, size - 16, 2)
        w, h = rng.integers(16, size // 2, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def cmd_make_data(a) -> None:
    from multiprocessing import Pool

    out = Path(a.out)
    jobs = []
    for i in range(a.n):
        cls = i % CLASSES
        d = out / f"class{cls:02d}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((str(d / f"img{i:06d}.jpg"), cls, i, a.size))
    t = time.perf_counter()
    with Pool(max(1, min(16, len(os.sched_getaffinity(0))))) as pool:
        pool.map(_one_image, jobs, chunksize=64)
    sizes = [os.path.getsize(j[0]) for j in jobs[:200]]
    print(f"{a.n} JPEGs at {a.size} px in {out} ({time.perf_counter() - t:.1f} s, "
          f"~{statistics.mean(sizes) / 1024:.0f} KiB each)")


def cmd_make_project(a) -> None:
    data, work = Path(a.data), Path(a.work)
    pool, seed_csv = work / "al_pool", work / "al_seed.csv"
    pool.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(c.glob("*.jpg"))[: a.per_class]
        for k, f in enumerate(files):
            dst = pool / f"{c.name}_{f.name}"
            shutil.copyfile(f, dst)
            if k < a.labeled_per_class:
                rows.append(f"{dst.name},{c.name}")
    seed_csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    print(f"pool {sum(1 for _ in pool.iterdir())} images in {pool}, {len(rows)} seed labels in {seed_csv}")


# --------------------------------------------------------------------------- bounds


def _decoded(records, n: int, device: str = "cuda"):
    """The first ``n`` images as one uint8 [n, 3, H, W] tensor on the GPU (decoded once, on the CPU)."""
    import numpy as np
    import torch
    from PIL import Image

    arrs = [np.asarray(Image.open(r.path).convert("RGB")) for r in records[:n]]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous().to(device)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _batch(X, mean, std, i: int, bs: int):
    import torch

    idx = (torch.arange(bs, device=X.device) + i * bs) % X.shape[0]
    x = X[idx].float().div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last), idx


def _loader_rate(ds, bs: int, workers: int, passes: int = 2, device: str = "cuda", loader=None) -> float:
    """img/s of tlkit's own loader (make_loader: pin_memory, persistent workers) plus the H2D copy; last pass.
    ``loader``: an already built loader of batches (the device decoder's: images already on the device)."""
    from tlkit.data import make_loader

    dl = loader if loader is not None else make_loader(ds, batch_size=bs, workers=workers, device=device)
    rate = 0.0
    for _ in range(passes):
        t, n = time.perf_counter(), 0
        for b in dl:
            if b.images is not None:
                b.images.to(device, non_blocking=True)
                n += len(b.images)
        _sync(device)
        rate = n / (time.perf_counter() - t)
    del dl
    return rate


def _device_train_loader(records, c2i, dcfg, bs: int, workers: int, device: str):
    """tlkit's training loader with ``--decode device`` (#29): JPEG bytes in, augmented batches on the device."""
    from tlkit.data import build_transform
    from tlkit.data.device_augment import train_loader

    aug = {"scale": (0.7, 1.0), "hflip": 0.0, "vflip": 0.0, "color_jitter": 0.0, "auto_augment": None, "re_prob": 0.0}
    loader, path = train_loader(records, dcfg, aug, build_transform(dcfg, training=True, **aug), batch_size=bs,
                                workers=workers, device=device, sampler=list(range(len(records))), drop_last=False,
                                decode="device", class_to_idx=c2i)
    assert path == "device", path
    return loader


def _infer_rate(model, X, mean, std, bs: int, warm: int = 8, iters: int = 30) -> float:
    import torch

    device = X.device
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(warm + iters):
            if i == warm:
                _sync(device)
                t = time.perf_counter()
            model(_batch(X, mean, std, i, bs)[0])
        _sync(device)
    return iters * bs / (time.perf_counter() - t)


def _train_rate(X, Y, mean, std, bs: int, *, sync: bool = False, benchmark: bool = False,
                warm: int = 12, steps: int = 40, model_name: str = "resnet50") -> float:
    """Plain AMP loop: timm resnet50 (random init, 10 classes), bf16 autocast, channels_last, fused AdamW.
    ``sync``: two host syncs per step as tlkit's loop does (float(loss), float(correct))."""
    import timm
    import torch
    import torch.nn.functional as F

    device = X.device
    torch.backends.cudnn.benchmark = benchmark
    model = timm.create_model(model_name, pretrained=False, num_classes=CLASSES).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=device.type == "cuda")
    for s in range(warm + steps):
        if s == warm:
            _sync(device)
            t = time.perf_counter()
        x, idx = _batch(X, mean, std, s, bs)
        y = Y[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sync:
            float(loss.detach())
            float((logits.detach().argmax(-1) == y).sum())
    _sync(device)
    rate = steps * bs / (time.perf_counter() - t)
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rate


def cmd_bounds(a) -> None:
    import torch
    from tlkit.core.constants import DEFAULT_BACKBONE
    from tlkit.core.runtime import default_workers
    from tlkit.data import ImageDataset, build_transform, scan_images, size_hint_for
    from tlkit.models.backbones import create_backbone

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert a.tiny or device == "cuda", "no CUDA GPU visible (--tiny runs a few steps on the CPU)"
    # --tiny: what the GPU run does, at a size a CPU test takes seconds for (tiny models, a few steps)
    big, small = ("test_resnet", "test_efficientnet") if a.tiny else ("resnet50", DEFAULT_BACKBONE)
    steps = {"warm": 1, "iters": 2} if a.tiny else {}
    train_steps = {"warm": 1, "steps": 2} if a.tiny else {}
    res: dict = {"device": device, "tiny": bool(a.tiny)}
    src = scan_images(a.data)
    if a.tiny:  # 16 images across the classes
        src = dataclasses.replace(src, records=src.records[:: max(1, len(src.records) // 16)][:16])
    c2i = {c: i for i, c in enumerate(src.classes)}
    cpus = len(os.sched_getaffinity(0))
    w_default, w_all = default_workers(), (0 if a.tiny else max(1, cpus - 2))
    res["workers_default"], res["workers_all"] = w_default, w_all

    def save() -> None:
        Path(a.out).write_text(json.dumps(res, indent=1))

    # CPU side: tlkit's datasets and transforms, no model (what the GPU could be fed at most)
    r50 = create_backbone(big, pretrained=False)
    dcfg = r50.data_config
    eval_ds = ImageDataset(src.records, build_transform(dcfg), c2i, size_hint=size_hint_for(dcfg))
    train_tf = build_transform(dcfg, training=True, scale=(0.7, 1.0), hflip=0.0, vflip=0.0, color_jitter=0.0,
                               auto_augment=None, re_prob=0.0)  # tlkit's default augmentation
    train_ds = ImageDataset(src.records, train_tf, c2i)

    def measure(key: str, fn, *args, **kw) -> None:
        """One figure; a failure (OOM on a small GPU, ...) leaves it None and the rest still runs."""
        try:
            res[key] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001
            res[key] = None
            res.setdefault("errors", {})[key] = f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            torch.backends.cudnn.benchmark = False
        if res[key] is None and device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        save()
        print(key, None if res[key] is None else round(res[key]), flush=True)

    kw_dev = {"device": device, "passes": 1 if a.tiny else 2}
    measure("decode_eval_b64_wdef", _loader_rate, eval_ds, 64, w_default, **kw_dev)
    measure("decode_eval_b64_wall", _loader_rate, eval_ds, 64, w_all, **kw_dev)
    measure("decode_train_b32_wdef", _loader_rate, train_ds, 32, w_default, **kw_dev)
    measure("decode_train_b32_wall", _loader_rate, train_ds, 32, w_all, **kw_dev)
    measure("decode_train_b128_wall", _loader_rate, train_ds, 128, w_all, **kw_dev)
    # the same training images through the device decoder (JPEG bytes in, crop/flip/normalise on the device)
    for key, bs, w in (("decode_train_dev_b128_wdef", 128, w_default), ("decode_train_dev_b128_wall", 128, w_all)):
        measure(key, lambda bs=bs, w=w: _loader_rate(None, bs, w, **kw_dev, loader=_device_train_loader(
            src.records, c2i, dcfg, bs, w, device)))

    # GPU side: the same images decoded once into GPU memory, normalized on the GPU per batch
    X = _decoded(src.records, min(16 if a.tiny else 1024, len(src.records)), device)
    Y = torch.tensor([c2i[r.label] for r in src.records[: len(X)]], device=device)
    mean = torch.tensor(dcfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(dcfg.std, device=device).view(1, 3, 1, 1)
    for name, bb in (("resnet50", r50), (DEFAULT_BACKBONE, create_backbone(small, pretrained=False))):
        for bs in (64, 256) if not a.tiny else (4,):
            measure(f"infer_{name}_b{bs}", _infer_rate, bb.model, X, mean, std, bs, **steps)
        bb.model.cpu()
    for key, bs, kw in (("train_b32", 32, {}), ("train_b32_sync", 32, {"sync": True}),
                        ("train_b32_cudnnbench", 32, {"benchmark": True}), ("train_b128", 128, {}),
                        ("train_b256", 256, {})):
        measure(key, _train_rate, X, Y, mean, std, 4 if a.tiny else bs, model_name=big, **kw, **train_steps)
        if a.tiny:
            break
    if device == "cuda":
        res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    save()
    print(json.dumps({k: round(v) if isinstance(v, float) else v for k, v in res.items()}))


# --------------------------------------------------------------------------- report


def _json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _phases(work: Path) -> dict[str, dict]:
    out = {}
    for line in (work / "phases.tsv").read_text().splitlines() if (work / "phases.tsv").exists() else []:
        name, s, e, rc, cap = line.split("\t")
        out[name] = {"start": float(s), "end": float(e), "rc": rc, "wall": float(e) - float(s)}
    return out


def _gpu_util(work: Path, start: float, end: float) -> tuple[float | None, float | None]:
    """Mean GPU utilisation (%) and peak memory (GiB) seen by nvidia-smi between start and end."""
    util, mem = [], []
    try:
        lines = (work / "smi.log").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            ts = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            if start <= ts <= end:
                util.append(float(parts[1]))
                mem.append(float(parts[2]) / 1024)
        except ValueError:
            continue
    return (statistics.mean(util) if util else None), (max(mem) if mem else None)


def _gpu_idle(work: Path, start: float, end: float) -> float | None:
    """Share (0-1) of nvidia-smi's samples between start and end with the GPU at 0 % utilisation."""
    try:
        lines = (work / "smi.log").read_text().splitlines()
    except OSError:
        return None
    util = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) >= 3 and start <= datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp() <= end:
                util.append(float(parts[1]))
        except ValueError:
            continue
    return sum(u == 0 for u in util) / len(util) if util else None


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _log(work: Path, name: str) -> str:
    try:
        return (work / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""


def _fmt(v, nd=0) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:,.{nd}f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def cmd_report(a) -> None:
    work = Path(a.work)
    ph, info, b = _phases(work), _json(work / "info.json"), _json(work / "bounds.json")
    checks: list[tuple[str, bool, str]] = []
    print(f"\n=== tlkit GPU check: {info.get('gpu', '?')} ({info.get('gpu_mem_gib', '?')} GiB), torch {info.get('torch')}"
          f" cuda {info.get('cuda')}, timm {info.get('timm')}, {info.get('cpus')} CPUs ===")
    print(f"tlkit auto choices: device {info.get('tlkit_device')}, precision {info.get('tlkit_precision')}, "
          f"extract engine {info.get('tlkit_extract_engine')}, workers {info.get('tlkit_workers')}, "
          f"inference batch {info.get('tlkit_infer_batch')}; cudnn.benchmark default {info.get('cudnn_benchmark_default')}, "
          f"torch.OutOfMemoryError {'present' if info.get('torch.OutOfMemoryError') else 'MISSING'}")
    checks.append(("auto device is cuda", str(info.get("tlkit_device", "")).startswith("cuda"), str(info.get("tlkit_device"))))
    checks.append(("extract --engine auto -> torch", str(info.get("tlkit_extract_engine", "")).startswith("torch"),
                   str(info.get("tlkit_extract_engine"))))

    print("\n-- bounds (plain PyTorch / tlkit loader alone; same images) --------------------------------")
    print(f"{'what':44s} {'img/s':>9s}")
    for key, label in (("decode_eval_b64_wdef", f"decode-only eval tf, {b.get('workers_default')} workers (default)"),
                       ("decode_eval_b64_wall", f"decode-only eval tf, {b.get('workers_all')} workers"),
                       ("decode_train_b32_wdef", f"decode-only train tf, {b.get('workers_default')} workers (default)"),
                       ("decode_train_b32_wall", f"decode-only train tf, {b.get('workers_all')} workers"),
                       ("decode_train_b128_wall", "  same, b128"),
                       ("decode_train_dev_b128_wdef", f"device-decoded train b128, {b.get('workers_default')} workers"),
                       ("decode_train_dev_b128_wall", f"device-decoded train b128, {b.get('workers_all')} workers"),
                       ("infer_efficientnet_lite0_b64", "model-only infer lite0 bf16 b64"),
                       ("infer_efficientnet_lite0_b256", "model-only infer lite0 bf16 b256"),
                       ("infer_resnet50_b64", "model-only infer resnet50 bf16 b64"),
                       ("infer_resnet50_b256", "model-only infer resnet50 bf16 b256"),
                       ("train_b32", "plain AMP train resnet50 b32"),
                       ("train_b32_sync", "  same + 2 host syncs/step (tlkit before #29)"),
                       ("train_b32_cudnnbench", "  same + cudnn.benchmark"),
                       ("train_b128", "plain AMP train resnet50 b128"),
                       ("train_b256", "plain AMP train resnet50 b256")):
        print(f"{label:44s} {_fmt(b.get(key)):>9s}")

    print("\n-- (1) tlkit extract (synthetic 224 px JPEGs) ----------------------------------------------")
    print(f"{'run':22s} {'engine':16s} {'loop':>7s} {'call':>7s} {'proc':>7s} {'GPU%':>5s} "
          f"{'loop/model':>10s} {'loop/decode':>11s}")
    for name, model_key, label in (("extract_default", "infer_efficientnet_lite0_b64", "default (lite0)"),
                                   ("extract_r50", "infer_resnet50_b64", "resnet50 b64"),
                                   ("extract_r50_tuned", "infer_resnet50_b256", "resnet50 b256 +wkrs")):
        meta, p = _json(work / name.replace("extract", "ext") / "meta.json"), ph.get(name, {})
        if not meta:
            print(f"{label:22s} FAILED or skipped (rc {p.get('rc', '-')}); see {work / (name + '.log')}")
            checks.append((f"{name} ran", False, f"rc {p.get('rc')}"))
            continue
        n = meta.get("count", 0)
        loop = n / meta["embed_s"] if meta.get("embed_s") else None
        call = n / meta["elapsed_s"] if meta.get("elapsed_s") else None
        proc = n / p["wall"] if p.get("wall") else None
        util, _ = _gpu_util(work, p.get("start", 0), p.get("end", 0))
        eng = f"{meta.get('engine')}/{meta.get('precision')}/{meta.get('device')}"
        decode = b.get("decode_eval_b64_wall" if "tuned" in name else "decode_eval_b64_wdef")
        print(f"{label:22s} {eng:16s} {_fmt(loop):>7s} {_fmt(call):>7s} {_fmt(proc):>7s} {_fmt(util):>5s} "
              f"{_ratio(loop, b.get(model_key)):>10s} {_ratio(loop, decode):>11s}")
        checks.append((f"{name} on cuda with torch", meta.get("engine") == "torch" and str(meta.get("device")).startswith("cuda"), eng))
        if name != "extract_default":  # #29: extract resnet50 >= 0.7x the model-only bound
            bound = b.get(model_key)
            checks.append((f"#29 {name} loop >= 0.7x model-only bound", bool(loop and bound and loop >= 0.7 * bound),
                           f"{_ratio(loop, bound)}x: {_fmt(loop)} vs {_fmt(bound)} img/s"))
    print("  loop = images / embed loop s; call = / extract_features() s; proc = / whole command s (imports incl.)")

    print("\n-- (2) tlkit finetune resnet50 --no-pretrained, 2 epochs (80 % of the images train) -------------")
    best_ft = None
    ep2: dict[str, float | None] = {}
    print(f"{'run':22s} {'dev':10s} {'decode':>6s} {'ep1':>7s} {'ep2':>7s} {'wall s':>7s} {'GPU%':>5s} {'plain':>7s} "
          f"{'ep2/plain':>9s} {'ep2/decode':>10s}")
    for name, plain_key, dec_key, label in (
            ("finetune_b32", "train_b32", "decode_train_b32_wdef", "default (b32, auto)"),
            ("finetune_b128", "train_b128", "decode_train_dev_b128_wall", "b128 --decode device"),
            ("finetune_b128_cpu", "train_b128", "decode_train_b128_wall", "b128 --decode cpu")):
        out_dir = work / name.replace("finetune", "ft")
        m, p, log = _json(out_dir / "metrics.json"), ph.get(name, {}), _log(work, name)
        decode = re.search(r"^\s+train: (\w+)", _text(out_dir / "config.yaml"), re.M)
        dev = re.search(r"device (\S+), precision (\w+)", log)
        devs = f"{dev[1].rstrip(',')}/{dev[2]}" if dev else "?"
        hist = m.get("history", [])
        if not hist:
            print(f"{label:22s} FAILED or skipped (rc {p.get('rc', '-')}); see {work / (name + '.log')}")
            checks.append((f"{name} ran", False, f"rc {p.get('rc')}"))
            continue
        rates = [h.get("images_per_s") for h in hist]
        util, mem = _gpu_util(work, p.get("start", 0), p.get("end", 0))
        last = rates[-1]
        ep2[name] = last
        print(f"{label:22s} {devs:10s} {decode[1] if decode else '?':>6s} {_fmt(rates[0]):>7s} "
              f"{_fmt(rates[-1] if len(rates) > 1 else None):>7s} "
              f"{_fmt(p.get('wall')):>7s} {_fmt(util):>5s} {_fmt(b.get(plain_key)):>7s} "
              f"{_ratio(last, b.get(plain_key)):>9s} {_ratio(last, b.get(dec_key)):>10s}")
        checks.append((f"{name} on cuda", bool(dev) and dev[1].startswith("cuda"), devs))
        plain = b.get(plain_key)  # #29: >= 0.85x the plain AMP loop at the same batch
        checks.append((f"#29 {name} >= 0.85x plain AMP loop", bool(last and plain and last >= 0.85 * plain),
                       f"{_ratio(last, plain)}x: {_fmt(last)} vs {_fmt(plain)} img/s"))
        best_ft = max(best_ft or 0, last or 0)
    checks.append(("#29 finetune resnet50 >= 2,500 img/s (largest batch tried)", bool(best_ft and best_ft >= 2500),
                   f"{_fmt(best_ft)} img/s"))
    dev_ep2, cpu_ep2 = ep2.get("finetune_b128"), ep2.get("finetune_b128_cpu")
    print(f"  --decode device vs cpu at b128: {_ratio(dev_ep2, cpu_ep2)}x ({_fmt(dev_ep2)} vs {_fmt(cpu_ep2)} img/s, epoch 2)")
    checks.append(("#29 finetune --decode device >= --decode cpu (b128)", bool(dev_ep2 and cpu_ep2 and dev_ep2 >= cpu_ep2),
                   f"{_ratio(dev_ep2, cpu_ep2)}x"))
    print("  ep = images_per_s of tlkit's metrics.json; plain = model-only AMP loop, same batch, same images on GPU;")
    print("  decode = config.yaml chosen.decode.train (where the training JPEGs were decoded and augmented)")

    print("\n-- (3) tlkit al-round --train finetune (AL_POOL pool images, 10 seed labels a class, 2 epochs) --")
    cache = [_json(f) for f in glob.glob(str(work / "al_project" / "cache" / "*" / "meta.json"))]
    emb = ", ".join(f"{c.get('engine')}/{c.get('device')}" for c in cache) or "?"
    pool_n = sum(1 for _ in (work / "al_pool").iterdir()) if (work / "al_pool").is_dir() else 0
    rounds = [Path(f) for f in sorted(glob.glob(str(work / "al_project" / "rounds" / "*" / "metrics.json")))]
    rounds = [r for r in rounds if _json(r).get("train") == "finetune"]
    print(f"pool {pool_n:,} images, pool embeddings {emb}")
    print(f"{'round':34s} {'rc':>3s} {'wall s':>7s} {'idle%':>6s} {'GPU%':>5s} {'GiB':>5s} {'train s':>8s} "
          f"{'pool read':>9s} {'score s':>8s} {'train img/s':>14s}")
    for k, (name, label) in enumerate((("al_round", "round 1 (embeds pool, fills store)"),
                                       ("al_round2", "round 2 (--new, store reused)"))):
        p, log = ph.get(name, {}), _log(work, name)
        dev = re.search(r"device (\S+), precision (\w+)", log)
        rm = _json(rounds[k]) if k < len(rounds) else {}
        mm = _json(rounds[k].parent / "model" / "metrics.json") if k < len(rounds) else {}
        util, mem = _gpu_util(work, p.get("start", 0), p.get("end", 0))
        idle = _gpu_idle(work, p.get("start", 0), p.get("end", 0))
        rates = [round(h.get("images_per_s", 0)) for h in mm.get("history", [])]
        print(f"{label:34s} {p.get('rc', '-'):>3s} {_fmt(p.get('wall'), 1):>7s} "
              f"{_fmt(idle * 100 if idle is not None else None):>6s} {_fmt(util):>5s} {_fmt(mem, 1):>5s} "
              f"{_fmt(rm.get('train_s'), 1):>8s} {rm.get('pool_decode', '-'):>9s} {_fmt(rm.get('pool_score_s'), 1):>8s} "
              f"{str(rates):>14s}")
        checks.append((f"{name} exit 0", p.get("rc") == "0", f"rc {p.get('rc')}"))
        checks.append((f"#29 {name} GPU idle < 30 % of wall time", idle is not None and idle < 0.3,
                       f"{_fmt(idle * 100 if idle is not None else None)} % idle, pool {pool_n:,}"))
        checks.append((f"{name} finetune on cuda", bool(dev) and dev[1].startswith("cuda"),
                       dev[1] if dev else "no device log line"))
    checks.append(("al-round 2 scores the pool from the pixel store",
                   len(rounds) > 1 and _json(rounds[1]).get("pool_decode") == "store",
                   _json(rounds[1]).get("pool_decode", "-") if len(rounds) > 1 else "no round 2"))
    checks.append(("al-round pool embedded on cuda", bool(cache) and all(str(c.get("device", "")).startswith("cuda") for c in cache), emb))
    print("  idle% = share of nvidia-smi samples (0.5 s) at 0 % utilisation; pool read = how the round read the pool "
          "to score it (store: the uint8 pixel store, device: nvJPEG, cpu: PIL)")

    print("\n-- checks --------------------------------------------------------------------------------------")
    for what, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}  ({detail})")
    failed = [n for n, q in ph.items() if q["rc"] not in ("0", "skipped")]
    skipped = [n for n, q in ph.items() if q["rc"] == "skipped"]
    if failed or skipped:
        print(f"steps failed: {failed or '-'}; skipped (time budget): {skipped or '-'}; logs in {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info")
    p.add_argument("--out", required=True)
    p = sub.add_parser("make-data")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--size", type=int, default=224)
    p = sub.add_parser("make-project")
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--labeled-per-class", type=int, default=10)
    p = sub.add_parser("bounds")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="a few steps with tiny models; the CPU when no GPU")
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    a = ap.parse_args()
    {"info": cmd_info, "make-data": cmd_make_data, "make-project": cmd_make_project, "bounds": cmd_bounds,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
