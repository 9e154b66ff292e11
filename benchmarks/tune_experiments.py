"""Candidate designs for ``auto`` tried with ``tune_auto.py`` and not adopted (kept so the figures in
``benchmarks/results/tune_auto_late.txt`` can be re-run). Registered only in the benchmark process.

* ``soft``: a soft switch. From ``auto_threshold`` on, a fraction ``f`` of each batch comes from
  ``auto``'s late phase (margin + k-means) and the rest from ``maxherding-entropy``, which counts the
  late picks as covered. ``f`` grows from 1/T·batch at the threshold T to 1 at 2T labels.
* ``soft-margin``: the same with plain ``margin`` as the late phase.
* ``maxherding-margin``: MaxHerding whose coverage weights are margin uncertainty, not entropy.
* ``maxherding-balance-<β>``: ``maxherding-entropy`` whose weights are also multiplied by
  ``(Σ_k p_k · (mean count + 1) / (count_k + 1)) ** β``: more weight on rows of classes with few
  labels.
* ``maxherding-entropy-centred``: ``maxherding-entropy`` on centred, then L2-normalised rows (the
  pre-processing ``probcover`` and ``typiclust`` use), the mean taken over the candidates and labeled rows.
* ``maxherding-entropy-knn``: ``maxherding-entropy`` whose kernel width comes from the local scale:
  ``γ = 1 / (2 · median squared distance of a row to its 10th nearest neighbour)``.
  (Both: ``benchmarks/results/auto_few_bandwidth_plan.md``.)
* ``auto-unseen-<strategy>`` (typiclust, probcover, maxherding): ``auto`` that runs ``<strategy>`` instead of
  its few-labels phase while a single-label pool has fewer labels than classes
  (``benchmarks/results/auto_unseen_plan.md``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tlkit.active.strategies import auto as auto_mod
from tlkit.active.strategies import get_strategy, herding, register_strategy
from tlkit.active.strategies._registry import PoolView, Selection
from tlkit.active.strategies.uncertainty import entropy_scores, margin_scores


def _soft(pool: PoolView, n: int, rng: np.random.Generator, late) -> Selection:
    if pool.probs is None:
        return get_strategy("auto").fn(pool, n, rng)
    t = auto_mod.auto_threshold(pool.probs.shape[1])
    f = 0.0 if pool.n_labels < t else min(1.0, (pool.n_labels - t + n) / t)
    k = int(round(f * n))
    if k == 0:
        return get_strategy("auto").fn(pool, n, rng)
    if k >= n:
        return late(pool, n, rng)
    first = late(pool, k, rng)
    labeled, candidates = pool.labeled.copy(), pool.candidates.copy()
    labeled[first.indices], candidates[first.indices] = True, False
    rest = get_strategy("maxherding-entropy").fn(dataclasses.replace(pool, labeled=labeled, candidates=candidates), n - k, rng)
    return Selection(np.r_[first.indices, rest.indices], np.r_[first.scores, rest.scores])


def _balance_weights(pool: PoolView, beta: float):
    k = pool.probs.shape[1]
    known = pool.labels[pool.labeled]
    counts = np.bincount(known[known >= 0], minlength=k)[:k].astype(float)
    boost = (counts.mean() + 1) / (counts + 1)
    return lambda cand: (entropy_scores(pool.probs[cand]) / np.log(k)) * (pool.probs[cand] @ boost) ** beta \
        + herding.HERDING_WEIGHT_FLOOR


def _herd_entropy(pool: PoolView, n: int, rng: np.random.Generator, name: str, centre: bool, knn: int) -> Selection:
    """``maxherding-entropy`` with the experiment's geometry, whatever the library's defaults: rows always
    (``centre``) or never centred, and the kernel width from the ``knn``-th neighbour (0: the global width)."""
    return herding._herd(pool, n, rng, name, herding.entropy_weights(pool), knn=knn,
                         centre_below=np.inf if centre else 0.0, centred_knn=knn)


def _unseen(pool: PoolView, n: int, rng: np.random.Generator, strategy: str) -> Selection:
    if pool.probs is not None and not pool.multilabel and pool.n_labels < pool.probs.shape[1]:
        sel = get_strategy(strategy).fn(pool, n, rng)
        return Selection(sel.indices, sel.scores, f"auto({strategy})")
    return get_strategy("auto").fn(pool, n, rng)


def register_experiments() -> None:
    """Register the experimental strategies above (idempotent)."""
    from tlkit.active.strategies import list_strategies

    if "soft" in {s.name for s in list_strategies()}:
        return
    reg = dict(needs=("embeddings",), full_dim=True)
    register_strategy("soft", description="soft switch to margin+kmeans", **reg)(
        lambda pool, n, rng: _soft(pool, n, rng, auto_mod.margin_kmeans))
    register_strategy("soft-margin", description="soft switch to margin", **reg)(
        lambda pool, n, rng: _soft(pool, n, rng, get_strategy("margin").fn))
    register_strategy("maxherding-margin", description="MaxHerding weighted by margin uncertainty", **reg)(
        lambda pool, n, rng: herding._herd(pool, n, rng, "maxherding-margin", None if pool.probs is None else
                                           lambda c: margin_scores(pool.probs[c]) + herding.HERDING_WEIGHT_FLOOR))
    register_strategy("maxherding-entropy-centred", description="maxherding-entropy on centred rows", **reg)(
        lambda pool, n, rng: _herd_entropy(pool, n, rng, "maxherding-entropy-centred", True, 0))
    register_strategy("maxherding-entropy-knn", description="maxherding-entropy, kernel width from 10-NN distances", **reg)(
        lambda pool, n, rng: _herd_entropy(pool, n, rng, "maxherding-entropy-knn", False, 10))
    register_strategy("maxherding-entropy-centred-knn", description="both", **reg)(
        lambda pool, n, rng: _herd_entropy(pool, n, rng, "maxherding-entropy-centred-knn", True, 10))
    for strategy in ("typiclust", "probcover", "maxherding"):
        register_strategy(f"auto-unseen-{strategy}", description=f"auto, {strategy} below one label per class", **reg)(
            lambda pool, n, rng, _s=strategy: _unseen(pool, n, rng, _s))
    for beta, name in ((0.5, "maxherding-balance-half"), (1.0, "maxherding-balance-one"), (2.0, "maxherding-balance-two")):
        register_strategy(name, description=f"maxherding-entropy x class-balance boost ** {beta}", **reg)(
            lambda pool, n, rng, _b=beta, _name=name: herding._herd(
                pool, n, rng, _name, None if pool.probs is None or pool.labels is None else _balance_weights(pool, _b)))
