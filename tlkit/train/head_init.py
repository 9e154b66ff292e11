"""Start a fine-tune from a fitted linear probe (``head_init: probe``; LP-FT, Kumar et al. 2022).

A fine-tune that starts from a random classifier sends large, noisy gradients into a body whose features
a linear head already separates; with few images per class the run ends before it recovers. Here the
classifier starts where a linear probe ends: the training images are embedded once without augmentation
(the body in eval mode, as the validation transform sees them), an L2-regularised logistic regression is
fitted on the features (C 0.1, scikit-learn; one binary regression per label on multi-label data) and copied
into the classifier's weight and bias, so the untrained network already predicts what the probe predicts.

The regression sees the raw features, not standardised ones: folding a standardisation back into the head
divides its weights by per-feature deviations as small as 0.02, and a fine-tune from such a head (weights
1000x a random init's) diverged on the tuning photos (``benchmarks/results/photo_finetune_small_plan.md``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlkit.core.errors import TlkitError
from tlkit.train.config import HEAD_INITS

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 20_000  # a larger training split fits the regression on a seeded sample of this many
PROBE_C = 0.1  # inverse L2 strength on the raw features (chosen on the tuning photos' probe accuracy)


@dataclass(frozen=True)
class ProbeInit:
    """What :func:`init_head_from_probe` did: images embedded and fitted, the probe's training score
    (accuracy, or micro accuracy over labels on multi-label data) and the seconds it took."""

    n_images: int
    n_fitted: int
    train_score: float
    seconds: float


def probe_weights(feats: np.ndarray, targets: np.ndarray, n_classes: int, seed: int = 0,
                  c: float = PROBE_C) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [k, D], bias [k])`` of a logistic regression on ``feats``: ``feats @ weight.T + bias``
    are its logits.

    ``targets``: class indices ``[n]`` (softmax over ``n_classes``; a class absent from ``targets`` gets a
    zero row and a bias far below the others) or a multi-hot ``[n, k]`` (one binary regression per label;
    a label that is always or never on gets a zero row and the log-odds of its frequency, clipped)."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(feats, np.float64)
    w = np.zeros((n_classes, z.shape[1]))
    b = np.zeros(n_classes)
    if targets.ndim == 2:  # multi-label: one binary regression per label
        for j in range(n_classes):
            col = targets[:, j].astype(int)
            if col.min() == col.max():
                p = np.clip(col.mean(), 1e-3, 1 - 1e-3)
                b[j] = np.log(p / (1 - p))
                continue
            lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, col)
            w[j], b[j] = lr.coef_[0], lr.intercept_[0]
    else:
        present = np.unique(targets)
        if len(present) < 2:
            raise TlkitError("head_init=probe needs at least two classes among the training images")
        lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, targets)
        if len(present) == 2:  # one coefficient row: logit(second) - logit(first)
            coef, icpt = np.vstack([-lr.coef_[0] / 2, lr.coef_[0] / 2]), np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
        else:
            coef, icpt = lr.coef_, lr.intercept_
        b[:] = icpt.min() - 20.0  # classes with no training image: never predicted by the start head
        w[present], b[present] = coef, icpt
    return w.astype(np.float32), b.astype(np.float32)


def probe_head_problem(model: nn.Module) -> str | None:
    """Why ``model``'s classifier cannot start from a probe (not one ``nn.Linear`` with a bias taking the
    pre-logit features), or ``None`` when it can."""
    from tlkit.train.optim import head_module

    try:
        head = head_module(model)
    except TlkitError as e:
        return str(e)
    if not isinstance(head, nn.Linear) or head.bias is None:
        return f"{type(model).__name__}'s classifier is a {type(head).__name__}, not a linear layer with a bias"
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", head.in_features)  # timm
    if dim != head.in_features:
        return f"its features have {dim} dimensions, its classifier takes {head.in_features}"
    return None


def _linear_head(model: nn.Module) -> nn.Linear:
    from tlkit.train.optim import head_module

    problem = probe_head_problem(model)
    if problem:
        raise TlkitError(f"head_init=probe: {problem}; leave head_init at random")
    return head_module(model)


def labeled_features(model: nn.Module, records, splits, data_config, cfg, rt) -> tuple[np.ndarray, np.ndarray]:
    """``(features [n, D], targets)`` of the labeled, decodable ``records`` (no augmentation, body in eval
    mode), at most :data:`MAX_FIT_IMAGES` of them (a seeded sample)."""
    from tlkit.train.loaders import embed_records

    records = list(records)
    if len(records) > MAX_FIT_IMAGES:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(records), MAX_FIT_IMAGES, replace=False))
        records = [records[i] for i in keep]
    was_training = model.training
    with torch.no_grad():
        feats, targets, _ = embed_records(model, records, splits.class_to_idx, data_config, cfg, rt)
    model.train(was_training)
    x, y = feats.numpy(), targets.numpy()
    known = (y >= 0).all(1) if y.ndim == 2 else y >= 0  # -1: a label unknown
    return x[known], y[known]


def _set_head(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Fit the probe on ``(x, y)`` into ``model``'s classifier; its training score."""
    head = _linear_head(model)
    if not len(x):
        raise TlkitError("head_init=probe: no training image could be read and labeled; check the data folder")
    if x.shape[1] != head.in_features:
        raise TlkitError(f"head_init=probe: the features have {x.shape[1]} dimensions, the classifier takes "
                         f"{head.in_features}; set head_init=random for this backbone")
    w, b = probe_weights(x, y, head.out_features, seed=seed)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).to(head.weight))
        head.bias.copy_(torch.from_numpy(b).to(head.bias))
    logits = x @ w.T + b
    return float(((logits > 0) == (y > 0.5)).mean() if y.ndim == 2 else (logits.argmax(1) == y).mean())


def init_head_from_probe(model: nn.Module, splits, data_config, cfg, rt) -> ProbeInit | None:
    """Embed ``splits.train`` (no augmentation), fit the probe, copy it into ``model``'s classifier.

    ``None`` (a warning logged, the classifier left as created) for a model whose classifier is not one
    linear layer on the pre-logit features (:func:`probe_head_problem`): the run trains as with
    ``head_init: random``."""
    t0 = time.perf_counter()
    problem = probe_head_problem(model)
    if problem:
        log.warning("head_init=probe skipped: %s; the classifier starts as created", problem)
        return None
    x, y = labeled_features(model, splits.train, splits, data_config, cfg, rt)
    score = _set_head(model, x, y, cfg.seed)
    done = ProbeInit(n_images=len(splits.train), n_fitted=len(x), train_score=score, seconds=time.perf_counter() - t0)
    log.info("head_init=probe: logistic regression on %d training images' features (train score %.3f, %.1f s)",
             done.n_fitted, done.train_score, done.seconds)
    return done


def refit_head_on_all(model: nn.Module, splits, data_config, cfg, rt) -> int:
    """The kept start model's head refitted on the training and hold-out images together (``model`` holds
    the start's untouched body); returns how many images the regression saw."""
    x, y = labeled_features(model, [*splits.train, *splits.val], splits, data_config, cfg, rt)
    _set_head(model, x, y, cfg.seed)
    log.info("head_init=probe: no epoch beat the start on the hold-out; kept it, its head refitted on %d training "
             "and hold-out images", len(x))
    return len(x)


__all__ = ["HEAD_INITS", "ProbeInit", "labeled_features", "init_head_from_probe", "probe_head_problem", "probe_weights",
           "refit_head_on_all"]
