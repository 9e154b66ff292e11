"""Fine-tuning: config and recipes, optimisers, schedules, losses, checkpoints, the loop, metrics.

Library first; the ``tlkit finetune / evaluate / predict / recipes / tune / lr-find`` commands call these.

Example:
    >>> from tlkit.train import fit, make_config, load_run
    >>> cfg = make_config("finetune-fast", epochs=3, overrides=["lr=5e-4"])       # doctest: +SKIP
    >>> result = fit(cfg, data="data/train", out="runs/demo")                     # doctest: +SKIP
    >>> model, classes, data_config = load_run("runs/demo")                       # doctest: +SKIP
"""

from __future__ import annotations

from tlkit.train.checkpoint import RunMeta
from tlkit.train.config import TrainConfig, list_recipes, load_recipe, make_config, parse_overrides
from tlkit.train.engine import FitResult, fit
from tlkit.train.evaluate import evaluate_run
from tlkit.train.lr_find import LRFindResult, lr_find
from tlkit.train.metrics import compute_metrics
from tlkit.train.model import checkpoint_meta, load_run
from tlkit.train.predict import PredictResult, predict
from tlkit.train.predictor import Predictor
from tlkit.train.tune import TuneResult, tune

__all__ = [
    "FitResult",
    "LRFindResult",
    "PredictResult",
    "Predictor",
    "RunMeta",
    "TrainConfig",
    "TuneResult",
    "checkpoint_meta",
    "compute_metrics",
    "evaluate_run",
    "fit",
    "list_recipes",
    "load_recipe",
    "load_run",
    "make_config",
    "parse_overrides",
    "predict",
    "tune",
]
