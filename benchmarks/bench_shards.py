"""Sharded extraction on one machine: one process against ``torchrun --nproc_per_node=N`` (issue #17).

Data: the 1,797 scikit-learn digits as PNGs (``tlkit.demo.make_digits_folder``), embedded with
efficientnet_lite0 (bundled weights) at ``--image-size``. Runs, each a fresh output folder, wall time
of the whole command (start-up, model build and the merge included):

* one process with all the cores (torch's default threads);
* ``torchrun --standalone --nproc_per_node=N`` with ``cores / N`` threads per process.

Checks that the merged ``features.npy`` and ``index.csv`` are byte-for-byte the one-process ones
(``--precision fp32``; with bf16 they may differ in the last bits where batch composition changes
the kernels) and prints the speed-up.

Usage:
    python benchmarks/bench_shards.py [--procs 2] [--image-size 96] [--precision fp32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "TLKIT_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tlkit.demo import make_digits_folder

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        images = make_digits_folder(Path(tmp) / "digits")
        n = sum(1 for _ in images.rglob("*.png"))
        opts = ["--image-size", str(args.image_size), "--precision", args.precision, "--workers", "0"]
        one = run([sys.executable, "-m", "tlkit", "extract", str(images), "--out", f"{tmp}/one", *opts], cores)
        many = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
                    "-m", "tlkit", "extract", str(images), "--out", f"{tmp}/many", *opts],
                   max(1, cores // args.procs))
        import numpy as np

        same = all((Path(tmp, "one", f).read_bytes() == Path(tmp, "many", f).read_bytes())
                   for f in ("features.npy", "index.csv"))
        a, b = np.load(f"{tmp}/one/features.npy"), np.load(f"{tmp}/many/features.npy")
        diff = float(np.abs(a - b).max() / np.abs(a).max())
    print(f"{n} images at {args.image_size} px, {args.precision}, {cores} cores")
    print(f"one process, {cores} threads: {one:.1f} s ({n / one:.0f} img/s)")
    print(f"torchrun {args.procs} processes, {max(1, cores // args.procs)} thread(s) each: {many:.1f} s "
          f"({n / many:.0f} img/s); speed-up {one / many:.2f}x")
    print(f"merged result byte-for-byte the one-process result: {same} (largest difference {diff:.1e} of the "
          "largest feature; one process with several threads splits the same sums differently: the test "
          "compares at one thread each, where they are identical)")


if __name__ == "__main__":
    main()
