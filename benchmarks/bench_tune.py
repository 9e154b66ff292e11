"""Benchmark: does ``tlkit tune --budget 5`` finish within its budget, and does its recipe beat the defaults?

Data: scikit-learn digits (real scans) rendered as 32 px PNGs and split 60/10/30 (train 1,078 /
val 180 / test 539 images, ``bench_finetune.digits_splits``). Three processes, as a user runs them:

1. ``tlkit tune train/ --val val/ --budget B`` (wall time measured around the whole process);
2. ``tlkit finetune`` with the defaults and ``tlkit finetune --recipe OUT/recipe.yaml``, the same
   epochs and image size for both;
3. ``tlkit evaluate`` of both runs on the test split, which tuning never saw.

Usage:
    python benchmarks/bench_tune.py [--budget 5] [--epochs 5] [--trial-epochs 2] [--image-size 64]
        [--threads 0] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_finetune import digits_splits  # noqa: E402


def tlkit(*args: str, env: dict) -> tuple[str, float]:
    """Run ``python -m tlkit ARGS``; (stdout, seconds). A failure ends the benchmark with its stderr."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"tlkit {' '.join(args[:3])}... failed:\n{res.stderr[-3000:]}")
    return res.stdout, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=5.0, help="tlkit tune --budget (minutes)")
    p.add_argument("--trial-epochs", type=int, default=2, help="tlkit tune --epochs (each trial)")
    p.add_argument("--epochs", type=int, default=5, help="finetune epochs of both final runs")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every process (0: default)")
    p.add_argument("--cache", default=None, help="keep the rendered digits here between runs")
    args = p.parse_args()
    env = {**os.environ, "TLKIT_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.cache or tmp)
        s = digits_splits(root / "digits")
        size = ["--image-size", str(args.image_size)]
        _, tune_s = tlkit("tune", str(s["train"]), "--val", str(s["val"]), "--out", f"{tmp}/tune", "--budget",
                          str(args.budget), "--epochs", str(args.trial_epochs), *size, env=env)
        summary = json.loads(Path(f"{tmp}/tune/tune.json").read_text())
        common = ["--data", str(s["train"]), "--val", str(s["val"]), "--epochs", str(args.epochs), *size]
        acc = {}
        for name, extra in (("defaults", []), ("tuned", ["--recipe", f"{tmp}/tune/recipe.yaml"])):
            _, secs = tlkit("finetune", *common, "--out", f"{tmp}/{name}", *extra, env=env)
            out, _ = tlkit("evaluate", f"{tmp}/{name}", "--data", str(s["test"]), "--json", env=env)
            acc[name] = {"test_accuracy": json.loads(out)["accuracy"], "finetune_s": round(secs, 1)}
    report = {"budget_s": args.budget * 60, "tune_process_s": round(tune_s, 1), "tune_elapsed_s": summary["elapsed_s"],
              "within_budget": summary["elapsed_s"] <= args.budget * 60, "trials": summary["trials"],
              "states": summary["states"], "lr_suggestion": summary["lr_find"]["suggestion"],
              "val": {"defaults": (summary["base"] or {}).get("value"), "tuned": (summary["best"] or {}).get("value")},
              "recipe": summary["recipe"], "test": acc, "epochs": args.epochs, "image_size": args.image_size,
              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"tune: {report['tune_elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget "
          f"({report['tune_process_s']:.0f} s with process start), {report['trials']} trials {report['states']}")
    print(f"validation {summary['monitor']}: defaults {report['val']['defaults']}, tuned {report['val']['tuned']}")
    print(f"test accuracy after {args.epochs} epochs: defaults {acc['defaults']['test_accuracy']:.4f}, "
          f"tuned {acc['tuned']['test_accuracy']:.4f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
