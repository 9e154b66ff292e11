"""The finetune learner: ``al-round --train finetune`` and ``al-simulate --train finetune``.

Each fit trains the finetune engine on the labeled pool images, exposed as a class-folder tree of
symlinks in a scratch folder (the pool itself is never written to), then scores the pool (and
the test images, in a simulation) with the run's best model through
:class:`tlkit.train.predictor.Predictor`. With ``run_dir`` the run is kept there (a round's
``rounds/NNNN/model/``, so ``tlkit evaluate`` and ``tlkit predict`` work on it); otherwise it goes
to a temporary folder. A round warm-starts from the previous round's model when there is one
(same classes), otherwise from the pretrained backbone. Diversity strategies keep using the
cached frozen embeddings; probabilities come from the fine-tuned model.

With ``ssl="fixmatch"`` the unlabeled pool rows (pool minus labeled, unlabelable rows left out) teach
the network too, by FixMatch's consistency loss (:mod:`tlkit.train.consistency`), at most
:data:`UNLABELED_PER_EPOCH` of them drawn per epoch so that a round stays short. Pseudo-labels live in
the training loop only; ``metrics.json`` records what the consistency part did (``consistency``).

A simulation trains once per strategy x seed x round, so keep studies small.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from tlkit.active.learner import LearnerResult, Validation
from tlkit.core.constants import DEFAULT_FINETUNE_SSL, FINETUNE_SSL_MODES
from tlkit.core.errors import TlkitError, check_choice

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 5
"""Epochs of a finetune round when ``--epochs`` is not given."""
MIN_VAL_PER_CLASS = 3
"""Below this many labels in some class, the run validates on its training images."""
UNLABELED_PER_EPOCH = 512
"""``ssl="fixmatch"``: unlabeled pool images drawn per epoch at most, unless the recipe sets
``fixmatch_per_epoch``. 512 at the CPU batch of 32 and mu 2 is 8 steps per epoch, each about 10x a
labeled-only step's work, whatever the pool's size: a GPU round; on a CPU a round took 8x as long as with
``ssl="off"`` (``benchmarks/results/finetune_ssl.md``)."""


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


@contextlib.contextmanager
def _scratch(run_dir: Path | None) -> Iterator[tuple[Path, Path]]:
    """``(tree, run)`` folders: next to ``run_dir`` (the tree removed afterwards), or in a temporary folder."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="tlkit-learner-") as tmp:
            yield Path(tmp) / "labeled", Path(tmp) / "run"
        return
    tree = run_dir.parent / "labeled"
    try:
        yield tree, run_dir
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@dataclass
class FinetuneLearner:
    """Finetune mode: the finetune engine on the labeled images (see the module docstring).

    Args:
        paths: ``[n]`` image files of the pool rows.
        classes: the ``k`` class names.
        test_paths: ``[m]`` test image files, scored into ``test_probs`` when given.
        recipe: a finetune recipe (name or YAML path) under ``config``.
        config: :func:`tlkit.train.make_config` values (backbone, weights, image_size, epochs, ...).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        previous: a previous run to warm-start from when it has the same classes.
        run_dir: keep the run here (one fit per folder); ``None``: a temporary folder.
        engine: inference engine for scoring the pool (:func:`tlkit.engines.create_engine`).
        pixel_store: a folder for the pool's eval-geometry pixels (:mod:`tlkit.data.pixel_store`: decoded once,
            reused by later fits); ``None`` decodes the pool each fit (JPEGs on the device on CUDA).
        ssl: ``off`` (the labeled images alone) or ``fixmatch`` (the unlabeled pool rows too).
    """

    paths: Sequence[Path]
    classes: tuple[str, ...]
    test_paths: Sequence[Path] | None = None
    recipe: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    previous: Path | None = None
    run_dir: Path | None = None
    engine: str = "auto"
    pixel_store: Path | None = None
    ssl: str = DEFAULT_FINETUNE_SSL

    def fit(self, labeled: np.ndarray, y: np.ndarray, *, seed: int, needs: tuple[str, ...] = ()) -> LearnerResult:
        """See :meth:`tlkit.active.learner.Learner.fit`; no ``mc_probs``. Validation is the run's best epoch's
        accuracy on its held-out split (``val``), or on its training images (``train``) when some class has
        fewer than :data:`MIN_VAL_PER_CLASS` labels (a held-out split is impossible there).

        With ``ssl="fixmatch"``, ``y`` is also read at unlabeled rows where it is >= 0 (the simulator's
        hidden truth), only to measure how often the pseudo-labels are right."""
        from tlkit.train.engine import fit
        from tlkit.train.predictor import Predictor

        check_choice(self.ssl, FINETUNE_SSL_MODES, "--ssl")
        t = time.perf_counter()
        notes: dict[str, Any] = {"learner": "finetune" if self.ssl == "off" else f"finetune+{self.ssl}"}
        rows = sorted(np.flatnonzero(labeled), key=lambda i: str(self.paths[i]))
        if len(np.unique(y[rows])) < 2:
            log.info("fewer than two labeled classes: no model yet; selecting without one")
            return LearnerResult(None, Validation(None, "val"), 0.0, notes=notes)
        unlabeled = self._unlabeled(labeled, y) if self.ssl == "fixmatch" else None
        with _scratch(self.run_dir) as (tree, run):
            counts = link_class_tree(tree, ((self.paths[i], self.classes[y[i]]) for i in rows))
            config, warm = self._config(seed, counts)
            few = min(counts.values()) < MIN_VAL_PER_CLASS
            # a round is restarted whole after a crash: best weights and metrics only, no per-epoch state or plots
            result = fit(config, data=tree, out=run, val=tree if few else None, checkpoints="best",
                         unlabeled=unlabeled)
            predictor = Predictor.load(run, device=self.device, engine=self.engine)
            t_score = time.perf_counter()
            scored = predictor.score_files(self.paths, self.classes, pixel_store=self.pixel_store)
            probs, score_s = scored.probs, time.perf_counter() - t_score
            test = predictor.predict_files(self.test_paths, self.classes) if self.test_paths is not None else None
        validation = Validation((result.best or {}).get("val_accuracy"), "train" if few else "val")
        notes.update({"val_on_train": few, "warm_start": warm, "pool_decode": scored.decode,
                      "pool_score_s": round(score_s, 3)})
        if unlabeled is not None:
            notes.update(consistency_record(result.history, config, len(unlabeled.paths)))
        return LearnerResult(probs, validation, time.perf_counter() - t, test_probs=test, run=self.run_dir,
                             notes=notes)

    def _unlabeled(self, labeled: np.ndarray, y: np.ndarray):
        """The pool rows neither labeled nor unlabelable as an :class:`~tlkit.train.consistency.UnlabeledSet`
        (``None`` when there are none); the truth where ``y`` knows it."""
        from tlkit.train.consistency import UnlabeledSet

        rows = np.flatnonzero(~labeled & (y != -2))
        if rows.size == 0:
            log.info("no unlabeled pool images: fixmatch has nothing to learn from; labeled images only")
            return None
        truth = tuple(self.classes[y[i]] if y[i] >= 0 else None for i in rows)
        return UnlabeledSet(tuple(Path(self.paths[i]) for i in rows), truth if any(truth) else None)

    def _config(self, seed: int, counts: dict[str, int]):
        """``(TrainConfig, warm_start)`` for one fit."""
        from tlkit.train import make_config

        explicit = {**self.config, "seed": seed, "device": self.device}
        warm = self.previous is not None and _same_classes(self.previous, counts)
        if warm:
            explicit["weights"] = str(self.previous / "best.safetensors")
        try:
            cfg = make_config(self.recipe, **explicit)
        except TlkitError as e:
            if self.recipe is None:
                raise
            raise TlkitError(f"recipe {self.recipe}: {e}") from None
        if self.ssl == "fixmatch" and cfg.fixmatch_per_epoch is None:  # neither the recipe nor config sets it
            cfg = cfg.replace(fixmatch_per_epoch=UNLABELED_PER_EPOCH)
        return cfg, warm


