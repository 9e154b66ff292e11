"""Active-learning selection strategies: a registry of pure functions over pool arrays.

Example:
    >>> from tlkit.active.strategies import PoolView, select, list_strategies
    >>> pool = PoolView(embeddings=E, labeled=lab_mask, candidates=~lab_mask, probs=P)
    >>> sel = select("auto", pool, 100, seed=0)   # sel.indices: [100] pool rows, best first
    >>> [s.name for s in list_strategies()]        # the CLI's --strategy choices

Families: :mod:`.baseline` (random), :mod:`.uncertainty` (least-confidence, margin, entropy,
class-balanced), :mod:`.bayesian` (bald, batchbald), :mod:`.diversity` (coreset, kmeans, clue, badge,
ranked-batch), :mod:`.coldstart` (typiclust, probcover), :mod:`.herding` (maxherding),
:mod:`.multilabel` (mean-entropy, max-margin, mmc, max-margin-adaptive: multi-label pools), :mod:`.auto` (the default).
"""

from __future__ import annotations

from tlkit.active.strategies._registry import (
    NEEDS,
    PoolView,
    Selection,
    Strategy,
    StrategyInfo,
    check_task,
    get_strategy,
    list_strategies,
    register_strategy,
    select,
)
from tlkit.active.strategies._scale import DEFAULT_APPROX, Approx

# importing the family modules registers their strategies
from tlkit.active.strategies import auto, baseline, bayesian, coldstart, diversity, herding, multilabel, uncertainty  # noqa: E402,F401,I001

DEFAULT_STRATEGY = "auto"

__all__ = [
    "DEFAULT_APPROX",
    "DEFAULT_STRATEGY",
    "Approx",
    "NEEDS",
    "PoolView",
    "Selection",
    "Strategy",
    "StrategyInfo",
    "check_task",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "select",
]
