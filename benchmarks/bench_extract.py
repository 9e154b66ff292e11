"""Benchmark: `tlkit extract` vs a plain feature-extraction loop, both as whole processes.

The reference is the loop a user would write: timm model with the same bundled weights, fp32, NCHW,
PIL decoding in the main process, ``torch.no_grad``. tlkit runs its CLI with default settings. Both
read the same JPEG photo crops. Also measures the peak mem of the whole process tree (PSS of main process +
decoding workers) for two pool sizes to show memory is flat in N.

Usage:
    python benchmarks/bench_extract.py [--images 400] [--rss-sizes 1000,5000] [--size 224]
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
from tlkit.backbones import create_backbone
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ref-batch-sizes", default="64,8",
                    help="batch sizes of the plain loop: 64 as users write it, 8 = tlkit's CPU default")
    ap.add_argument("--batch-size", type=int, default=None, help="tlkit's --batch-size (default: its own)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--no-pretrained", action="store_true")
    ap.add_argument("--rss-sizes", default="1000,5000")
    ap.add_argument("--gpu", action="store_true", help="run both on cuda")
    args = ap.parse_args()
    env = {**os.environ, "TLKIT_OFFLINE": "1"}
    device = "cuda" if args.gpu else "cpu"
    with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "imgs", args.images)
        ref_s = {}
        for bs in [int(b) for b in args.ref_batch_sizes.split(",") if b]:
            ref_s[bs], _ = timed(
                [sys.executable, "-c", REFERENCE, str(images), str(bs), str(args.size), device,
                 args.backbone, "0" if args.no_pretrained else "1", str(tmp / "ref.npy")], env)
        tl_cmd = [sys.executable, "-m", "tlkit", "extract", str(images), "--out", str(tmp / "tl"),
                  "--image-size", str(args.size), "--backbone", args.backbone, "--device", device]
        tl_cmd += (["--no-pretrained"] if args.no_pretrained else []) + (
            ["--batch-size", str(args.batch_size)] if args.batch_size else [])
        tl_s, _ = timed(tl_cmd, env)
        tl_rate = args.images / tl_s
        meta = json.loads((tmp / "tl" / "meta.json").read_text())
        print(f"\nextract, {args.images} JPEG photo crops, {args.backbone} @ {args.size}px, {device}, whole processes")
        print(f"{'':36}{'img/s':>8}{'seconds':>9}{'tlkit is':>10}")
        for bs, secs in ref_s.items():
            rate = args.images / secs
            print(f"{f'plain loop (fp32, NCHW, batch {bs})':36}{rate:>8.1f}{secs:>9.1f}{tl_rate / rate:>9.2f}x")
        print(f"{'tlkit extract (' + meta['precision'] + ', defaults)':36}{tl_rate:>8.1f}{tl_s:>9.1f}")
        print("target: >= 3x the plain loop on a 2-core AVX512-BF16 CPU")
        for n in [int(s) for s in args.rss_sizes.split(",") if s]:
            pool = make_images(tmp / f"pool{n}", n, size=128)
            secs, peak = timed([sys.executable, "-m", "tlkit", "extract", str(pool), "--out", str(tmp / f"o{n}"),
                                "--image-size", "96", "--backbone", args.backbone, "--device", device], env, memory=True)
            print(f"peak mem for {n:>6,} images: {peak / 2**20:7.0f} MB  ({n / secs:.0f} img/s at 96px)"
                  " (target < 1536 MB, flat in N)")


if __name__ == "__main__":
    main()