def consistency_record(history: list[dict[str, Any]], config, pool: int) -> dict[str, Any]:
    """``metrics.json`` entries of a fixmatch fit: ``pseudo_labels`` (pseudo-labels the loss used, over all
    epochs) and ``consistency`` (unlabeled images drawn, mask rate = share above the threshold, pseudo-label
    accuracy where the truth is known, the settings)."""
    used = sum(r.get("unlabeled_images", 0) for r in history)
    masked = sum(r.get("pseudo_labels", 0) for r in history)
    acc = [(r["pseudo_accuracy"], r["pseudo_labels"]) for r in history if r.get("pseudo_accuracy") is not None]
    right = sum(a * n for a, n in acc)
    return {"pseudo_labels": int(masked), "consistency": {
        "method": "fixmatch", "unlabeled_pool": pool, "unlabeled_images": int(used),
        "mask_rate": round(masked / used, 4) if used else None,
        "pseudo_label_accuracy": round(right / sum(n for _, n in acc), 4) if acc and sum(n for _, n in acc) else None,
        "threshold": config.fixmatch_threshold, "mu": config.fixmatch_mu, "weight": config.fixmatch_weight,
        "per_epoch": config.fixmatch_per_epoch}}


def _same_classes(previous: Path, counts: dict[str, int]) -> bool:
    from tlkit.train.model import run_meta

    try:
        return sorted(run_meta(previous).classes) == sorted(counts)
    except TlkitError:
        return False


__all__ = ["DEFAULT_EPOCHS", "UNLABELED_PER_EPOCH", "FinetuneLearner", "consistency_record", "link_class_tree"]
