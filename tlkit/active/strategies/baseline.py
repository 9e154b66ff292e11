"""The baseline every strategy should beat: uniform random sampling."""

from __future__ import annotations

import numpy as np

from tlkit.active.strategies._registry import PoolView, Selection, register_strategy


@register_strategy("random", description="uniform random candidates (baseline)", needs=())
def random_sampling(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """``n`` candidates drawn uniformly without replacement; all scores 0.

    Cost: O(c) time and memory for c candidates.
    """
    idx = rng.choice(pool.candidate_indices, size=n, replace=False)
    return Selection(idx, np.zeros(n))
