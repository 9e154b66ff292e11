"""Uncertainty sampling over the current model's class probabilities ``probs [n, k]``.

The scores come from modAL's ``classifier_uncertainty`` / ``classifier_margin`` /
``classifier_entropy``, fed the precomputed probabilities through :class:`IdentityProba`. All
cost O(c·k) time and memory for c candidates and k classes, plus O(c) to rank.
"""

from __future__ import annotations

import numpy as np

from tlkit.active.strategies._common import IdentityProba, top_selection
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy

_AS_CLASSIFIER = IdentityProba()


def least_confidence_scores(P: np.ndarray) -> np.ndarray:
    """``[c]`` 1 - max_k p, in [0, 1 - 1/k]; ``P [c, k]``."""
    from modAL.uncertainty import classifier_uncertainty  # modAL imports torch: import on first use

    return classifier_uncertainty(_AS_CLASSIFIER, P)


def margin_scores(P: np.ndarray) -> np.ndarray:
    """``[c]`` 1 - (p_top1 - p_top2), in [0, 1]; 1 = two classes tie. 0 for every row when k = 1."""
    from modAL.uncertainty import classifier_margin

    margin = classifier_margin(_AS_CLASSIFIER, P)
    return 1.0 - margin if P.shape[1] > 1 else margin


def entropy_scores(P: np.ndarray) -> np.ndarray:
    """``[c]`` Shannon entropy of each row (nats), in [0, log k]."""
    from modAL.uncertainty import classifier_entropy

    return classifier_entropy(_AS_CLASSIFIER, P)


def binary_entropy(P: np.ndarray) -> np.ndarray:
    """Elementwise entropy (nats) of independent per-class probabilities ``P``, in [0, log 2]."""
    P = np.clip(np.asarray(P, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(P * np.log(P) + (1 - P) * np.log1p(-P))


def mean_entropy_scores(P: np.ndarray) -> np.ndarray:
    """``[c]`` mean binary entropy over the classes of multi-label probabilities ``P [c, k]``, in [0, log 2];
    maximal when every class is at p = 0.5."""
    return binary_entropy(P).mean(axis=1)


def uncertainty_weight(pool: PoolView, rows: np.ndarray) -> np.ndarray:
    """``[m]`` the model's uncertainty on pool ``rows`` scaled to [0, 1], for coverage/diversity weights.

    Single-label: predictive entropy / log k; multi-label: mean binary entropy / log 2. Requires
    ``pool.probs`` with at least two columns (single-label) or one (multi-label).
    """
    P = pool.probs[rows]
    if pool.multilabel:
        return mean_entropy_scores(P) / np.log(2.0)
    return entropy_scores(P) / np.log(P.shape[1])


@register_strategy("least-confidence", description="lowest top-class probability (modAL classifier_uncertainty)")
def least_confidence(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates whose most likely class is least likely. Cost: O(c·k)."""
    return top_selection(pool, least_confidence_scores(pool.probs[pool.candidates]), n, rng)


@register_strategy("margin", description="smallest gap between the two most likely classes (modAL classifier_margin)")
def margin(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates with the smallest top-1/top-2 probability margin. Cost: O(c·k)."""
    return top_selection(pool, margin_scores(pool.probs[pool.candidates]), n, rng)


@register_strategy("entropy", description="highest predictive entropy (modAL classifier_entropy)")
def entropy(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Candidates with the most spread-out class distribution. Cost: O(c·k)."""
    return top_selection(pool, entropy_scores(pool.probs[pool.candidates]), n, rng)


def round_robin_by_class(
    indices: np.ndarray, predicted: np.ndarray, scores: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Spread a batch over classes: the best of every class, then the second best of every class, ...

    Args:
        indices: ``[c]`` pool indices; ``predicted``: ``[c]`` class of each; ``scores``: ``[c]`` higher = better.

    Returns:
        ``([n] indices, [n] scores)``. Within a round, classes go in order of that round's score.
        Cost: O(c log c) time, O(c) memory.
    """
    tie = rng.permutation(indices.shape[0])
    by_class = np.lexsort((tie, -scores, predicted))  # class, then best first
    rank_in_class = np.empty_like(by_class)
    starts = np.r_[0, np.flatnonzero(np.diff(predicted[by_class])) + 1]
    sizes = np.diff(np.r_[starts, by_class.shape[0]])
    rank_in_class[by_class] = np.arange(by_class.shape[0]) - np.repeat(starts, sizes)
    order = np.lexsort((tie, -scores, rank_in_class))[:n]
    return indices[order], scores[order]


@register_strategy(
    "class-balanced", description="margin uncertainty, spread round-robin over the predicted classes"
)
def class_balanced(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Round-robin over predicted classes (argmax probs), each class ranked by margin uncertainty.

    Keeps a batch from piling onto one confusing class pair. Cost: O(c·k + c log c) time, O(c·k) memory.
    """
    P = pool.probs[pool.candidates]
    idx, s = round_robin_by_class(pool.candidate_indices, P.argmax(axis=1), margin_scores(P), n, rng)
    return Selection(idx, s)
