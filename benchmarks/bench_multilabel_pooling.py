"""Multi-label: does how the backbone's feature map is pooled change the head and the audit? (#30)

tlkit's embeddings are efficientnet_lite0's global average pool (``[n, 1280]``). On a multi-label image a
class may fill one corner only, and an average over the whole map dilutes it. This study keeps the
``[1280, 7, 7]`` feature maps of the 224 px mosaics (``benchmarks/multilabel_data.py``) and compares
poolings of the same maps: ``avg`` (today), ``max``, ``gem3`` (generalised mean, p = 3) and ``catavgmax``
(both concatenated, ``[n, 2560]``, as timm's ``global_pool="catavgmax"``). For each:

* ``mAP``: test macro mAP of the one-vs-rest head (``fit_multilabel_head``) fitted on the whole pool;
* ``audit``: the share of 5 % injected flips (one class added or removed) in the top-k of the audit's
  cleanlab ranking and of its ``worst-class`` ranking (as ``bench_multilabel_audit.py``).

The feature maps are cached as float16 in ``<mosaic cache>/<set>/split<split>/fmaps.npy`` (260 MB per split).

Usage (from the repository root; a few minutes per split):
    python benchmarks/bench_multilabel_pooling.py --sets clothing:100,clothing:101,cifar10:100,cifar10:101
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import multilabel_data  # noqa: E402
from benchmarks.bench_multilabel_audit import inject_flips  # noqa: E402

POOLINGS = ("avg", "max", "gem3", "catavgmax")


def feature_maps(name: str, split: int) -> np.ndarray:
    """``[n_pool + n_test, 1280, 7, 7]`` float16 lite0 feature maps of the split's mosaics (pool, then test)."""
    import timm.data
    import torch
    from PIL import Image

    from tlkit.models.backbones import create_backbone

    folder = multilabel_data.build(name, split)
    f = folder / "fmaps.npy"
    if f.is_file():
        return np.load(f, mmap_mode="r")
    names = multilabel_data.classes(name)
    files = [*multilabel_data.read_manifest(folder / "pool.csv", names)[0],
             *multilabel_data.read_manifest(folder / "test.csv", names)[0]]
    bb = create_backbone(multilabel_data.EMBED_BACKBONE)
    tf = timm.data.create_transform(**dict(bb.data_config))
    out = None
    with torch.inference_mode():
        for i in range(0, len(files), 50):
            xb = torch.stack([tf(Image.open(folder / p).convert("RGB")) for p in files[i:i + 50]])
            fm = bb.model.forward_features(xb).numpy().astype(np.float16)
            if out is None:
                out = np.zeros((len(files), *fm.shape[1:]), np.float16)
            out[i:i + len(fm)] = fm
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.rename(f)
    return out


def pool(fm: np.ndarray, how: str) -> np.ndarray:
    """``[n, c]`` (``[n, 2c]`` for catavgmax) float32 pooled features of ``fm [n, c, h, w]``."""
    f = np.asarray(fm, np.float32)
    if how == "avg":
        return f.mean((2, 3))
    if how == "max":
        return f.max((2, 3))
    if how == "gem3":
        return np.cbrt((np.clip(f, 1e-6, None) ** 3).mean((2, 3)))
    if how == "catavgmax":
        return np.concatenate([f.mean((2, 3)), f.max((2, 3))], 1)
    raise ValueError(how)


def run(name: str, split: int, seed: int = 0) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from tlkit.active.head import Scaler, fit_multilabel_head, mean_average_precision
    from tlkit.audit.labels import find_multilabel_issues, multilabel_knn_share, multilabel_out_of_fold_probs

    Y, Yt, names = multilabel_data.labels(name, split)
    fm = feature_maps(name, split)
    n = len(Y)
    given, flips, _ = inject_flips(Y, split, seed)  # the same flips as bench_multilabel_audit.py
    k = len(flips)
    rows = []
    for how in POOLINGS:
        x = pool(fm, how)
        xp, xt = x[:n], x[n:]
        with threadpool_limits(limits=1):
            scaler = Scaler.fit(xp)
            head = fit_multilabel_head(xp, Y, tuple(names), scaler=scaler)
            probs = multilabel_out_of_fold_probs(xp, given, seed=seed, scaler=scaler)
        ranked = find_multilabel_issues(given, probs).ranking
        worst = find_multilabel_issues(given, probs, multilabel_knn_share(xp, given)).ranking
        row = {"set": name, "split": split, "pooling": how, "dim": int(x.shape[1]),
               "map": float(mean_average_precision(Yt, head.predict_proba(xt))),
               "audit_topk": float(np.isin(flips, ranked[:k]).mean()),
               "audit_worst_class_topk": float(np.isin(flips, worst[:k]).mean())}
        print(f"{name}:{split} {how:10s} test mAP {100 * row['map']:.1f}  audit top-k {100 * row['audit_topk']:.1f} "
              f"(worst-class {100 * row['audit_worst_class_topk']:.1f})", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="clothing:100,clothing:101,cifar10:100,cifar10:101",
                    help="comma-separated set:split")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "multilabel_pooling.json")
    args = ap.parse_args(argv)
    rows = []
    for item in args.sets.split(","):
        name, split = item.split(":")
        rows += run(name, int(split))
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
