"""The strategy registry and :func:`select`, which does the work every strategy shares.

A strategy is a pure function ``fn(pool, n, rng) -> Selection``. :func:`select` validates the
pool, clamps ``n`` to the number of candidates, checks that the arrays the strategy needs are
present, seeds the generator and checks the result, so a strategy only ranks.

A pool is single-label (``probs`` rows are softmax distributions) or multi-label (``multilabel``:
``probs [n, k]`` are independent per-class probabilities, ``labels [n, k]`` 0/1 rows). Each strategy
declares the tasks it is made for (:attr:`StrategyInfo.tasks`); one that reads single-label
probabilities refuses a multi-label pool with one line naming the strategies that fit
(:func:`check_task`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tlkit.active.strategies._geometry import large_pool_kmeans
from tlkit.active.strategies._scale import DEFAULT_APPROX, Approx, check_finite, geometry
from tlkit.core.constants import MULTILABEL, TASKS
from tlkit.core.errors import TlkitError, did_you_mean

log = logging.getLogger(__name__)

NEEDS = frozenset({"probs", "embeddings", "mc_probs"})
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_PROB_TOL = 1e-3  # rows of probs must sum to 1 within this


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class PoolView:
    """Everything a strategy may look at, over the WHOLE pool (labeled and unlabeled rows).

    Attributes:
        embeddings: ``[n, d]`` features (the classifier head's input): float32, or float16, or a
            memmap of either; :func:`select` hands strategies float32 (see ``approx``).
        labeled: ``[n]`` bool, already labeled (or marked unlabelable).
        candidates: ``[n]`` bool, may be selected (unlabeled, not excluded, in the subset).
        probs: ``[n, k]`` class probabilities of the current model; None at cold start. Multi-label:
            each entry is the probability that the class is present (rows need not sum to 1).
        mc_probs: ``[n, k, T]`` probabilities from T stochastic passes (MC dropout, ensemble).
        labels: ``[n]`` int class of labeled rows, -1 elsewhere; None when unknown. Multi-label:
            ``[n, k]`` 0/1 rows of the labeled images, -1 rows elsewhere.
        multilabel: the pool's images carry sets of classes (see the module docstring).
    """

    embeddings: np.ndarray | None
    labeled: np.ndarray
    candidates: np.ndarray
    probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    labels: np.ndarray | None = None
    multilabel: bool = False

    @property
    def task(self) -> str:
        """``single`` or ``multilabel`` (:data:`tlkit.core.constants.TASKS`)."""
        return MULTILABEL if self.multilabel else TASKS[0]

    @property
    def n(self) -> int:
        """Number of rows in the pool."""
        return int(self.labeled.shape[0])

    @property
    def candidate_indices(self) -> np.ndarray:
        """``[c]`` int64 pool indices of the candidates, ascending."""
        return np.flatnonzero(self.candidates)

    @property
    def labeled_indices(self) -> np.ndarray:
        """``[l]`` int64 pool indices of the labeled rows, ascending."""
        return np.flatnonzero(self.labeled)

    @property
    def n_labels(self) -> int:
        """Rows with a known class (``labels >= 0``), or the labeled rows when labels are unknown."""
        if self.labels is not None:
            known = self.labels[self.labeled] >= 0
            return int(np.count_nonzero(known.all(axis=1) if known.ndim == 2 else known))
        return int(np.count_nonzero(self.labeled))

    @property
    def n_classes(self) -> int | None:
        """Number of classes, from probs, mc_probs or labels; None when nothing tells it."""
        for arr in (self.probs, self.mc_probs):
            if arr is not None:
                return int(arr.shape[1])
        if self.labels is not None and self.labels.ndim == 2:
            return int(self.labels.shape[1])
        if self.labels is not None and np.any(self.labels >= 0):
            return int(np.unique(self.labels[self.labels >= 0]).size)
        return None


@dataclass(frozen=True, eq=False)
class Selection:
    """The rows a strategy picked.

    Attributes:
        indices: ``[m]`` int64 pool indices, distinct candidates, in rank order (best first).
        scores: ``[m]`` float64, higher = more useful. For greedy or sampled strategies (coreset,
            badge, typiclust, ...) a score is the value at pick time; the order of ``indices`` is
            what counts.
        strategy: the strategy that produced the ranking (``auto`` names the one it used).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str = ""

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def empty(cls, strategy: str = "") -> "Selection":
        return cls(np.empty(0, np.int64), np.empty(0, np.float64), strategy)


Strategy = Callable[[PoolView, int, np.random.Generator], Selection]


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its name, one-line description and the arrays it needs.

    ``full_dim``: the strategy reads only a bounded sample of the embeddings' rows (or streams them,
    as :func:`~tlkit.active.strategies._geometry.kmeans_rows`), so on big pools it gets the stored
    rows (any float dtype, a memmap) at full dimension instead of a projection, and must convert the
    rows it takes (:func:`~tlkit.active.strategies._geometry.take_rows`).

    ``tasks``: the pools it serves, a subset of :data:`tlkit.core.constants.TASKS` (``single``, ``multilabel``).
    """

    name: str
    fn: Strategy
    description: str
    needs: tuple[str, ...]
    full_dim: bool = False
    tasks: tuple[str, ...] = TASKS[:1]

    @property
    def cold_start(self) -> bool:
        """True when it works without a model (needs neither probs nor mc_probs)."""
        return "probs" not in self.needs and "mc_probs" not in self.needs


_REGISTRY: dict[str, StrategyInfo] = {}


def register_strategy(name: str, *, description: str, needs: tuple[str, ...] = ("probs",),
                      full_dim: bool = False, tasks: tuple[str, ...] | None = None) -> Callable[[Strategy], Strategy]:
    """Register ``fn(pool, n, rng) -> Selection`` under ``name``.

    Args:
        name: lower-case, dash-separated (``"least-confidence"``); unique.
        description: one line for ``--help`` and listings.
        needs: the PoolView arrays the strategy reads, a subset of
            ``{"probs", "embeddings", "mc_probs"}``; :func:`select` checks they are present.
        full_dim: see :class:`StrategyInfo`.
        tasks: the pools it serves (:attr:`StrategyInfo.tasks`); default: both when it needs no
            probabilities, else single-label only.

    Example:
        >>> @register_strategy("my-random", description="uniform", needs=())
        ... def my_random(pool, n, rng): ...
    """
    needs = tuple(needs)
    if not _NAME.match(name):
        raise ValueError(f"strategy name {name!r} must be lower-case words joined by '-'")
    if not set(needs) <= NEEDS:
        raise ValueError(f"strategy {name!r}: needs {sorted(set(needs) - NEEDS)} not in {sorted(NEEDS)}")
    if tasks is None:
        tasks = TASKS[:1] if {"probs", "mc_probs"} & set(needs) else TASKS
    tasks = tuple(tasks)
    if not tasks or not set(tasks) <= set(TASKS):
        raise ValueError(f"strategy {name!r}: tasks {tasks} must be a non-empty subset of {TASKS}")

    def decorator(fn: Strategy) -> Strategy:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"strategy {name!r} is already registered by {_REGISTRY[name].fn.__module__}")
        _REGISTRY[name] = StrategyInfo(name, fn, description, needs, full_dim, tasks)
        return fn

    return decorator


def list_strategies(task: str | None = None) -> list[StrategyInfo]:
    """All registered strategies (those serving ``task`` when given), sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY) if task is None or task in _REGISTRY[k].tasks]


