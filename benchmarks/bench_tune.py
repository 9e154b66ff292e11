"""Benchmark: does ``tlkit tune --budget 5`` finish within its budget, and does its recipe beat the defaults?

Two modes. Without ``--datasets``: the digits benchmark below. With ``--datasets``: the issue #14
table on the fine-tuning defaults study's data (see ``study_table``).

Data: scikit-learn digits (real scans) rendered as 32 px PNGs and split 60/10/30 (train 1,078 /
val 180 / test 539 images, ``bench_finetune.digits_splits``). Three processes, as a user runs them:

1. ``tlkit tune train/ --val val/ --budget B`` (wall time measured around the whole process);
2. ``tlkit finetune`` with the defaults and ``tlkit finetune --recipe OUT/recipe.yaml``, the same
   epochs and image size for both;
3. ``tlkit evaluate`` of both runs on the test split, which tuning never saw.

Usage:
    python benchmarks/bench_tune.py [--budget 5] [--epochs 5] [--trial-epochs 2] [--image-size 64]
        [--threads 0] [--cache DIR]
    python benchmarks/bench_tune.py --datasets study,held-out --budget 2.5 --trial-epochs 2 --threads 1 \
        [--check-defaults textures] [--out benchmarks/results/tune_vs_defaults.json]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_finetune import digits_splits  # noqa: E402


def tlkit(*args: str, env: dict) -> tuple[str, float]:
    """Run ``python -m tlkit ARGS``; (stdout, seconds). A failure ends the benchmark with its stderr."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"tlkit {' '.join(args[:3])}... failed:\n{res.stderr[-3000:]}")
    return res.stdout, time.perf_counter() - t0


def stored_defaults(name: str, size: int, seed: int = 0) -> dict[str, float]:
    """Test accuracy of the defaults study's ``plain`` and ``new`` runs (``benchmarks/results``)."""
    import bench_defaults as bd

    found = {}
    for f in sorted((bd.REPO / "benchmarks" / "results").glob("defaults_*.json")):
        for r in json.loads(f.read_text()).get("runs", []):
            if (r["dataset"], r["seed"], r["image_size"]) == (name, seed, size) and r["variant"] in ("plain", "new"):
                found.setdefault(r["variant"], r["test_accuracy"])
    return found


