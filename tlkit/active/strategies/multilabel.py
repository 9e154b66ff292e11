"""Uncertainty for multi-label pools: ``probs [n, k]`` are independent per-class probabilities.

Each score is a pure function of the candidates' probabilities (and, for the cardinality-aware
ones, the labeled rows' label sets ``labels [n, k]``); higher = more useful.

- ``mean-entropy``: mean binary entropy over the classes (maximal when every class is at p = 0.5).
- ``max-margin``: the separation margin of Li & Guo (2013) between the least sure predicted-present
  class and the most sure predicted-absent one, on the logits; a small margin is uncertain.
- ``mmc``: Yang et al. (2009), "maximum loss reduction with maximal confidence": the number of
  labels of each candidate is predicted by a logistic regression on its sorted probabilities
  (trained on the labeled rows), the top ones form the predicted set, and the score is the
  expected loss reduction ``sum_j (1 - y_j f_j) / 2`` with ``f = 2p - 1`` and ``y = ±1``.
- ``max-margin-adaptive``: Li & Guo (2013) "adaptive": ``u^β · c^(1-β)``, ``u`` = 1 / separation margin, ``c`` = the
  label cardinality inconsistency ``| |predicted set| - mean labels per labeled image |``
  (:data:`ADAPTIVE_BETA`).

All cost O(c·k) time and memory for c candidates (``mmc`` adds O(c·k log k) to sort and a small
logistic regression on the labeled rows).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from tlkit.active.strategies._common import top_selection
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy
from tlkit.active.strategies.uncertainty import mean_entropy_scores
from tlkit.core.constants import MULTILABEL

log = logging.getLogger(__name__)

ADAPTIVE_BETA = 0.5
"""``max-margin-adaptive``'s trade-off between max-margin uncertainty (β = 1) and label-cardinality
inconsistency (β = 0). Li & Guo pick β per round from {0, 0.1, ..., 1} by validation on the labeled rows;
a fixed β costs no refits. On the tuning mosaics (``benchmarks/bench_multilabel_al.py --tune``: clothing,
splits 100-101 x seeds 0-1; ``benchmarks/results/multilabel_al_tune.txt``) AUBC over mAP was 55.34 ± 0.45
(β 0.25), 55.39 ± 0.77 (0.5), 55.52 ± 0.55 (0.75): within noise, so their midpoint 0.5 is kept."""
_EPS = 1e-6
_LOGIT_CLIP = 1e-6


def logits(P: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of per-class probabilities, clipped away from 0 and 1 (float64)."""
    P = np.clip(np.asarray(P, dtype=np.float64), _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(P) - np.log1p(-P)


def separation_margin(P: np.ndarray) -> np.ndarray:
    """``[c]`` Li & Guo's separation margin on the logits ``f`` of ``P [c, k]``:
    ``min f over predicted-present classes - max f over predicted-absent ones`` (present: p >= 0.5;
    an empty side counts as the threshold, 0). Never negative; 0 = a class sits on the threshold.
    """
    f = logits(P)
    pos = f >= 0
    lo = np.where(pos, f, np.inf).min(axis=1)
    hi = np.where(~pos, f, -np.inf).max(axis=1)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 0.0)
    return lo - hi


def max_margin_scores(P: np.ndarray) -> np.ndarray:
    """``[c]`` 1 / separation margin (Li & Guo's max-margin uncertainty), capped at 1 / 1e-6."""
    return 1.0 / np.maximum(separation_margin(P), _EPS)


def _labeled_sets(pool: PoolView) -> np.ndarray | None:
    """``[l, k]`` 0/1 label sets of the labeled rows with known labels, or None."""
    if pool.labels is None or pool.labels.ndim != 2:
        return None
    Y = pool.labels[pool.labeled]
    Y = Y[(Y >= 0).all(axis=1)]
    return Y if len(Y) else None


def cardinality_inconsistency(P: np.ndarray, Y: np.ndarray | None) -> np.ndarray:
    """``[c]`` ``| |{j: p_j >= 0.5}| - mean labels per labeled image |`` (Li & Guo 2013); zeros without labels."""
    if Y is None:
        return np.zeros(len(P))
    return np.abs((P >= 0.5).sum(axis=1) - Y.sum(axis=1).mean())


