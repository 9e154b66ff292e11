"""Diversity strategies over embeddings ``[n, d]``: coreset, kmeans, clue, badge, ranked-batch.

Memory stays O(n·d) (at most one copy of the candidate rows) plus chunked distance blocks of
``_geometry.CHUNK_BYTES``; nothing builds an ``n x n`` matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tlkit.active.strategies._common import fill_up, rank_top
from tlkit.active.strategies._geometry import (
    d2_sample,
    kmeans_rows,
    min_sq_dists,
    nearest_center,
    row_blocks,
    sq_norms,
)
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy
from tlkit.active.strategies.uncertainty import entropy_scores, least_confidence_scores, uncertainty_weight
from tlkit.core.constants import TASKS

log = logging.getLogger(__name__)

RANKED_BATCH_MAX_CANDIDATES = 500
"""modAL's ranked batch costs O(m·(l+n)·d) per pick and O(m²) at cold start for m candidates: above
this many (or n, if larger), only the most uncertain candidates (least confidence) go to it."""


# ---------------------------------------------------------------- coreset (k-center greedy)


def k_center_greedy(
    X: np.ndarray, cand: np.ndarray, centers: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: repeatedly take the candidate farthest from every center so far.

    Args:
        X: ``[N, d]`` float32 pool embeddings; ``cand``: ``[c]`` candidate rows; ``centers``: initial
            centers (the labeled rows). Without centers the candidate nearest the mean goes first.

    Returns:
        ``([n] rows, [n] distance to the nearest center at pick time)``; at cold start the first
        score is the radius the first pick covers alone.
        Cost: O((|centers| + n)·c·d) time, O(c·d + CHUNK) memory (one copy of the candidate rows).
    """
    x2 = sq_norms(X)
    Xc, c2 = X[cand], x2[cand]
    mind = min_sq_dists(X, cand, centers, x2).astype(np.float64)
    cold = centers.size == 0
    if cold:
        mean = Xc.mean(axis=0, dtype=np.float64).astype(np.float32)
        j = int(np.argmin(c2 - 2.0 * (Xc @ mean)))
    else:
        j = int(np.argmax(mind))
    picked, scores = [], []
    for _ in range(n):
        picked.append(j)
        scores.append(float(np.sqrt(max(mind[j], 0.0))))
        np.minimum(mind, np.maximum(c2 + c2[j] - 2.0 * (Xc @ Xc[j]), 0.0), out=mind)
        mind[j] = -1.0  # picked rows stay below every other
        j = int(np.argmax(mind))
    if cold:
        scores[0] = float(np.sqrt(max(mind.max(), 0.0))) if len(picked) == 1 else scores[1]
    return cand[np.asarray(picked, dtype=np.int64)], np.asarray(scores)