def study_table(args, env: dict) -> None:
    """Issue #14: on every set of ``ft_data`` (study sets at 64 px, held-out ``digits_wn`` at 96 px),
    ``tlkit tune TRAIN --val VAL --budget B``, then ``tlkit finetune --recipe`` with the defaults study's
    epochs and image size (batch: the study's 32 unless the recipe tuned it), then ``tlkit evaluate`` on
    ``test/``; against the study's stored seed-0 ``plain`` and ``new`` test accuracy.
    ``--check-defaults``: re-run ``tlkit finetune`` with the defaults on these sets to check that the
    CLI reproduces the stored ``new`` figure. Results are rewritten to ``--out`` after each set."""
    import bench_defaults as bd
    import ft_data

    sizes = {**{n: 64 for n in ft_data.STUDY}, **{n: 96 for n in ft_data.HELD_OUT}}
    check = set(filter(None, args.check_defaults.split(",")))
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    cache = Path(args.cache or Path(tempfile.gettempdir()) / "tlkit_ft_data")
    with tempfile.TemporaryDirectory() as tmp:
        for name in bd.datasets(args.datasets):
            if any(r["dataset"] == name for r in rows):
                continue
            s, size = ft_data.dataset(name, cache), sizes[name]
            run = Path(tmp) / name
            stored = stored_defaults(name, size)
            # the recipe's training length is the final run's (the confirm stage trains at that length)
            _, tune_s = tlkit("tune", str(s["train"]), "--val", str(s["val"]), "--out", str(run / "tune"),
                              "--budget", str(args.budget), "--epochs", str(args.trial_epochs),
                              "--image-size", str(size), "--set", f"epochs={bd.EPOCHS}", env=env)
            summary = json.loads((run / "tune" / "tune.json").read_text())
            common = ["--data", str(s["train"]), "--val", str(s["val"]), "--epochs", str(bd.EPOCHS),
                      "--image-size", str(size), "--no-tensorboard"]
            variants = [("tuned", ["--recipe", str(run / "tune" / "recipe.yaml")])]
            if name in check:
                variants.append(("defaults", ["--batch-size", str(bd.BATCH)]))
            test = {}
            for v, extra in variants:
                _, secs = tlkit("finetune", *common, "--out", str(run / v), *extra, env=env)
                ev, _ = tlkit("evaluate", str(run / v), "--data", str(s["test"]), "--json", env=env)
                cfg = (run / v / "config.yaml").read_text()
                batch = next(int(x.split(":")[1]) for x in cfg.splitlines() if x.startswith("batch_size:"))
                test[v] = {"test_accuracy": round(json.loads(ev)["accuracy"], 4), "finetune_s": round(secs, 1),
                           "batch_size": batch}
            rows.append({"dataset": name, "image_size": size, "seed": 0, "epochs": bd.EPOCHS,
                         "plain_test_accuracy": stored.get("plain"), "defaults_test_accuracy": stored.get("new"),
                         "tuned_test_accuracy": test["tuned"]["test_accuracy"],
                         "defaults_rerun": test.get("defaults"), "tuned_finetune": test["tuned"],
                         "budget_s": args.budget * 60, "trial_epochs": args.trial_epochs,
                         "tune_process_s": round(tune_s, 1), "tune_elapsed_s": summary["elapsed_s"],
                         "trials": summary["trials"], "states": summary["states"],
                         "lr_suggestion": summary["lr_find"]["suggestion"],
                         "val": {"defaults": (summary["base"] or {}).get("value"),
                                 "tuned": (summary["best"] or {}).get("value")},
                         "recipe": summary["recipe"], "confirm": summary.get("confirm"), "threads": args.threads,
                         "load_avg_1m": round(os.getloadavg()[0], 2)})
            print(json.dumps(rows[-1]), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows}, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    def f(x) -> str:
        return "" if x is None else f"{x:.3f}"

    print("| dataset | plain loop | defaults | tune+finetune | tune wall time (s) | trials |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} ({r['image_size']} px) | {f(r['plain_test_accuracy'])} | "
              f"{f(r['defaults_test_accuracy'])} | {f(r['tuned_test_accuracy'])} | {r['tune_process_s']:.0f} | "
              f"{r['trials']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=5.0, help="tlkit tune --budget (minutes)")
    p.add_argument("--trial-epochs", type=int, default=2, help="tlkit tune --epochs (each trial)")
    p.add_argument("--epochs", type=int, default=5, help="finetune epochs of both final runs")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of every process (0: default)")
    p.add_argument("--cache", default=None, help="keep the rendered digits here between runs")
    p.add_argument("--datasets", default=None, help="study table: ft_data sets, e.g. study,held-out")
    p.add_argument("--check-defaults", default="", help="study table: also re-run the defaults on these sets")
    p.add_argument("--out", default="benchmarks/results/tune_vs_defaults.json", help="study table: results JSON")
    p.add_argument("--table", action="store_true", help="study table: print the table of --out and stop")
    args = p.parse_args()
    env = {**os.environ, "TLKIT_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.table:
        return print_table(json.loads(Path(args.out).read_text())["rows"])
    if args.datasets:
        return study_table(args, env)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.cache or tmp)
        s = digits_splits(root / "digits")
        size = ["--image-size", str(args.image_size)]
        _, tune_s = tlkit("tune", str(s["train"]), "--val", str(s["val"]), "--out", f"{tmp}/tune", "--budget",
                          str(args.budget), "--epochs", str(args.trial_epochs), *size, "--set", f"epochs={args.epochs}",
                          env=env)
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
              "recipe": summary["recipe"], "confirm": summary.get("confirm"), "test": acc, "epochs": args.epochs,
              "image_size": args.image_size,
              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"tune: {report['tune_elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget "
          f"({report['tune_process_s']:.0f} s with process start), {report['trials']} trials {report['states']}")
    print(f"validation {summary['monitor']}: defaults {report['val']['defaults']}, tuned {report['val']['tuned']}")
    print(f"test accuracy after {args.epochs} epochs: defaults {acc['defaults']['test_accuracy']:.4f}, "
          f"tuned {acc['tuned']['test_accuracy']:.4f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