def adaptive_scores(P: np.ndarray, Y: np.ndarray | None, beta: float = ADAPTIVE_BETA) -> np.ndarray:
    """``[c]`` ``u^β · c^(1-β)`` (Li & Guo 2013), ``u`` from :func:`max_margin_scores`, ``c`` from
    :func:`cardinality_inconsistency` (floored at 1e-6 so a candidate of average cardinality still ranks by u)."""
    u = max_margin_scores(P)
    c = np.maximum(cardinality_inconsistency(P, Y), _EPS)
    return np.exp(beta * np.log(u) + (1 - beta) * np.log(c))


def predicted_cardinality(P: np.ndarray, P_lab: np.ndarray, Y: np.ndarray | None) -> np.ndarray:
    """``[c]`` the number of labels of each candidate, as Yang et al. (2009) predict it.

    A logistic regression maps the probabilities sorted in decreasing order and normalised to sum 1
    (``P_lab [l, k]`` of the labeled rows) to their number of labels (``Y [l, k]``); with fewer than two
    distinct counts among the labeled rows that count is used, without labels the number of p >= 0.5.
    """
    if Y is None:
        return (P >= 0.5).sum(axis=1)
    counts = Y.sum(axis=1)
    if np.unique(counts).size < 2:
        return np.full(len(P), int(counts[0]))
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def features(A: np.ndarray) -> np.ndarray:
        A = -np.sort(-np.asarray(A, np.float64), axis=1)
        return A / np.maximum(A.sum(axis=1, keepdims=True), _EPS)

    clf = LogisticRegression(max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features(P_lab), counts)
    return clf.predict(features(P)).astype(np.int64)


def mmc_scores(P: np.ndarray, P_lab: np.ndarray, Y: np.ndarray | None) -> np.ndarray:
    """``[c]`` Yang et al.'s expected loss reduction ``sum_j (1 - y_j f_j) / 2``, ``f = 2p - 1``, ``y``
    the top :func:`predicted_cardinality` classes as +1 and the rest as -1."""
    m = predicted_cardinality(P, P_lab, Y)
    order = np.argsort(-P, axis=1, kind="stable")
    y = -np.ones_like(P, dtype=np.float64)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(P.shape[1])[None, :].repeat(len(P), 0), axis=1)
    y[rank < m[:, None]] = 1.0
    return ((1.0 - y * (2.0 * P - 1.0)) / 2.0).sum(axis=1)


@register_strategy("mean-entropy", description="multi-label: highest mean binary entropy over the classes",
                   tasks=(MULTILABEL,))
def mean_entropy(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates whose classes are, on average, closest to p = 0.5. Cost: O(c·k)."""
    return top_selection(pool, mean_entropy_scores(pool.probs[pool.candidates]), n, rng)


@register_strategy("max-margin", description="multi-label: smallest gap between the present and absent classes "
                   "(Li & Guo 2013)", tasks=(MULTILABEL,))
def max_margin(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates with the smallest separation margin (:func:`separation_margin`). Cost: O(c·k)."""
    return top_selection(pool, max_margin_scores(pool.probs[pool.candidates]), n, rng)


@register_strategy("mmc", description="multi-label: maximum loss reduction with maximal confidence (Yang et al. 2009)",
                   tasks=(MULTILABEL,))
def mmc(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """MMC (:func:`mmc_scores`); the cardinality model is fitted on the labeled rows. Cost: O(c·k log k)."""
    Y = _labeled_sets(pool)
    P_lab = pool.probs[pool.labeled][(pool.labels[pool.labeled] >= 0).all(axis=1)] if Y is not None else None
    return top_selection(pool, mmc_scores(pool.probs[pool.candidates], P_lab, Y), n, rng)


@register_strategy("max-margin-adaptive", description="multi-label: max-margin uncertainty x label-cardinality inconsistency "
                   "(Li & Guo 2013)", tasks=(MULTILABEL,))
def adaptive(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Li & Guo's adaptive score (:func:`adaptive_scores`, β = :data:`ADAPTIVE_BETA`). Cost: O(c·k)."""
    return top_selection(pool, adaptive_scores(pool.probs[pool.candidates], _labeled_sets(pool)), n, rng)