@register_strategy(
    "coreset", description="k-center greedy: farthest from the labeled set and each other (Sener & Savarese)", needs=("embeddings",)
)
def coreset(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """k-center greedy with the labeled rows as initial centers; works at cold start.

    Cost: O((l + n)·c·d) time for l labeled rows and c candidates, O(c·d + CHUNK) extra memory.
    """
    idx, s = k_center_greedy(pool.embeddings, pool.candidate_indices, pool.labeled_indices, n)
    return Selection(idx, s)


# ---------------------------------------------------------------- kmeans (cold start)


@register_strategy("kmeans", description="k-means into n clusters, the point nearest each centroid (cold start)",
                   needs=("embeddings",), full_dim=True)
def kmeans_centers(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """k-means on the candidates with ``n`` clusters; per cluster the member nearest its centroid.

    Rank order: largest cluster first; score = cluster size / candidates.
    Cost and memory: :func:`_geometry.kmeans_rows` (full dimension; on big pools k-means trains on a
    sample and one streamed pass assigns every candidate).
    """
    cand = pool.candidate_indices
    labels, rep = kmeans_rows(pool.embeddings, cand, n, rng)
    sizes = np.bincount(labels, minlength=rep.shape[0]).astype(np.float64)
    ok = np.flatnonzero(rep >= 0)
    order, _ = rank_top(ok, sizes[ok], ok.size, rng)
    return fill_up(cand[rep[order]], sizes[order] / cand.size, pool, n, rng, why="kmeans: fewer distinct clusters than picks")


# ---------------------------------------------------------------- CLUE


@register_strategy(
    "clue",
    description="k-means with k = n, rows weighted by predictive entropy; the point nearest each centre (CLUE)",
    needs=("probs", "embeddings"),
    full_dim=True,
    tasks=TASKS,
)
def clue(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """CLUE (Prabhu et al. 2021): uncertainty-weighted k-means over the candidates, ``n`` clusters;
    per cluster the member nearest its centre. Weights are the entropy of ``probs`` (uniform when
    every candidate has entropy 0, e.g. one class; multi-label: the mean binary entropy). Rank:
    heaviest cluster first; score = the cluster's share of the total weight.

    Cost and memory: :func:`_geometry.kmeans_rows`, as ``kmeans``.
    """
    cand = pool.candidate_indices
    w = (uncertainty_weight(pool, cand) if pool.multilabel else entropy_scores(pool.probs[cand])).astype(np.float64)
    if not w.sum() > 0:
        w = np.ones_like(w)
    labels, rep = kmeans_rows(pool.embeddings, cand, n, rng, sample_weight=w)
    mass = np.bincount(labels, weights=w, minlength=rep.shape[0])
    ok = np.flatnonzero(rep >= 0)
    order, _ = rank_top(ok, mass[ok], ok.size, rng)
    return fill_up(cand[rep[order]], mass[order] / w.sum(), pool, n, rng, why="clue: fewer distinct clusters than picks")


# ---------------------------------------------------------------- BADGE


def gradient_embedding_sq_dists(
    A1: np.ndarray, H1: np.ndarray, A2: np.ndarray, H2: np.ndarray, g1: np.ndarray | None = None
) -> np.ndarray:
    """Squared distances between last-layer gradient embeddings ``g = a ⊗ h``, never forming g.

    ``||a⊗h - b⊗h'||² = ||a||²||h||² + ||b||²||h'||² - 2<a,b><h,h'>``.

    Args:
        A1: ``[p, k]`` ``probs - onehot(argmax)``; H1: ``[p, d]`` embeddings; A2, H2: ``[q, k]``, ``[q, d]``.
        g1: optional precomputed ``[p]`` squared norms ``||A1||²·||H1||²`` (saves a pass over H1).

    Returns:
        ``[p, q]`` float32. Cost: O(p·q·(k + d)) time, O(p·q + CHUNK) memory (vs O((p+q)·k·d) for g).
    """
    g1 = sq_norms(A1) * sq_norms(H1) if g1 is None else g1
    g2 = sq_norms(A2) * sq_norms(H2)
    out = np.empty((A1.shape[0], A2.shape[0]), dtype=np.float32)
    for blk in row_blocks(A1.shape[0], 2 * A2.shape[0]):
        D = (A1[blk] @ A2.T) * (H1[blk] @ H2.T)
        D *= -2
        D += g1[blk, None]
        D += g2[None, :]
        out[blk] = np.maximum(D, 0)
    return out


def kmeans_pp_gradients(A: np.ndarray, H: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding over gradient embeddings ``A[i] ⊗ H[i]``; the first pick has the largest norm.

    Returns:
        ``([n] row positions, [n] squared distance to the nearest earlier pick)``.
        Cost: O(n·c·(k + d)) time, O(c) memory beyond the inputs.
    """
    g2 = sq_norms(A) * sq_norms(H)
    first, _ = rank_top(np.arange(A.shape[0]), g2, 1, rng)
    picked, scores = [int(first[0])], [float(g2[first[0]])]
    D2 = np.full(A.shape[0], np.inf)
    for _ in range(n - 1):
        c = picked[-1]
        np.minimum(D2, gradient_embedding_sq_dists(A, H, A[c : c + 1], H[c : c + 1], g2)[:, 0], out=D2)
        D2[picked] = 0.0
        if D2.max() > 0:
            j = d2_sample(D2, rng)
        else:  # every remaining gradient equals a picked one
            j = int(rng.choice(np.setdiff1d(np.arange(A.shape[0]), picked)))
        picked.append(j)
        scores.append(float(D2[j]))
    return np.asarray(picked, dtype=np.int64), np.asarray(scores)


@register_strategy(
    "badge", description="k-means++ over last-layer gradient embeddings: uncertain and diverse (Ash et al.)",
    needs=("probs", "embeddings"), tasks=TASKS,
)
def badge(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """BADGE: gradient embedding ``(p - onehot(argmax p)) ⊗ h`` of a linear softmax head, k-means++ seeded
    (multi-label: ``(p - [p >= 0.5]) ⊗ h`` of independent sigmoid heads).

    Distances are factorised (:func:`gradient_embedding_sq_dists`), so the ``[c, k·d]`` gradients
    are never built (20,000 × 1,280 × 10 classes would be 1 GB).
    Cost: O(n·c·(k + d)) time, O(c·(k + d)) memory (one copy of the candidate rows).
    """
    cand = pool.candidate_indices
    A = pool.probs[cand].astype(np.float32)
    if pool.multilabel:  # sigmoid heads with BCE: the gradient on the logits is p - (p >= 0.5)
        A -= (A >= 0.5).astype(np.float32)
    else:
        A[np.arange(cand.size), A.argmax(axis=1)] -= 1.0
    pos, scores = kmeans_pp_gradients(A, pool.embeddings[cand], n, rng)
    return Selection(cand[pos], scores)


# ---------------------------------------------------------------- ranked batch (modAL)


@dataclass
class _PrecomputedLearner:
    """The slice of modAL's learner interface ``ranked_batch`` reads, over precomputed probs."""

    proba: np.ndarray  # [m, k] probs of the rows passed as X
    X_training: np.ndarray | None  # [l, d] labeled embeddings, None at cold start
    on_transformed: bool = False

    def predict_proba(self, X: np.ndarray, **_: object) -> np.ndarray:
        if X.shape[0] != self.proba.shape[0]:
            raise ValueError(f"expected the {self.proba.shape[0]} prepared rows, got {X.shape[0]}")
        return self.proba


@register_strategy(
    "ranked-batch",
    description=f"modAL ranked batch: uncertainty vs. distance to labeled (top {RANKED_BATCH_MAX_CANDIDATES} uncertain)",
    needs=("probs", "embeddings"),
)
def ranked_batch(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """modAL's ``uncertainty_batch_sampling`` (Cardoso et al. 2017) on precomputed probs.

    Bounded inputs (modAL costs O(m·(l + n)·d) per pick and builds ``m x m`` at cold start):

    * candidates: only the ``m = max(RANKED_BATCH_MAX_CANDIDATES, n)`` most uncertain (least
      confidence) are ranked (logged when it applies);
    * labeled rows: only those that are the nearest labeled row of some kept candidate (≤ m). The
      distance of every candidate to the labeled set is unchanged, so is modAL's ranking up to its
      weight ``α = |U| / (|U| + |D|)``, which modAL computes on these reduced sets.

    Cost: O(m·l·d) to reduce + O(n·m·(m + n)·d) in modAL; O(m·d + m²) memory.
    """
    from modAL.batch import uncertainty_batch_sampling  # imports torch: only when used

    cand = pool.candidate_indices
    P = pool.probs[cand]
    keep = np.arange(cand.size)
    m = max(RANKED_BATCH_MAX_CANDIDATES, n)
    if cand.size > m:
        keep = np.sort(rank_top(keep, least_confidence_scores(P), m, rng)[0])
        log.info("ranked-batch: ranking the %d most uncertain of %d candidates", m, cand.size)
    lab = pool.labeled_indices
    if lab.size:
        _, nearest = nearest_center(pool.embeddings, cand[keep], lab)
        lab = lab[np.unique(nearest)]
    learner = _PrecomputedLearner(P[keep], pool.embeddings[lab] if lab.size else None)
    pos, scores = uncertainty_batch_sampling(learner, pool.embeddings[cand[keep]], n_instances=n)
    return Selection(cand[keep[np.asarray(pos, dtype=np.int64)]], np.asarray(scores, dtype=np.float64))
