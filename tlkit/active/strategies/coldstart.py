"""Strategies for few or no labels, on embeddings only: TypiClust and ProbCover.

Both come from "low budget" active learning (Hacohen et al. 2022, Yehuda et al. 2022): while a
model is untrustworthy, label typical points of uncovered regions rather than uncertain ones.
"""

from __future__ import annotations

import logging

import numpy as np

from tlkit.active.strategies._common import fill_up
from tlkit.active.strategies._geometry import (
    centred_unit_rows, kmeans, knn_mean_dist, row_blocks, sq_dists, sq_norms, take_rows,
)
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy

log = logging.getLogger(__name__)

TYPICLUST_MAX_CLUSTERS = 500
"""TypiClust clusters into ``labeled + n`` groups, at most this many."""
TYPICALITY_K = 20
"""Typicality = 1 / mean distance to this many nearest neighbours in the same cluster."""
TYPICALITY_MAX_POINTS = 2000
"""In a bigger cluster, typicality is estimated against (and for) a seeded sample of this many rows."""
PROBCOVER_PURITY = 0.2
"""ProbCover's radius δ: the largest with at least this fraction of pure balls.

The paper's 0.95 was set on self-supervised features, whose clusters are tight. On ImageNet
features of real photos (efficientnet_lite0 on CIFAR-10 and clothing photos, the tuning sets of
``benchmarks/results/photo_sets_plan.md``) it gives a δ below the median nearest-neighbour
distance: 88 % of the balls hold only their centre, the few big balls sit on "hub" images of two
or three classes, and the greedy cover spent its first picks there and then ran in random order,
below random selection (AUBC to 50 labels 0.316 vs random 0.435 on clothing). Measured on the
tuning splits (``benchmarks/results/probcover_tuning.txt``; centred, L2-normalised embeddings):
mean AUBC 0.402 at 0.95, 0.489 at 0.6, 0.495 at 0.3, 0.506 at 0.2, lower at 0.1."""
PROBCOVER_MAX_POINTS = 4000
"""Above this many rows (candidates + labeled), ProbCover builds its graph on a seeded sample."""
PROBCOVER_DELTA_QUERIES = 1000
"""Rows whose nearest other-cluster distance estimates δ."""


# ---------------------------------------------------------------- TypiClust


def typicality(X: np.ndarray, members: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[q]`` typicality of ``queries`` within a cluster: 1 / mean distance to the K nearest members.

    Args:
        X: ``[N, d]`` embeddings; ``members``: sorted rows of the cluster; ``queries``: a subset of them.

    Above :data:`TYPICALITY_MAX_POINTS`, both sets are seeded samples; unsampled queries get -inf.
    Cost: O(q·m·d) time with q, m ≤ TYPICALITY_MAX_POINTS; O(CHUNK) memory.
    """
    out = np.full(queries.size, -np.inf)
    ref = members if members.size <= TYPICALITY_MAX_POINTS else np.sort(rng.choice(members, TYPICALITY_MAX_POINTS, replace=False))
    q = np.arange(queries.size)
    if q.size > TYPICALITY_MAX_POINTS:
        q = np.sort(rng.choice(q, TYPICALITY_MAX_POINTS, replace=False))
    pos = np.searchsorted(ref, queries[q]).clip(max=ref.size - 1)
    q_in_r = np.where(ref[pos] == queries[q], pos, -1)
    dist = knn_mean_dist(X[queries[q]], X[ref], TYPICALITY_K, q_in_r)
    out[q] = 1.0 / (dist.astype(np.float64) + 1e-12) if ref.size > 1 else 0.0
    return out


@register_strategy(
    "typiclust",
    description="most typical point of the largest clusters without labels (TypiClust; cold start)",
    needs=("embeddings",),
)
def typiclust(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """TypiClust: k-means into ``labeled + n`` clusters (≤ :data:`TYPICLUST_MAX_CLUSTERS`) over the
    candidate and labeled rows; repeatedly take the cluster with the fewest labeled (and picked)
    rows, largest first, and pick its most typical candidate. Score = typicality.

    Cost: k-means O(r·K·d) per pass over r rows; typicality O(Σ s²·d) over the ≤ n clusters picked
    from (sizes s, capped by sampling); O(r·d) memory (one copy of the rows).
    """
    rows = np.flatnonzero(pool.candidates | pool.labeled)
    is_lab = pool.labeled[rows]
    k = min(int(is_lab.sum()) + n, TYPICLUST_MAX_CLUSTERS, rows.size)
    labels, centers = kmeans(pool.embeddings[rows], k, rng)
    k = centers.shape[0]
    sizes = np.bincount(labels, minlength=k)
    covered = np.bincount(labels[is_lab], minlength=k)
    left = np.bincount(labels[~is_lab], minlength=k)
    tie = rng.permutation(k)
    ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    taken = np.zeros(k, dtype=np.int64)
    picked, scores = [], []
    for _ in range(n):
        open_ = np.flatnonzero(left > 0)
        if open_.size == 0:
            break
        c = int(open_[np.lexsort((tie[open_], -sizes[open_], covered[open_]))[0]])
        if c not in ranked:
            members = rows[labels == c]
            queries = rows[(labels == c) & ~is_lab]
            typ = typicality(pool.embeddings, members, queries, rng)
            order = np.argsort(-typ, kind="stable")
            ranked[c] = (queries[order], typ[order])
        cand_c, typ_c = ranked[c]
        if not np.isfinite(typ_c[taken[c]]):  # the rest of this huge cluster was not sampled
            left[c] = 0
            continue
        picked.append(int(cand_c[taken[c]]))
        scores.append(float(typ_c[taken[c]]))
        taken[c] += 1
        left[c] -= 1
        covered[c] += 1
    return fill_up(picked, scores, pool, n, rng, why="typiclust: ran out of sampled cluster members")


# ---------------------------------------------------------------- ProbCover


def purity_radius(X: np.ndarray, pseudo: np.ndarray, rng: np.random.Generator) -> float:
    """Largest δ such that ≈:data:`PROBCOVER_PURITY` of balls ``B(x, δ)`` hold one pseudo-label.

    A ball around x is pure iff δ < distance from x to the nearest row of another cluster, so δ is
    that distance's (1 - purity) quantile, estimated on :data:`PROBCOVER_DELTA_QUERIES` rows.
    Cost: O(q·S·d) time, O(CHUNK) memory for S rows.
    """
    q = np.arange(X.shape[0])
    if q.size > PROBCOVER_DELTA_QUERIES:
        q = np.sort(rng.choice(q, PROBCOVER_DELTA_QUERIES, replace=False))
    x2 = sq_norms(X)
    nearest_other = np.empty(q.size, dtype=np.float64)
    for blk in row_blocks(q.size, X.shape[0]):
        D = sq_dists(X[q[blk]], X, x2[q[blk]], x2)
        D[pseudo[q[blk], None] == pseudo[None, :]] = np.inf
        nearest_other[blk] = D.min(axis=1)
    finite = nearest_other[np.isfinite(nearest_other)]
    if finite.size == 0:  # one pseudo-class: balls only hold duplicates
        return 0.0
    return float(np.sqrt(np.quantile(nearest_other, 1.0 - PROBCOVER_PURITY)))


def ball_graph(X: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr [S+1], indices)`` of the symmetric graph ``i ~ j iff ||x_i - x_j|| <= δ`` (self included).

    Cost: O(S²·d) time, O(edges + CHUNK) memory.
    """
    x2 = sq_norms(X)
    rows, cols = [], []
    for blk in row_blocks(X.shape[0], X.shape[0]):
        D = sq_dists(X[blk], X, x2[blk], x2)
        D[np.arange(D.shape[0]), np.arange(blk.start, blk.stop)] = 0.0
        r, c = np.nonzero(D <= delta * delta)
        rows.append(r + blk.start)
        cols.append(c.astype(np.int32))
    r, indices = np.concatenate(rows), np.concatenate(cols)
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=X.shape[0]))]
    return indptr, indices