def check_task(info: StrategyInfo, task: str) -> None:
    """One line when ``info`` cannot rank a ``task`` pool, naming the strategies that can.

    Only a multi-label pool is refused: a strategy made for single-label probabilities (rows that sum
    to 1) would misread independent per-class probabilities. A multi-label strategy reads any
    ``[n, k]`` probabilities in [0, 1] as per-class probabilities, a softmax's included.
    """
    if task == MULTILABEL and MULTILABEL not in info.tasks:
        fit = ", ".join(s.name for s in list_strategies(MULTILABEL))
        raise TlkitError(f"strategy '{info.name}' needs single-label class probabilities and cannot rank a "
                         f"multi-label pool; choose one of: {fit}")


def get_strategy(name: str) -> StrategyInfo:
    """The strategy registered as ``name``; TlkitError naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TlkitError(f"unknown strategy '{name}'{did_you_mean(name, _REGISTRY)}; "
                         f"choose one of: {', '.join(sorted(_REGISTRY))}") from None


def select(name: str, pool: PoolView, n: int, *, seed: int = 0, approx: "Approx | None" = None) -> Selection:
    """Pick up to ``n`` candidates of ``pool`` with strategy ``name``.

    Validates shapes, clamps ``n`` to the number of candidates, checks the strategy's needs and
    its output. Deterministic for a given ``seed``. The embeddings may be any float array of
    ``[n, d]`` (a float16 memmap included); strategies that need them get them as float32, or as a
    projection on big pools (``approx``, default :data:`~tlkit.active.strategies._scale.DEFAULT_APPROX`;
    see :mod:`tlkit.active.strategies._scale`).

    Returns:
        Selection of ``m = min(n, pool.candidates.sum())`` distinct candidate indices, rank order.

    Raises:
        TlkitError: unknown name, malformed arrays, negative n, or a needed array missing.
    """
    info = get_strategy(name)
    check_task(info, pool.task)
    pool = _validated(pool)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise TlkitError(f"number to select must be a non-negative integer, got {n!r}")
    _check_needs(info, pool)
    m = min(int(n), int(np.count_nonzero(pool.candidates)))
    if m == 0:
        return Selection.empty(info.name)
    approx = DEFAULT_APPROX if approx is None else approx
    if "embeddings" in info.needs:
        pool = dataclasses.replace(pool, embeddings=geometry(pool.embeddings, approx, seed, projected=not info.full_dim))
    with large_pool_kmeans(approx.is_forced):
        sel = info.fn(pool, m, np.random.default_rng(seed))
    sel = _checked_result(info.name, sel, pool, m)
    log.debug("strategy %s picked %d of %d candidates", sel.strategy, m, int(pool.candidates.sum()))
    return sel


def _validated(pool: PoolView) -> PoolView:
    """Check shapes and dtypes (the embeddings are checked by blocks, not copied)."""
    labeled, candidates = np.asarray(pool.labeled), np.asarray(pool.candidates)
    if labeled.ndim != 1:
        raise TlkitError(f"labeled must be a 1-D bool mask [n], got shape {labeled.shape}")
    n = labeled.shape[0]
    for what, mask in (("labeled", labeled), ("candidates", candidates)):
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise TlkitError(
                f"{what} must be a bool mask of shape ({n},), got {mask.dtype} {mask.shape}; "
                "build one with np.isin(np.arange(n), indices)"
            )
    both = int(np.count_nonzero(labeled & candidates))
    if both:
        raise TlkitError(f"{both} rows are both labeled and candidates; candidates must exclude labeled rows")
    emb = pool.embeddings
    if emb is not None:
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise TlkitError(f"embeddings must have shape [n={n}, d], got {emb.shape}")
        if not np.issubdtype(emb.dtype, np.floating):
            raise TlkitError(f"embeddings must be floating point, got {emb.dtype}")
        if not check_finite(emb):
            raise TlkitError("embeddings contain NaN or inf; re-extract the features")
    probs = _checked_probs("probs", pool.probs, n, ndim=2, independent=pool.multilabel)
    mc_probs = _checked_probs("mc_probs", pool.mc_probs, n, ndim=3, independent=pool.multilabel)
    if probs is not None and mc_probs is not None and probs.shape[1] != mc_probs.shape[1]:
        raise TlkitError(f"probs has {probs.shape[1]} classes but mc_probs has {mc_probs.shape[1]}")
    labels = pool.labels
    if labels is not None:
        labels = np.asarray(labels)
        if pool.multilabel:
            if labels.ndim != 2 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
                raise TlkitError(f"multi-label labels must be an int array of shape ({n}, k): 0/1 rows, -1 rows for "
                                 f"unknown; got {labels.dtype} {labels.shape}")
        elif labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise TlkitError(f"labels must be an int array of shape ({n},) with -1 for unknown, got {labels.dtype} {labels.shape}")
    return dataclasses.replace(
        pool, embeddings=emb, labeled=labeled, candidates=candidates, probs=probs, mc_probs=mc_probs, labels=labels
    )


def _checked_probs(what: str, arr: np.ndarray | None, n: int, *, ndim: int, independent: bool = False
                   ) -> np.ndarray | None:
    """``arr`` as float32/float64 after its checks; ``independent``: per-class probabilities (multi-label)."""
    if arr is None:
        return None
    arr = np.asarray(arr)
    shape = "[n, k]" if ndim == 2 else "[n, k, T]"
    if arr.ndim != ndim or arr.shape[0] != n or arr.shape[1] < 1 or (ndim == 3 and arr.shape[2] < 1):
        raise TlkitError(f"{what} must have shape {shape} with n={n}, got {arr.shape}")
    arr = np.asarray(arr, dtype=np.float32 if arr.dtype != np.float64 else np.float64)
    if independent:
        if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
            raise TlkitError(f"{what} must hold per-class probabilities in [0, 1] (multi-label); apply a sigmoid "
                             "to logits")
        return arr
    if not np.isfinite(arr).all() or (arr < 0).any() or np.abs(arr.sum(axis=1) - 1).max() > _PROB_TOL:
        raise TlkitError(f"{what} must hold probabilities (non-negative, summing to 1 over classes); apply softmax to logits")
    return arr


def _check_needs(info: StrategyInfo, pool: PoolView) -> None:
    if "embeddings" in info.needs and pool.embeddings is None:
        raise TlkitError(f"strategy '{info.name}' needs embeddings [n, d]; extract features first")
    if "probs" in info.needs and pool.probs is None:
        cold = ", ".join(s.name for s in list_strategies() if s.cold_start)
        raise TlkitError(
            f"strategy '{info.name}' needs model probabilities, which are missing (cold start: no model yet); "
            f"use 'auto' or a cold-start strategy: {cold}"
        )
    if "mc_probs" in info.needs and pool.mc_probs is None:
        raise TlkitError(
            f"strategy '{info.name}' needs mc_probs [n, k, T] from T stochastic passes (MC dropout or an ensemble); "
            "compute them or choose another strategy"
        )


def _checked_result(name: str, sel: Selection, pool: PoolView, m: int) -> Selection:
    """A strategy's output must be m distinct candidates; anything else is a bug in the strategy."""
    idx = np.asarray(sel.indices, dtype=np.int64).reshape(-1)
    scores = np.asarray(sel.scores, dtype=np.float64).reshape(-1)
    problem = None
    if idx.shape[0] != m or scores.shape[0] != m:
        problem = f"returned {idx.shape[0]} indices and {scores.shape[0]} scores, expected {m}"
    elif idx.min() < 0 or idx.max() >= pool.n or not pool.candidates[idx].all():
        problem = "returned rows that are not candidates"
    elif np.unique(idx).shape[0] != m:
        problem = "returned duplicate rows"
    if problem:
        raise RuntimeError(f"strategy '{name}' {problem}")
    return Selection(idx, scores, sel.strategy or name)
