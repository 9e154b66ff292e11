"""Speed of `tlkit serve` as Label Studio sees it: /predict latency and retrain + re-rank time.

Makes a pool of N distinct images (scikit-learn's digits, each drawn several times with a random
shift, rotation and noise), a project with 2 seed labels per class and a first round (the one-off
embedding of the pool, reported), then starts `tlkit serve` as its own process and measures over
HTTP, as Label Studio calls it:

- POST /predict with 100 tasks (median and max of 20 calls);
- a retrain after a new annotation (webhook -> /train -> served model_version changes), head mode:
  fit, score and rank the whole pool, write the round folder (median of 3).

Targets (issue): /predict for 100 tasks < 1 s; head-mode retrain + re-rank of 10,000 images < 10 s.

    python benchmarks/bench_serve.py [--pool 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import run_cli  # noqa: E402
from tests.test_serve import Server, http  # noqa: E402


def make_pool(folder: Path, n: int, seed: int = 0) -> dict[str, str]:
    from PIL import Image

    from tlkit.demo import digits_arrays, render_digit

    images, labels = digits_arrays()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    truth = {}
    for j in range(n):
        i = j % len(images)
        img = render_digit(images[i], 40).rotate(float(rng.uniform(-12, 12)), translate=tuple(rng.integers(-3, 4, 2)))
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (40, 40, 3) if img.mode == "RGB" else (40, 40))
        name = f"{j:05d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / name)
        truth[name] = str(labels[i])
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    from tlkit.active.project import Project
    from tlkit.core.io import write_csv

    t = time.perf_counter()
    if (work / "truth.json").is_file():  # a --workdir of an earlier run: reuse (an interrupted embedding resumes)
        truth = json.loads((work / "truth.json").read_text())
    else:
        truth = make_pool(work / "pool", args.pool)
        (work / "truth.json").write_text(json.dumps(truth))
        print(f"pool: {args.pool:,} images written in {time.perf_counter() - t:.1f} s")
    if not (work / "proj").exists():
        seed = [n for c in map(str, range(10)) for n in sorted(truth) if truth[n] == c][:: args.pool // 20][:20]
        write_csv(work / "seed.csv", ["path", "label"], [(n, truth[n]) for n in seed])
        assert run_cli("al-init", str(work / "proj"), "--pool", str(work / "pool"), "--classes", ",".join(
            map(str, range(10))), "--labels", str(work / "seed.csv"), "--image-size", "64").returncode == 0
    t = time.perf_counter()
    res = run_cli("al-round", str(work / "proj"), "--batch", "20", timeout=7200)
    assert res.returncode == 0, res.stderr
    print(f"first round (embeds the pool once): {time.perf_counter() - t:.1f} s")
    project = Project.open(work / "proj")
    server = Server(work / "proj", "--retrain-every", "0", "--batch", "20")
    try:
        urls, names = project.image_urls(), sorted(truth)
        tasks = [{"id": i, "data": {"image": urls.url(p)}} for i, p in enumerate(names[:100])]
        times = []
        for _ in range(20):
            t = time.perf_counter()
            status, body = http("POST", server.url + "/predict", {"tasks": tasks})
            times.append(time.perf_counter() - t)
            assert status == 200 and len(body["results"]) == 100
        print(f"/predict, 100 tasks: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
              f"(target < 1000 ms)")
        retrains = []
        free = [n for n in names if n not in project.labels()]
        for k in range(3):
            event = {"action": "ANNOTATION_CREATED", "task": {"id": k, "data": {"tlkit_path": free[k]}},
                     "annotation": {"id": k, "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                                                         "value": {"choices": [truth[free[k]]]}}]}}
            assert http("POST", server.url + "/webhook", event)[0] == 200
            before = server.health()["model_version"]
            t = time.perf_counter()
            http("POST", server.url + "/train")
            server.wait(lambda h, before=before: h["model_version"] != before, timeout=600)
            retrains.append(time.perf_counter() - t)
        print(f"retrain + re-rank of {args.pool:,} images (head): median {statistics.median(retrains):.2f} s, "
              f"all {', '.join(f'{x:.2f}' for x in retrains)} s (target < 10 s)")
        print(json.dumps({"pool": args.pool, "predict100_ms": round(statistics.median(times) * 1000, 1),
                          "retrain_s": round(statistics.median(retrains), 2)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
