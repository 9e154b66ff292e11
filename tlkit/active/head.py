"""The head-mode classifier of active learning: a linear model on frozen embeddings.

Feature scaling matters a lot at small budgets. With L2-normalised features and default
regularisation, logistic regression collapses to near chance at 10 labels, while standardised
features work well. The scaler is fitted on the **whole pool** (labels are not needed for it),
not on the few labeled rows, so its statistics are stable from the first round on.

Shapes: ``x`` is ``[n, d]`` float32; probabilities are ``[n, k]`` over the project's ``k`` classes
in their fixed order (classes with no labeled example yet get probability 0).

Multi-label projects fit :func:`fit_multilabel_head`: ``k`` independent logistic regressions (one
per class, present vs absent) over the same standardised features, fitted jointly by one L-BFGS run
(the objective is their sum, so each class gets exactly its own regularised fit); probabilities
``[n, k]`` are independent sigmoids.
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
LBFGS_GTOL = 1e-4
"""The multi-label head's L-BFGS stops when no gradient entry of the mean loss exceeds this: sklearn's
``LogisticRegression(tol=1e-4)`` criterion, on the same (sample-averaged) objective."""


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
    """A fitted multinomial logistic regression over standardised features (or, ``multilabel``,
    one binary logistic regression per class).

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
    multilabel: bool = False  # independent sigmoids per class instead of one softmax

    def decision(self, x: np.ndarray, chunk: int = 32768) -> np.ndarray:
        out = np.empty((len(x), len(self.classes)), np.float32)
        for i in range(0, len(x), chunk):
            out[i : i + chunk] = self.scaler(x[i : i + chunk]) @ self.coef.T + self.intercept
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n, k]`` (multi-label: each class's own probability of being present)."""
        if self.multilabel:
            return sigmoid(self.decision(x))
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
    from threadpoolctl import threadpool_limits

    scaler = scaler or Scaler.fit(x)
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)
    # one BLAS thread, as fit_multilabel_head: L-BFGS's small products gain nothing from a second thread,
    # and on a busy machine its spinning made a 1,200-row CIFAR-10 fit take 6.3 s instead of 0.21 s
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
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


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow warnings (float32 in, float32 out)."""
    out = np.empty_like(z, dtype=np.float32)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_multilabel_head(
    x: np.ndarray,
    Y: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    scaler: Scaler | None = None,
    C: float = DEFAULT_C,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
    tol: float = LBFGS_GTOL,
) -> LinearHead | None:
    """Fit one-vs-rest logistic regressions (one per class) on labeled rows, jointly.

    The objective is sklearn's ``LogisticRegression`` (L2, unpenalised intercept) summed over the
    classes, ``sum_j 0.5 ||w_j||² + C sum_i s_i BCE(x_i·w_j + b_j, Y_ij)``, minimised by one L-BFGS run
    over all ``k·(d+1)`` parameters: each class gets its own regularised fit, in one pass. A class
    with no positive (or no negative) label yet is pushed towards absent (present), as its own
    regression would be.

    Args:
        x: ``[m, d]`` embeddings of the labeled rows.
        Y: ``[m, k]`` 0/1: class j is present in row i.
        classes: all project classes (``k``).
        scaler: the pool's scaler (fitted on ``x`` when None).
        seed: unused (the fit is deterministic); kept for the same call as :func:`fit_head`.
        tol: L-BFGS's gradient tolerance on the mean loss (:data:`LBFGS_GTOL`; smaller: a closer fit).

    Returns:
        The head (``multilabel=True``), or None without labeled rows.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    Y = np.asarray(Y, np.float64)
    if len(Y) == 0:
        return None
    scaler = scaler or Scaler.fit(x)
    X = scaler(x).astype(np.float64)
    m, d = X.shape
    k = Y.shape[1]
    s = np.ones(m) if sample_weight is None else np.asarray(sample_weight, np.float64)
    prior = (Y * s[:, None]).sum(0) + 0.5
    b0 = np.log(prior) - np.log(s.sum() + 1.0 - prior)

    scale = 1.0 / (C * s.sum())  # as sklearn: the mean loss, so its tolerance means the same here

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: k * d].reshape(k, d), theta[k * d:]
        Z = X @ W.T + b
        # BCE with logits: log(1 + e^z) - y z, stable
        L = np.logaddexp(0.0, Z) - Y * Z
        G = (1.0 / (1.0 + np.exp(-Z)) - Y) * (C * s * scale)[:, None]  # dL/dZ
        value = scale * (0.5 * float((W * W).sum()) + C * float((L * s[:, None]).sum()))
        return value, np.concatenate([(G.T @ X + scale * W).ravel(), G.sum(0)])

    theta0 = np.concatenate([np.zeros(k * d), b0])
    # one BLAS thread: the products are small, and on a busy machine a second thread spinning on them
    # made the fit 5-15x slower (200 rows x 1280 x 6 classes: 5.8 s with the default threads, 0.36 s on one)
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": MAX_ITER, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    W, b = res.x[: k * d].reshape(k, d), res.x[k * d:]
    return LinearHead(scaler, W.astype(np.float32), b.astype(np.float32), tuple(classes), multilabel=True)


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


def mean_average_precision(Y: np.ndarray, P: np.ndarray) -> float | None:
    """Macro mAP of probabilities ``P [m, k]`` for 0/1 labels ``Y [m, k]``: the mean over classes that
    have both a present and an absent row of sklearn's average precision; None when no class has."""
    from sklearn.metrics import average_precision_score

    Y = np.asarray(Y)
    cols = [j for j in range(Y.shape[1]) if 0 < Y[:, j].sum() < len(Y)]
    if not cols:
        return None
    return float(np.mean([average_precision_score(Y[:, j], P[:, j]) for j in cols]))


def cross_val_multilabel_proba(
    x: np.ndarray, Y: np.ndarray, classes: tuple[str, ...], *, scaler: Scaler, folds: int = 5, seed: int = 0,
    tol: float = LBFGS_GTOL,
) -> np.ndarray | None:
    """``[m, k]`` out-of-fold probabilities of multi-label rows (plain k-fold), or None below 4 rows;
    ``tol`` as :func:`fit_multilabel_head`'s."""
    k = min(folds, len(Y) // 2)
    if k < 2:
        return None
    out = np.zeros(Y.shape, np.float32)
    for tr, te in KFold(k, shuffle=True, random_state=seed).split(x):
        head = fit_multilabel_head(x[tr], Y[tr], classes, scaler=scaler, seed=seed, tol=tol)
        out[te] = head.predict_proba(x[te])
    return out


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
