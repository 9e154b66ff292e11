"""scikit-activeml strategies as tlkit strategies, for benchmarks only (``pip install tlkit[bench]``).

:func:`register_peers` registers ``skactiveml-maxherding``, ``skactiveml-clue``, ... in tlkit's
strategy registry, so tlkit's own simulator (same learner, same start sets) runs them side by side
with tlkit's strategies. Each adapter hands the pool to the peer's ``query`` as ``(X, y)`` with
``NaN`` for unlabeled rows and the candidate indices; Clue gets the simulator's probabilities
through :class:`_Precomputed` (no refit). Nothing in ``tlkit/`` imports this module.
"""

from __future__ import annotations

import numpy as np

from tlkit.active.strategies import PoolView, Selection, register_strategy

PEERS = ("maxherding", "clue", "typiclust", "probcover")


def _peer_inputs(pool: PoolView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.where(pool.labeled & (pool.labels >= 0), pool.labels, np.nan) if pool.labels is not None else None
    if y is None:
        y = np.full(pool.n, np.nan)
    return pool.embeddings.astype(np.float64), y.astype(np.float64), pool.candidate_indices


def _query(strategy, pool: PoolView, n: int, **kw) -> Selection:
    X, y, cand = _peer_inputs(pool)
    idx = np.asarray(strategy.query(X, y, candidates=cand, batch_size=n, **kw), dtype=np.int64)
    return Selection(idx, np.linspace(1.0, 0.0, idx.size))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _make_precomputed():
    from skactiveml.base import SkactivemlClassifier

    class _Precomputed(SkactivemlClassifier):
        """A 'classifier' that returns the pool's precomputed probabilities for the rows it is asked."""

        def __init__(self, probs=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.probs = probs

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X, **kwargs):
            return self.probs

    return _Precomputed


def register_peers() -> list[str]:
    """Register the peer strategies (idempotent); returns their names."""
    from tlkit.active.strategies._registry import _REGISTRY

    if "skactiveml-maxherding" in _REGISTRY:
        return [f"skactiveml-{p}" for p in PEERS]
    from skactiveml.pool import Clue, MaxHerding, ProbCover, TypiClust

    precomputed = _make_precomputed()

    @register_strategy("skactiveml-maxherding", description="scikit-activeml MaxHerding (benchmark only)", needs=("embeddings",))
    def sk_maxherding(pool, n, rng):
        return _query(MaxHerding(random_state=_seed(rng)), pool, n)

    @register_strategy("skactiveml-typiclust", description="scikit-activeml TypiClust (benchmark only)", needs=("embeddings",))
    def sk_typiclust(pool, n, rng):
        return _query(TypiClust(random_state=_seed(rng)), pool, n)

    @register_strategy("skactiveml-probcover", description="scikit-activeml ProbCover (benchmark only)", needs=("embeddings",))
    def sk_probcover(pool, n, rng):
        return _query(ProbCover(random_state=_seed(rng)), pool, n)

    @register_strategy("skactiveml-clue", description="scikit-activeml Clue (benchmark only)", needs=("probs", "embeddings"))
    def sk_clue(pool, n, rng):
        k = pool.probs.shape[1]
        clf = precomputed(probs=pool.probs[pool.candidates].astype(np.float64), classes=np.arange(k))
        clf.classes_ = np.arange(k)
        return _query(Clue(random_state=_seed(rng)), pool, n, estimator=clf, fit_estimator=False)

    return [f"skactiveml-{p}" for p in PEERS]