def _probcover_sample(pool: PoolView, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows the graph is built on (labeled first) and a mask of those that are candidates."""
    cand, lab = pool.candidate_indices, pool.labeled_indices
    if cand.size + lab.size > PROBCOVER_MAX_POINTS:
        n_cand = min(cand.size, PROBCOVER_MAX_POINTS - min(lab.size, PROBCOVER_MAX_POINTS // 4))
        n_lab = min(lab.size, PROBCOVER_MAX_POINTS - n_cand)
        log.info("probcover: graph on a sample of %d of %d candidates and %d of %d labeled rows", n_cand, cand.size, n_lab, lab.size)
        cand = np.sort(rng.choice(cand, n_cand, replace=False))
        lab = np.sort(rng.choice(lab, n_lab, replace=False))
    return np.r_[lab, cand], np.r_[np.zeros(lab.size, bool), np.ones(cand.size, bool)]


@register_strategy(
    "probcover",
    description="greedy max coverage of δ-balls, δ from k-means purity (ProbCover; cold start)",
    needs=("embeddings",),
    full_dim=True,
)
def probcover(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """ProbCover: on centred, L2-normalised embeddings (centring removes the hubs of raw CNN
    features), k-means pseudo-labels (k = number of classes when known, else labeled + n), δ from
    :func:`purity_radius`, then greedily the candidate whose δ-ball covers most uncovered rows;
    balls around labeled rows start covered. Score = fraction of rows newly covered.

    Above :data:`PROBCOVER_MAX_POINTS` rows, the graph (and so the picks) come from a seeded uniform
    sample; once the sample is covered, the remaining picks are random (logged).
    Cost: O(S²·d) time, O(S·d + edges + CHUNK) memory with S ≤ PROBCOVER_MAX_POINTS.
    """
    pts, is_cand = _probcover_sample(pool, rng)
    X = centred_unit_rows(take_rows(pool.embeddings, pts))
    k = min(max(2, pool.n_classes or int(pool.labeled.sum()) + n), pts.size)
    pseudo, _ = kmeans(X, k, rng)
    indptr, indices = ball_graph(X, purity_radius(X, pseudo, rng))
    deg = np.diff(indptr).astype(np.int64)
    covered = np.zeros(pts.size, dtype=bool)

    def cover(nodes: np.ndarray) -> None:
        new = np.unique(nodes[~covered[nodes]])
        covered[new] = True
        if new.size:
            nb = np.concatenate([indices[indptr[i] : indptr[i + 1]] for i in new])
            deg[:] -= np.bincount(nb, minlength=pts.size)

    lab_pos = np.flatnonzero(~is_cand)
    if lab_pos.size:
        cover(np.concatenate([indices[indptr[i] : indptr[i + 1]] for i in lab_pos]))
    tie = rng.permutation(pts.size)
    available = is_cand.copy()
    picked, scores = [], []
    for _ in range(n):
        key = np.where(available, deg * (pts.size + 1) + tie, -1)
        j = int(np.argmax(key))
        if key[j] < 0 or deg[j] <= 0:
            break
        picked.append(int(pts[j]))
        scores.append(deg[j] / pts.size)
        available[j] = False
        cover(indices[indptr[j] : indptr[j + 1]])
    return fill_up(picked, scores, pool, n, rng, why="probcover: the sample is fully covered")
