"""Bayesian strategies over ``mc_probs [n, k, T]``: T stochastic passes (MC dropout, an ensemble)."""

from __future__ import annotations

import numpy as np

from tlkit.active.strategies._common import top_selection
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
