"""The head-mode classifier of active learning: a linear model on frozen embeddings.

Feature scaling matters a lot at small budgets. With L2-normalised features and default
regularisation, logistic regression collapses to near chance at 10 labels, while standardised
features work well. The scaler is fitted on the **whole pool** (labels are not needed for it),
not on the few labeled rows, so its statistics are stable from the first round on.

Shapes: ``x`` is ``[n, d]`` float32; probabilities are ``[n, k]`` over the project's ``k`` classes
in their fixed order (classes with no labeled example yet get probability 0).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold

log = logging.getLogger(__name__)

DEFAULT_C = 1.0
MAX_ITER = 1000


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fitted on the pool: ``(x - mean) / scale``."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]

    @classmethod
    def fit(cls, x: np.ndarray, chunk: int = 8192) -> "Scaler":
        """Mean and std of ``x`` [n, d], computed in chunks (``x`` may be a memmap)."""
        n, d = x.shape
        s, ss = np.zeros(d, np.float64), np.zeros(d, np.float64)
        for i in range(0, n, chunk):
            block = np.asarray(x[i : i + chunk], dtype=np.float64)
            s += block.sum(0)
            ss += (block * block).sum(0)
        mean = s / max(n, 1)
        var = np.maximum(ss / max(n, 1) - mean * mean, 0.0)
        scale = np.sqrt(var)
        scale[scale < 1e-8] = 1.0
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.scale


@dataclass
class LinearHead:
    """A fitted multinomial logistic regression over standardised features.

    Attributes:
        scaler: the pool's standardisation.
        coef: ``[k, d]`` weights over standardised features, rows for all project classes.
        intercept: ``[k]``; classes never seen in training get -inf (probability 0).
        classes: the project's class names, in order.
    """

    scaler: Scaler
    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[str, ...]

    def decision(self, x: np.ndarray, chunk: int = 32768) -> np.ndarray:
        out = np.empty((len(x), len(self.classes)), np.float32)
        for i in range(0, len(x), chunk):
            out[i : i + chunk] = self.scaler(x[i : i + chunk]) @ self.coef.T + self.intercept
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, k]``."""
        return _softmax_(self.decision(x), axis=1)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight [k, d], bias [k]) acting on raw features: the scaler folded into the linear layer."""
        w = self.coef / self.scaler.scale[None, :]
        b = self.intercept - w @ self.scaler.mean
        b = np.where(np.isfinite(self.intercept), b, -1e4)
        return w.astype(np.float32), b.astype(np.float32)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    scaler: Scaler | None = None,
    C: float = DEFAULT_C,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
) -> LinearHead | None:
    """Fit the head on labeled rows.

    Args:
        x: ``[m, d]`` embeddings of the labeled rows.
        y: ``[m]`` int class indices into ``classes``.
        classes: all project classes.
        scaler: the pool's scaler (fitted on ``x`` when None).

    Returns:
        The head, or None when fewer than two classes have labels (no model is possible yet).
    """
    present = np.unique(y)
    if len(present) < 2:
        return None
    scaler = scaler or Scaler.fit(x)
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler(x), y, sample_weight=sample_weight)
    k, d = len(classes), x.shape[1]
    coef = np.zeros((k, d), np.float32)
    intercept = np.full(k, -np.inf, np.float32)
    if len(present) == 2:  # binary sklearn model: one row; expand to two softmax rows
        coef[present[1]], intercept[present[1]] = clf.coef_[0], clf.intercept_[0]
        coef[present[0]], intercept[present[0]] = 0.0, 0.0
    else:
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
    return LinearHead(scaler, coef, intercept, tuple(classes))


def ensemble_probs(
    x_train: np.ndarray,
    y: np.ndarray,
    x_pool: np.ndarray,
    classes: tuple[str, ...],
    *,
    scaler: Scaler,
    members: int = 8,
    seed: int = 0,
) -> np.ndarray | None:
    """Bootstrap ensemble of heads: stochastic predictions ``[n, k, members]`` for BALD.

    Each member sees a bootstrap resample of the labeled rows (each class kept present). The pool
    is scored by :func:`stacked_proba`: one pass over ``x_pool`` for all members.
    """
    rng = np.random.default_rng(seed)
    heads = []
    for t in range(members):
        idx = _stratified_bootstrap(y, rng)
        head = fit_head(x_train[idx], y[idx], classes, scaler=scaler, seed=seed + t)
        if head is None:
            return None
        heads.append(head)
    return stacked_proba(heads, x_pool)


def stacked_proba(heads: list[LinearHead], x: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """``[n, k, T]`` float32 class probabilities of T heads, from ONE pass over ``x [n, d]``.

    Each head's scaler is folded into its weights (:meth:`LinearHead.folded`), and the T weight
    matrices are stacked into one ``[T·k, d]`` GEMM per block of rows. On a memory-mapped pool of
    a million rows, reading the rows dominates, so this costs about one head's scoring instead of T.
    """
    folded = [h.folded() for h in heads]
    w = np.concatenate([f[0] for f in folded])  # [T*k, d]
    b = np.concatenate([f[1] for f in folded])
    t, k = len(heads), len(heads[0].classes)
    out = np.empty((len(x), k, t), np.float32)
    for i in range(0, len(x), chunk):
        z = (np.asarray(x[i : i + chunk], dtype=np.float32) @ w.T + b).reshape(-1, t, k)
        out[i : i + chunk] = _softmax_(z, axis=2).transpose(0, 2, 1)
    return out


def _softmax_(z: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of the logits ``z`` over ``axis``, in place; returns ``z``."""
    z -= z.max(axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis, keepdims=True)
    return z


def _stratified_bootstrap(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    parts = [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()), replace=True) for c in np.unique(y)]
    return np.concatenate(parts)


def cross_val_accuracy(
    x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], *, scaler: Scaler, folds: int = 5, seed: int = 0,
    fit: "Callable[[np.ndarray], LinearHead | None] | None" = None,
) -> float | None:
    """Stratified k-fold accuracy of the head on the labeled rows (None when too few labels).

    ``fit(train_positions)`` fits a fold's head (default: :func:`fit_head` on those rows), so a
    learner that does more than :func:`fit_head` (self-training) is validated as it is used.
    """
    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = min(folds, len(y) // 2)
    if len(counts) < 2 or k < 2:
        return None
    # Stratified folds need every class in every fold; with singleton classes use plain folds.
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if counts.min() >= k else KFold(k, shuffle=True, random_state=seed)
    correct = 0
    for tr, te in splitter.split(x, y):
        head = fit(tr) if fit is not None else fit_head(x[tr], y[tr], classes, scaler=scaler, seed=seed)
        if head is None:
            continue
        correct += int((head.predict_proba(x[te]).argmax(1) == y[te]).sum())
    return correct / len(y)
