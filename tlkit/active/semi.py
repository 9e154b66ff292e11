"""Semi-supervised head rounds: the unlabeled pool teaches the head too.

The plain head (:mod:`tlkit.active.head`) learns from the labeled rows alone. Self-training adds
pseudo-labels from the pool, chosen so that they are right far more often than the head alone:

1. **Two views of the pool.** The head's probabilities, and label spreading (Zhou et al. 2004) over
   a k-nearest-neighbour graph of the embeddings, centred and L2-normalised (centring removes the
   "hubs" that raw CNN features have). The pseudo-labeler is their average: spreading follows the
   pool's clusters, the head follows the labeled classes' linear boundaries.
2. **Few, balanced, confident pseudo-labels.** For each labeled class, the ``per_class`` x (mean
   labels per class) candidates predicted as that class with the highest confidence; weighted by
   ``weight`` x confidence. Balancing per class keeps a large class from swallowing the others.
3. **One refit** of the head on labeled + pseudo-labeled rows (same pool scaler). Pseudo-labels
   live only in memory: they never enter ``labels.csv``.

Chosen on the tuning sets only (``benchmarks/bench_ssl.py``; CIFAR-10 and clothing photos, splits
100-104), before the report sets were looked at.

Cost: the graph covers at most ``max_points`` rows (a seeded sample above that, labeled rows always
in) and is cached by :class:`~tlkit.active.learner.HeadLearner` (built once for a pool that small,
once per round above it): O(s²·d) time in blocks (about 4 s for 5,000 x 1,280 on 2 cores), O(s·k)
memory; each fit adds 20 sparse products and one head fit on a few hundred rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tlkit.active.strategies._geometry import centred_unit_rows, sample_rows
from tlkit.core.constants import SSL_MODES
from tlkit.core.errors import check_choice

log = logging.getLogger(__name__)

_BLOCK = 2048


def check_ssl(mode: str) -> str:
    """``mode`` when it is one of :data:`SSL_MODES`, else a one-line :class:`TlkitError`."""
    return check_choice(mode, SSL_MODES, "--ssl")


@dataclass(frozen=True)
class SelfTraining:
    """How pseudo-labels are made (module docstring).

    Attributes:
        per_class: pseudo-labels per labeled class, as a multiple of the mean labels per class.
        weight: a pseudo-label's sample weight, times its confidence (a label weighs 1).
        neighbours: k of the k-nearest-neighbour graph.
        alpha: label spreading's propagation weight (1 - alpha pulls back to the labels).
        iterations: label spreading steps.
        max_points: the graph covers at most this many pool rows (labeled rows always included).
    """

    per_class: float = 5.0
    weight: float = 1.0
    neighbours: int = 10
    alpha: float = 0.9
    iterations: int = 20
    max_points: int = 5_000


@dataclass(frozen=True, eq=False)
class PoolGraph:
    """A symmetric, normalised k-nearest-neighbour graph over rows of the pool.

    Attributes:
        rows: ``[s]`` pool row of each graph node, ascending.
        norm_adj: ``[s, s]`` sparse D^-1/2 W D^-1/2 with W the symmetrised cubed cosine similarities.
    """

    rows: np.ndarray
    norm_adj: object  # scipy.sparse.csr_matrix

    @classmethod
    def build(cls, x: np.ndarray, rows: np.ndarray, neighbours: int) -> "PoolGraph":
        """The graph over ``x[rows]`` (``x``: ``[n, d]`` pool embeddings, a memmap is fine)."""
        from scipy.sparse import csr_matrix

        z = centred_unit_rows(x[rows])
        s, k = len(rows), min(neighbours, len(rows) - 1)
        idx = np.empty((s, k), np.int64)
        sim = np.empty((s, k), np.float32)
        for i in range(0, s, _BLOCK):
            block = z[i : i + _BLOCK] @ z.T
            block[np.arange(block.shape[0]), np.arange(i, i + block.shape[0])] = -np.inf
            j = np.argpartition(-block, k - 1, axis=1)[:, :k]
            idx[i : i + _BLOCK], sim[i : i + _BLOCK] = j, np.take_along_axis(block, j, 1)
        w = np.maximum(sim, 0.0) ** 3
        adj = csr_matrix((w.ravel(), (np.repeat(np.arange(s), k), idx.ravel())), shape=(s, s))
        adj = adj + adj.T
        d = 1.0 / np.sqrt(np.asarray(adj.sum(1)).ravel() + 1e-12)
        return cls(np.asarray(rows), csr_matrix(adj.multiply(d[:, None]).multiply(d[None, :])))

    def spread(self, labeled: np.ndarray, y: np.ndarray, k: int, alpha: float, iterations: int) -> np.ndarray:
        """Label spreading: ``[s, k]`` class distributions of the graph's nodes (rows sum to 1 or 0).

        Args:
            labeled: ``[n]`` bool over the pool; y: ``[n]`` int classes, read where labeled.
        """
        lab = labeled[self.rows]
        seed = np.zeros((len(self.rows), k), np.float32)
        seed[np.flatnonzero(lab), y[self.rows][lab]] = 1.0
        f = seed.copy()
        for _ in range(iterations):
            f = alpha * (self.norm_adj @ f) + (1.0 - alpha) * seed
        f = np.maximum(f, 0.0)
        total = f.sum(1, keepdims=True)
        return np.divide(f, total, out=np.zeros_like(f), where=total > 0)


def graph_rows(n: int, labeled: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Pool rows the graph covers: all of them up to ``max_points``, else every labeled row and a
    seeded sample of the rest."""
    if n <= max_points:
        return np.arange(n)
    lab = np.flatnonzero(labeled)
    rest = np.flatnonzero(~labeled)
    take = rest[sample_rows(rest.size, max(max_points - lab.size, 0), rng)]
    return np.sort(np.concatenate([lab, take]))


def pseudo_labels(graph: PoolGraph, probs: np.ndarray, labeled: np.ndarray, y: np.ndarray,
                  cfg: SelfTraining) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-labels for unlabeled graph rows (module docstring, steps 1-2).

    Args:
        graph: the pool graph; probs: ``[s, k]`` the plain head's probabilities of the graph's rows.
        labeled: ``[n]`` bool; y: ``[n]`` int classes of labeled rows.

    Returns:
        (pool rows ``[p]``, classes ``[p]``, sample weights ``[p]``); empty when nothing qualifies.
    """
    k = probs.shape[1]
    spread = graph.spread(labeled, y, k, cfg.alpha, cfg.iterations)
    view = 0.5 * (np.asarray(probs, np.float32) + spread)
    pred, conf = view.argmax(1), view.max(1)
    present = np.unique(y[labeled])
    quota = max(1, int(round(cfg.per_class * labeled.sum() / max(len(present), 1))))
    free = ~labeled[graph.rows]
    picked = []
    for c in present:
        nodes = np.flatnonzero(free & (pred == c))
        picked.append(nodes[np.argsort(-conf[nodes], kind="stable")[:quota]])
    nodes = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return graph.rows[nodes], pred[nodes], cfg.weight * conf[nodes]
