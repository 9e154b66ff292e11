"""Bayesian strategies over ``mc_probs [n, k, T]``: T stochastic passes (MC dropout, an ensemble)."""

from __future__ import annotations

import numpy as np

from tlkit.active.strategies._common import rank_top, top_selection
from tlkit.active.strategies._geometry import row_blocks
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy


def _entropy(P: np.ndarray, axis: int) -> np.ndarray:
    logp = np.log(np.clip(P, 1e-12, None))
    return -(P * logp).sum(axis=axis)


def bald_scores(mc: np.ndarray) -> np.ndarray:
    """Mutual information between the label and the model: ``H[mean_t p_t] - mean_t H[p_t]``.

    Args:
        mc: ``[c, k, T]`` probabilities of T stochastic passes.

    Returns:
        ``[c]`` float64 in [0, log k]; 0 when all passes agree. Cost: O(c·k·T) time, O(block·k·T) memory.
    """
    out = np.empty(mc.shape[0])
    for blk in row_blocks(mc.shape[0], 2 * mc.shape[1] * mc.shape[2]):
        P = mc[blk].astype(np.float64)
        out[blk] = _entropy(P.mean(axis=2), axis=1) - _entropy(P, axis=1).mean(axis=1)
    return np.maximum(out, 0.0)


@register_strategy(
    "bald", description="mutual information of label and model over stochastic passes (needs mc_probs)", needs=("mc_probs",)
)
def bald(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates on which the T stochastic passes disagree most (Houlsby et al. 2011; Gal et al. 2017).

    Cost: O(c·k·T) time, O(c·k·T) memory for the candidate rows.
    """
    return top_selection(pool, bald_scores(pool.mc_probs[pool.candidates]), n, rng)


BATCHBALD_MAX_CANDIDATES = 500
"""BatchBALD scores the candidates with the highest BALD score only: this many, or ``3 n`` if larger."""
BATCHBALD_SAMPLES = 256
"""Label configurations of the batch so far, sampled to estimate joint entropies."""


def _joint_entropies(w: np.ndarray, omega: np.ndarray, P: np.ndarray) -> np.ndarray:
    """``[m]`` estimated ``H(y_batch, y_c)`` for every candidate c.

    Args:
        w: ``[S, T]`` per-pass probability of each sampled batch configuration (rows rescaled).
        omega: ``[S]`` weight of each configuration (sums to 1).
        P: ``[m, k, T]`` per-pass class probabilities of the candidates.
    """
    m, k, T = P.shape
    joint = (w @ P.reshape(m * k, T).T).reshape(w.shape[0], m, k) / T  # [S, m, k] ∝ p(config, y_c)
    marginal = w.mean(axis=1)  # [S] ∝ p(config)
    cond = joint / marginal[:, None, None]  # p(y_c | config), sums to 1 over k
    return -np.einsum("s,smk->m", omega, cond * np.log(np.clip(joint, 1e-300, None)))


@register_strategy(
    "batchbald",
    description="greedy joint mutual information of the batch and the model (BatchBALD; needs mc_probs)",
    needs=("mc_probs",),
)
def batchbald(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """BatchBALD (Kirsch et al. 2019): each pick maximises ``I(y_batch, y_c; model)``, so the batch
    holds points the passes disagree on *differently* instead of n copies of one confusion.

    ``I = H(y_batch, y_c) - Σ H(y_i | model)``; the joint entropy is estimated on
    :data:`BATCHBALD_SAMPLES` configurations of the batch's labels drawn from the passes (each
    configuration follows one pass; exact for the first pick, where it equals BALD). Only the
    :data:`BATCHBALD_MAX_CANDIDATES` candidates with the highest BALD score compete.
    Score = the joint mutual information of the batch so far, pick included (it grows along the batch).

    Cost: O(n·S·m·k·T) time, O(S·m·k) memory for S samples and m ≤ max(500, 3n) candidates.
    """
    cand = pool.candidate_indices
    mc = pool.mc_probs[cand]
    m = min(cand.size, max(BATCHBALD_MAX_CANDIDATES, 3 * n))
    keep, _ = rank_top(np.arange(cand.size), bald_scores(mc), m, rng)
    P = mc[keep].astype(np.float64)
    T = P.shape[2]
    cond_h = _entropy(P, axis=1).mean(axis=1)  # [m] E_t H[p_t]
    w, log_scale, omega = np.ones((1, T)), np.zeros(1), np.ones(1)
    member = rng.integers(0, T, size=BATCHBALD_SAMPLES)  # the pass each configuration follows
    available = np.ones(m, dtype=bool)
    picked, scores, total_h = [], [], 0.0
    tie = rng.permutation(m)
    for _ in range(n):
        mi = _joint_entropies(w, omega, P) + omega @ log_scale - total_h - cond_h
        key = np.where(available, mi, -np.inf)
        j = int(np.flatnonzero(key == key.max())[np.argmin(tie[key == key.max()])])
        picked.append(j)
        scores.append(float(mi[j]))
        available[j] = False
        total_h += cond_h[j]
        if len(picked) == 1:  # from one configuration to S sampled ones
            w, log_scale, omega = np.ones((BATCHBALD_SAMPLES, T)), np.zeros(BATCHBALD_SAMPLES), np.full(BATCHBALD_SAMPLES, 1 / BATCHBALD_SAMPLES)
        p_j = P[j][:, member].T  # [S, k]: label distribution of pick j under each configuration's pass
        y = (p_j.cumsum(axis=1) < rng.random((BATCHBALD_SAMPLES, 1))).sum(axis=1).clip(max=P.shape[1] - 1)
        w = w * P[j][y, :]  # [S, T]
        top = w.max(axis=1, keepdims=True).clip(1e-300)
        w /= top
        log_scale += np.log(top[:, 0])
    return Selection(cand[keep[np.asarray(picked, dtype=np.int64)]], np.asarray(scores))
