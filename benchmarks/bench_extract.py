"""Benchmark: `tlkit extract` vs a plain feature-extraction loop, all as whole processes, in one run.

The reference is the loop a user would write: timm model with the same bundled weights, fp32, NCHW,
PIL decoding in the main process, ``torch.no_grad``. tlkit runs its CLI with default settings
(``--engine auto``: OpenVINO on a CPU) with a cold compiled-model cache (a fresh ``TLKIT_CACHE_DIR``)
and again warm, and with ``--engine torch``. All read the same JPEG photo crops. Also:
OpenVINO's model-only throughput on random input (the ceiling for the in-loop rate, decode
included, that tlkit records as ``meta.json`` ``embed_s``); start-up (a whole `tlkit extract` of 8
images, warm cache); the peak memory of the whole process tree (PSS of main process + decoding
workers) for two pool sizes, to show memory is flat in N; and the embedding step of a head-mode
``al-round`` on a new pool, against the plain loop's per-image rate measured above.

Usage:
    python benchmarks/bench_extract.py [--images 2000] [--rss-sizes 1000,5000] [--al-pool 10000]
    python benchmarks/bench_extract.py --gpu --backbone resnet50   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REFERENCE = r"""
import sys, time, numpy as np, torch, timm
from pathlib import Path
from PIL import Image
from tlkit.models.backbones import create_backbone
root, bs, size, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
bb = create_backbone(sys.argv[5], pretrained=sys.argv[6] == "1")
model = bb.model.to(device).eval()
cfg = dict(bb.data_config); cfg["input_size"] = (3, size, size)
tf = timm.data.create_transform(**cfg)
paths = sorted(root.rglob("*.jpg"))
out = []
with torch.no_grad():
    for i in range(0, len(paths), bs):
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + bs]]).to(device)
        out.append(model(x).cpu().numpy())
np.save(sys.argv[7], np.concatenate(out))
"""


def make_images(root: Path, n: int, size: int = 256) -> Path:
    from tlkit.demo import PHOTOS, make_photo_crops_folder

    per_class = -(-n // len(PHOTOS))
    make_photo_crops_folder(root, per_class=per_class, size=size, seed=1)
    extra = sorted(root.rglob("*.jpg"))[n:]
    for p in extra:
        p.unlink()
    return root


class TreeRSS:
    """Samples the summed memory (PSS) of a process and its descendants from /proc."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tree(self, pid: int) -> list[int]:
        pids = [pid]
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    for child in f.read().split():
                        pids += self._tree(int(child))
        except OSError:
            pass
        return pids

    def _rss(self, pid: int) -> int:
        """Proportional set size: pages shared by forked workers are counted once in the sum."""
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree(self.pid)))
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


MODEL_ONLY = r"""
import sys, time, numpy as np, torch
from tlkit.engines import ModelSpec, create_engine
from tlkit.models.backbones import create_backbone
bb = create_backbone(sys.argv[1], pretrained=sys.argv[2] == "1")
bb.model.reset_classifier(0)
size, bs, engine = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
eng = create_engine(ModelSpec.of(bb.model, (3, size, size), backbone=bb.name,  # extract's identity: its cache entry
                                 weights=bb.weights.sha256 or bb.weights.source),
                    engine=engine, device="cpu")
x = np.random.default_rng(0).standard_normal((bs, 3, size, size), dtype=np.float32)
for _ in range(3):
    eng(x)
n, t = 0, time.perf_counter()
while time.perf_counter() - t < 10:
    eng(x); n += bs
print(f"{eng.name} {eng.precision} {n / (time.perf_counter() - t):.1f}")
"""

AL_ROUND = r"""
import sys, time
from tlkit.active.project import Project
from tlkit.active.round import embeddings_for
p = Project.create(sys.argv[1], pool=sys.argv[2], classes=("a", "b"))
t = time.perf_counter()
paths, emb = embeddings_for(p, device="cpu")
print(f"{len(paths)} {time.perf_counter() - t:.2f}")
"""


def load() -> str:
    """The 1-minute load average (what else runs on the machine), for every row."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def timed(cmd: list[str], env: dict, memory: bool = False) -> tuple[float, int]:
    """Wall time of ``cmd``; with ``memory``, also its peak tree PSS (sampling slows the process:
    reading smaps_rollup takes the process's memory lock, so speed runs are not sampled)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid, every=0.2) if memory else None
    _, err = proc.communicate()
    peak = rss.stop() if rss else 0
    if proc.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return time.perf_counter() - t, peak


def output_of(cmd: list[str], env: dict) -> str:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ref-batch-sizes", default="64,8",
                    help="batch sizes of the plain loop: 64 as users write it, 8 = tlkit's CPU default")
    ap.add_argument("--batch-size", type=int, default=None, help="tlkit's --batch-size (default: its own)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--no-pretrained", action="store_true")
    ap.add_argument("--rss-sizes", default="1000,5000")
    ap.add_argument("--al-pool", type=int, default=10000, help="images of the new al-round pool (0: skip)")
    ap.add_argument("--gpu", action="store_true", help="run both on cuda")
    return ap.parse_args()


