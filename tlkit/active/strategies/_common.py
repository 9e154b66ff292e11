"""Ranking helpers shared by the strategies: seeded tie-breaking, top-n, topping up a short pick."""

from __future__ import annotations

import logging

import numpy as np

from tlkit.active.strategies._registry import PoolView, Selection

log = logging.getLogger(__name__)


def rank_top(indices: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` highest-scoring entries, best first; ties broken by a seeded shuffle.

    Args:
        indices: ``[c]`` int pool indices.
        scores: ``[c]`` float, higher = better.
        n: how many to keep (``<= c``).

    Returns:
        ``([n] indices, [n] scores)``. Cost: O(c) time (partition) + O(n log n), O(c) memory.
    """
    perm = rng.permutation(indices.shape[0])
    idx, s = indices[perm], np.asarray(scores, dtype=np.float64)[perm]
    if n < s.shape[0]:
        part = np.argpartition(-s, n - 1)[:n]
        idx, s = idx[part], s[part]
    order = np.argsort(-s, kind="stable")[:n]
    return idx[order], s[order]


def top_selection(pool: PoolView, cand_scores: np.ndarray, n: int, rng: np.random.Generator) -> Selection:
    """Selection of the ``n`` candidates with the highest ``cand_scores`` (``[c]``, candidate order)."""
    idx, s = rank_top(pool.candidate_indices, cand_scores, n, rng)
    return Selection(idx, s)


def fill_up(
    picked: list[int] | np.ndarray,
    scores: list[float] | np.ndarray,
    pool: PoolView,
    n: int,
    rng: np.random.Generator,
    *,
    why: str,
) -> Selection:
    """Complete a greedy pick that ran short (duplicate points, exhausted coverage) with random candidates.

    The extra rows come last with score 0 below the lowest pick; the shortfall is logged with ``why``.
    """
    picked = np.asarray(picked, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    missing = n - picked.shape[0]
    if missing > 0:
        rest = np.setdiff1d(pool.candidate_indices, picked, assume_unique=True)
        extra = rng.choice(rest, size=missing, replace=False)
        floor = min(0.0, float(scores.min())) if scores.size else 0.0
        log.info("%s: %d of %d picks are random candidates", why, missing, n)
        picked = np.concatenate([picked, extra])
        scores = np.concatenate([scores, np.full(missing, floor)])
    return Selection(picked, scores)


class IdentityProba:
    """A 'classifier' whose input is already its class probabilities: ``predict_proba(P) -> P``.

    Lets modAL's score functions (``classifier_margin(clf, X)``) run on precomputed ``[n, k]`` probs.
    """

    def predict_proba(self, X: np.ndarray, **_: object) -> np.ndarray:
        return X
