"""``al-round --train finetune``: the finetune engine on the labeled images, then the pool scored.

The labeled images are exposed to the engine as a class-folder tree of symlinks inside the round's
temporary folder (the pool itself is never written to). The run goes to ``rounds/NNNN/model/``,
so ``tlkit evaluate`` and ``tlkit predict`` work on it. The round warm-starts from the previous
round's model when there is one (same classes), otherwise from the pretrained backbone. Diversity
strategies keep using the cached frozen embeddings; probabilities come from the fine-tuned model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tlkit.active.project import SKIP_LABEL, Project
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 5


def link_class_tree(folder: Path, items: Iterable[tuple[Path, str]]) -> dict[str, int]:
    """Expose labeled images as a class-folder tree of symlinks: ``folder/<label>/<k>_<name>``.

    Returns the image count per label. The source files are never touched.
    """
    counts: dict[str, int] = {}
    for k, (src, label) in enumerate(items):
        dst = folder / label / f"{k:06d}_{Path(src).name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(src).resolve(), dst)
        counts[label] = counts.get(label, 0) + 1
    return counts


def fit_on_tree(config, tree: Path, out: Path, counts: dict[str, int]):
    """Fine-tune on ``tree``; with fewer than 3 images in some class, validate on the training images
    (a held-out split is impossible there), which the caller should report as optimistic."""
    from tlkit.train.engine import fit

    few = min(counts.values()) < 3
    return fit(config, data=tree, out=out, val=tree if few else None), few


def run_probs(run: Path, path_lists: Sequence[Sequence[Path]], classes: Sequence[str], device: str) -> list[np.ndarray]:
    """Probabilities ``[n, k]`` of a run's best model for each list of image files (the run is
    loaded once), columns in ``classes`` order; classes the run never saw get 0."""
    from tlkit.data import ImageDataset, ImageRecord, build_transform, make_loader
    from tlkit.inference import prepare_for_inference
    from tlkit.runtime import default_workers, inference_batch_size, resolve_device, resolve_precision
    from tlkit.train.evaluate import predict_loader
    from tlkit.train.model import load_run

    dev = resolve_device(device)
    amp = resolve_precision("auto", dev)
    model, run_classes, data_config = load_run(run, device=dev)
    model = prepare_for_inference(model, dev, amp, input_size=tuple(data_config["input_size"]))
    cols = [list(classes).index(c) for c in run_classes]
    transform = build_transform(data_config)
    outs = []
    for paths in path_lists:
        records = [ImageRecord(Path(p), Path(p).name, None) for p in paths]
        loader = make_loader(ImageDataset(records, transform), batch_size=inference_batch_size(dev),
                             workers=default_workers(), device=dev)
        preds = predict_loader(model, loader, device=dev, amp_dtype=amp, channels_last=True)
        out = np.zeros((len(paths), len(classes)), np.float32)
        out[np.ix_(preds.indices, cols)] = preds.probs
        outs.append(out)
    return outs


def score_finetuned(
    project: Project, data, out: Path, *, device: str, epochs: int | None, seed: int, previous: Path | None
) -> tuple[np.ndarray | None, None, dict[str, Any]]:
    """Fine-tune on the labels into ``out``; return (probs [n, k] or None, None, metrics)."""
    from tlkit.train import make_config

    t = time.perf_counter()
    tree = out.parent / "labeled"
    labeled = sorted((p, lab) for p, lab in project.labels().items() if lab != SKIP_LABEL)
    counts = link_class_tree(tree, ((project.pool_root / p, lab) for p, lab in labeled))
    if len(counts) < 2:
        shutil.rmtree(tree, ignore_errors=True)
        log.info("fewer than two labeled classes: no model yet; selecting without one")
        return None, None, {"train_s": 0.0, "val_accuracy": None}
    cfg = project.config
    explicit: dict[str, Any] = {"backbone": cfg.backbone, "epochs": epochs or DEFAULT_EPOCHS, "seed": seed,
                                "device": device, "image_size": cfg.image_size, "weights": cfg.weights}
    if previous is not None and _same_classes(previous, counts):
        explicit["weights"] = str(previous / "best.safetensors")
    try:
        config = make_config(cfg.recipe, **explicit)
    except TlkitError as e:
        raise TlkitError(f"project recipe: {e}") from None
    result, few = fit_on_tree(config, tree, out, counts)
    (probs,) = run_probs(out, [[project.pool_root / p for p in data.paths]], data.classes, device)
    shutil.rmtree(tree, ignore_errors=True)
    best = result.best or {}
    return probs, None, {"train_s": round(time.perf_counter() - t, 3),
                         "val_accuracy": best.get("val_accuracy"),
                         "val_on_train": few, "warm_start": "weights" in explicit and explicit["weights"] != cfg.weights}


def _same_classes(previous: Path, counts: dict[str, int]) -> bool:
    from tlkit.train.model import checkpoint_meta

    try:
        return sorted(checkpoint_meta(previous)["classes"]) == sorted(counts)
    except TlkitError:
        return False
