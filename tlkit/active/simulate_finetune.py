"""A simulation learner that fine-tunes: ``al-simulate --train finetune``.

Each round trains the finetune engine on the labeled pool images (a class tree of symlinks in a
scratch folder), then scores the pool (probabilities for the strategies) and the test images
(accuracy) with the run's best model. Strategies keep using the frozen-backbone embeddings for
diversity. It is slow — one training run per strategy x seed x round — so keep studies small.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tlkit.active.simulate import Learner


def _probs(run: Path, paths: Sequence[Path], classes: Sequence[str], device: str) -> np.ndarray:
    from tlkit.data import ImageDataset, ImageRecord, build_transform, make_loader
    from tlkit.runtime import default_workers, resolve_device, resolve_precision
    from tlkit.train.evaluate import predict_loader
    from tlkit.train.model import load_run

    dev = resolve_device(device)
    model, run_classes, data_config = load_run(run, device=dev)
    records = [ImageRecord(p, p.name, None) for p in paths]
    loader = make_loader(ImageDataset(records, build_transform(data_config)), batch_size=64,
                         workers=default_workers(), device=dev)
    preds = predict_loader(model, loader, device=dev, amp_dtype=resolve_precision("auto", dev), channels_last=True)
    out = np.zeros((len(paths), len(classes)), np.float32)
    out[np.ix_(preds.indices, [list(classes).index(c) for c in run_classes])] = preds.probs
    return out


def finetune_learner(
    pool_paths: Sequence[Path],
    y: np.ndarray,
    test_paths: Sequence[Path],
    y_test: np.ndarray,
    classes: Sequence[str],
    *,
    config_kwargs: dict[str, Any],
    device: str = "auto",
) -> Learner:
    """Fine-tune on the labeled pool rows each round (``config_kwargs`` go to ``make_config``)."""
    from tlkit.train import make_config
    from tlkit.train.engine import fit

    def learn(labeled: np.ndarray, seed: int, needs: tuple) -> tuple:
        present = np.unique(y[labeled])
        if len(present) < 2:
            return None, None, float((y_test == present[0]).mean()) if len(present) else 0.0
        with tempfile.TemporaryDirectory(prefix="tlkit-sim-") as tmp:
            tree = Path(tmp) / "labeled"
            for i in np.flatnonzero(labeled):
                dst = tree / classes[y[i]] / f"{i:06d}_{Path(pool_paths[i]).name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(Path(pool_paths[i]).resolve(), dst)
            counts = np.bincount(y[labeled])
            few = counts[counts > 0].min() < 3
            fit(make_config(seed=seed, device=device, **config_kwargs), data=tree, out=Path(tmp) / "run",
                val=tree if few else None)
            pool_probs = _probs(Path(tmp) / "run", pool_paths, classes, device)
            test_probs = _probs(Path(tmp) / "run", test_paths, classes, device)
            shutil.rmtree(tree, ignore_errors=True)
        return pool_probs, None, float((test_probs.argmax(1) == y_test).mean())

    return learn