class Bench:
    """One benchmark run: the images, the environment, and the rows printed so far."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.env = {**os.environ, "TLKIT_OFFLINE": "1"}
        self.device = "cuda" if args.gpu else "cpu"
        self.pre = "0" if args.no_pretrained else "1"
        self.images = make_images(tmp / "imgs", args.images)

    def plain(self, bs: int) -> float:
        secs, _ = timed([sys.executable, "-c", REFERENCE, str(self.images), str(bs), str(self.args.size), self.device,
                         self.args.backbone, self.pre, str(self.tmp / "ref.npy")], self.env)
        return secs

    def tl(self, out: str, *extra: str, cache: str = "cache", imgs: Path | None = None) -> tuple[float, dict]:
        a = self.args
        cmd = [sys.executable, "-m", "tlkit", "extract", str(imgs or self.images), "--out", str(self.tmp / out),
               "--image-size", str(a.size), "--backbone", a.backbone, "--device", self.device, *extra]
        cmd += (["--no-pretrained"] if a.no_pretrained else []) + (["--batch-size", str(a.batch_size)] if a.batch_size else [])
        secs, _ = timed(cmd, {**self.env, "TLKIT_CACHE_DIR": str(self.tmp / cache)})
        return secs, json.loads((self.tmp / out / "meta.json").read_text())

    def model_only(self) -> str:
        a = self.args
        return output_of([sys.executable, "-c", MODEL_ONLY, a.backbone, self.pre, str(a.size), str(a.batch_size or 8),
                          "auto"], {**self.env, "TLKIT_CACHE_DIR": str(self.tmp / "cold-cache")})


def speed_rows(b: Bench) -> float:
    """Plain loops, tlkit torch / auto cold / auto warm, model only, start-up; returns the best plain s."""
    n = b.args.images
    ref_s = {}
    for bs in [int(v) for v in b.args.ref_batch_sizes.split(",") if v]:
        ref_s[bs] = (b.plain(bs), load())
    rows = [("tlkit extract --engine torch", *b.tl("torch", "--engine", "torch"), load())]
    rows.append(("tlkit extract (auto), cold cache", *b.tl("cold", cache="cold-cache"), load()))
    rows.append(("tlkit extract (auto), warm cache", *b.tl("warm", cache="cold-cache"), load()))
    start_s, _ = b.tl("start", cache="cold-cache", imgs=make_images(b.tmp / "eight", 8))
    engine, prec, rate = b.model_only().split()
    best = min(s for s, _ in ref_s.values())
    print(f"\nextract, {n} JPEG photo crops (256 px), {b.args.backbone} @ {b.args.size}px, {b.device}, whole processes")
    print(f"{'':50}{'img/s':>8}{'seconds':>9}{'vs best plain':>14}{'in-loop img/s':>15}{'load':>6}")
    for bs, (secs, ld) in ref_s.items():
        print(f"{f'plain loop (fp32, NCHW, batch {bs})':50}{n / secs:>8.1f}{secs:>9.1f}{best / secs:>13.2f}x{'':>15}{ld:>6}")
    for name, secs, meta, ld in rows:
        label = f"{name} [{meta.get('engine', 'torch')} {meta['precision']}]"
        in_loop = n / meta["embed_s"] if meta.get("embed_s") else float("nan")
        print(f"{label:50}{n / secs:>8.1f}{secs:>9.1f}{best / secs:>13.2f}x{in_loop:>15.1f}{ld:>6}")
    print(f"{f'model only, random input [{engine} {prec}]':50}{float(rate):>8.1f}{'':>38}{load():>6}")
    print(f"start-up: whole `tlkit extract` of 8 images, warm cache: {start_s:.2f} s")
    print("targets: auto >= 3x the plain loop (whole process, cold cache); in-loop >= 0.8x model only")
    return best


def memory_rows(b: Bench) -> None:
    """Peak PSS at each pool size, 96 px, warm compiled-model cache (an 8-image run converts first)."""
    timed([sys.executable, "-m", "tlkit", "extract", str(b.tmp / "eight"), "--out", str(b.tmp / "warm96"),
           "--image-size", "96", "--backbone", b.args.backbone, "--device", b.device],
          {**b.env, "TLKIT_CACHE_DIR": str(b.tmp / "cache")})
    for size_n in [int(v) for v in b.args.rss_sizes.split(",") if v]:
        pool = make_images(b.tmp / f"pool{size_n}", size_n, size=128)
        secs, peak = timed([sys.executable, "-m", "tlkit", "extract", str(pool), "--out", str(b.tmp / f"o{size_n}"),
                            "--image-size", "96", "--backbone", b.args.backbone, "--device", b.device],
                           {**b.env, "TLKIT_CACHE_DIR": str(b.tmp / "cache")}, memory=True)
        print(f"peak mem for {size_n:>6,} images: {peak / 2**20:7.0f} MB  ({size_n / secs:.0f} img/s at 96px, load "
              f"{load()}) (target < 1536 MB, flat in N)")


def al_row(b: Bench, best_plain_s: float) -> None:
    pool = make_images(b.tmp / "alpool", b.args.al_pool)
    out = output_of([sys.executable, "-c", AL_ROUND, str(b.tmp / "proj"), str(pool)],
                    {**b.env, "TLKIT_CACHE_DIR": str(b.tmp / "cache")})
    count, secs = out.split()
    plain = int(count) * best_plain_s / b.args.images
    print(f"al-round (head) embedding of a new {int(count):,}-image pool: {secs} s ({int(count) / float(secs):.0f} "
          f"img/s, load {load()}); the plain loop's rate above would take {plain:.0f} s ({plain / float(secs):.2f}x)")


def main() -> None:
    args = _args()
    print(f"load average at start: {load()} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as tmp:
        b = Bench(args, Path(tmp))
        best = speed_rows(b)
        memory_rows(b)
        if args.al_pool:
            al_row(b, best)


if __name__ == "__main__":
    main()
