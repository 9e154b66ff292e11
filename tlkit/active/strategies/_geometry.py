"""Memory-bounded geometry on embeddings: chunked squared distances, k-means, k-NN typicality.

No function here builds an ``n x n`` matrix: pairwise work goes in row blocks of at most
:data:`CHUNK_BYTES` bytes (float32), so memory is O(n·d + CHUNK_BYTES).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import warnings
from typing import Iterator

import numpy as np

CHUNK_BYTES = 64 * 2**20
"""Largest float32 distance block held at once."""
KMEANS_INIT_SAMPLE = 4096
"""k-means++ seeding looks at this many rows (a seeded sample above it)."""
KMEANS_FULL_WORK = 5e8
"""Above ``n * k * d`` of this, k-means takes its large-pool path (one Lloyd pass would cost >~10 ms):
faiss (``faiss-cpu``) when it is installed, else sklearn's MiniBatchKMeans."""
FAISS_POINTS_PER_CENTROID = 256
"""Large-pool k-means trains on a seeded sample of this many rows per cluster (faiss's default), then
assigns every row to its nearest centre (:func:`kmeans_rows` streams that pass)."""
KMEANS_MAX_ITER = 100
"""Most Lloyd passes of any k-means here (sklearn's and faiss's)."""
KMEANS_TOL = 1e-4
"""Convergence: the centres' squared shifts sum to at most this times the rows' mean variance (sklearn's ``tol``)."""
FAISS_ROUND_ITERS = 10
"""faiss k-means checks convergence after every this many passes (faiss itself has no tolerance)."""
_LARGE = contextvars.ContextVar("tlkit_kmeans_large", default=False)


@contextlib.contextmanager
def large_pool_kmeans(on: bool = True) -> Iterator[None]:
    """Within the block, :func:`kmeans` takes its large-pool path at any size (to measure it on small data)."""
    token = _LARGE.set(on)
    try:
        yield
    finally:
        _LARGE.reset(token)


def _large(n: int, k: int, d: int) -> bool:
    """Whether k-means of ``n`` rows of ``d`` into ``k`` clusters takes the large-pool path."""
    return n * k * d > KMEANS_FULL_WORK or _LARGE.get()


def sample_rows(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Ascending positions of a seeded uniform sample of ``m`` of ``n`` rows (all ``n`` when ``m >= n``)."""
    return np.arange(n) if m >= n else np.sort(rng.choice(n, m, replace=False))


def faiss_available() -> bool:
    """faiss is importable and not turned off with ``TLKIT_FAISS=0``."""
    return os.environ.get("TLKIT_FAISS", "1") != "0" and importlib.util.find_spec("faiss") is not None


def centred_unit_rows(X: np.ndarray) -> np.ndarray:
    """``X`` [n, d] minus its mean row, each row then scaled to unit length: float32, a new array.

    Raw CNN features have "hubs" (rows near many others, often of a few classes); centring before
    normalising removes most of them, so distances and neighbourhoods follow the content.
    """
    Z = np.asarray(X, dtype=np.float32)
    Z = Z - Z.mean(0)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    return Z


def sq_norms(X: np.ndarray) -> np.ndarray:
    """``[n]`` float32 squared row norms of ``X [n, d]``; O(n·d) time, O(n) memory."""
    return np.einsum("ij,ij->i", X, X)


def sq_dists(A: np.ndarray, B: np.ndarray, a2: np.ndarray | None = None, b2: np.ndarray | None = None) -> np.ndarray:
    """``[a, b]`` float32 squared euclidean distances from one GEMM; clamped at 0."""
    a2 = sq_norms(A) if a2 is None else a2
    b2 = sq_norms(B) if b2 is None else b2
    D = A @ B.T
    D *= -2
    D += a2[:, None]
    D += b2[None, :]
    return np.maximum(D, 0, out=D)


def row_blocks(n_rows: int, n_cols: int, budget: int | None = None) -> Iterator[slice]:
    """Slices of rows such that a ``[rows, n_cols]`` float32 block stays under ``budget`` bytes
    (default :data:`CHUNK_BYTES`)."""
    step = max(1, (CHUNK_BYTES if budget is None else budget) // (4 * max(1, n_cols)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def nearest_center(
    X: np.ndarray, rows: np.ndarray, centers: np.ndarray, x2: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows``, the nearest of ``centers`` (both int indices into ``X [n, d]``).

    Returns:
        ``([len(rows)] float32 squared distance, [len(rows)] int64 position in centers)``; +inf and
        -1 when ``centers`` is empty. Cost: O(|rows|·|centers|·d) time, O(CHUNK + |centers|·d) memory.
    """
    d2 = np.full(rows.shape[0], np.inf, dtype=np.float32)
    pos = np.full(rows.shape[0], -1, dtype=np.int64)
    if centers.size == 0:
        return d2, pos
    x2 = sq_norms(X) if x2 is None else x2
    C, c2 = X[centers], x2[centers]
    for blk in row_blocks(rows.shape[0], centers.shape[0]):
        r = rows[blk]
        D = sq_dists(X[r], C, x2[r], c2)
        pos[blk] = D.argmin(axis=1)
        d2[blk] = D[np.arange(D.shape[0]), pos[blk]]
    return d2, pos


def min_sq_dists(X: np.ndarray, rows: np.ndarray, centers: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
    """``[len(rows)]`` float32 squared distance from each of ``rows`` to the nearest of ``centers``
    (+inf when there are none); see :func:`nearest_center`."""
    return nearest_center(X, rows, centers, x2)[0]


def d2_sample(D2: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to ``D2 [n]`` (k-means++ "D²" sampling);
    uniform when every weight is 0. O(n)."""
    cum = np.cumsum(D2, dtype=np.float64)
    if not cum[-1] > 0:
        return int(rng.integers(D2.shape[0]))
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), D2.shape[0] - 1)


def kmeans_pp_seeds(X: np.ndarray, k: int, rng: np.random.Generator, weight: np.ndarray | None = None) -> np.ndarray:
    """``[k, d]`` k-means++ initial centers (one trial per center) of ``X [n, d]``; with ``weight [n]``,
    rows are drawn with probability proportional to ``weight · D²`` (the first one ``∝ weight``).

    One matrix-vector product per center: O(k·n·d) time, O(n) memory. (sklearn's
    ``kmeans_plusplus`` upcasts float32 blocks to float64 and is ~10x slower here.)
    """
    x2 = sq_norms(X)
    picked = [int(rng.integers(X.shape[0])) if weight is None else d2_sample(weight, rng)]
    D2 = np.full(X.shape[0], np.inf)
    for _ in range(k - 1):
        c = picked[-1]
        np.minimum(D2, np.maximum(x2 + x2[c] - 2.0 * (X @ X[c]), 0.0), out=D2)
        picked.append(d2_sample(D2 if weight is None else D2 * weight, rng))
    return X[picked].copy()


def kmeans(
    X: np.ndarray, k: int, rng: np.random.Generator, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``X [n, d]`` into ``min(k, n)`` clusters; deterministic for ``rng``'s state.

    ``sample_weight [n]`` (optional, non-negative) weights the rows in seeding and in the updates.

    k-means++ seeding (:func:`kmeans_pp_seeds`) on a sample of :data:`KMEANS_INIT_SAMPLE` rows, then
    Lloyd to convergence (sklearn KMeans, ≤ :data:`KMEANS_MAX_ITER` passes) when ``n·k·d <=
    KMEANS_FULL_WORK``; above it (or inside :func:`large_pool_kmeans`) faiss k-means (Lloyd to the
    same convergence criterion over a sample of :data:`FAISS_POINTS_PER_CENTROID` rows per cluster,
    then every row assigned, :func:`_faiss_kmeans`) when faiss is
    installed, else sklearn MiniBatchKMeans (batches of 2048, early stop after 3 batches without
    improvement).

    Returns:
        ``([n] int labels, [k, d] float32 centers)``. Cost: O(n·k·d) per pass plus O(k·4096·d)
        seeding; O(n + k·d) memory beyond X and sklearn's chunked buffers.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans  # imported here: sklearn takes ~1 s to import
    from sklearn.exceptions import ConvergenceWarning

    n, d = X.shape
    k = max(1, min(int(k), n))
    seed = int(rng.integers(2**31 - 1))
    n_init_rows = min(n, max(KMEANS_INIT_SAMPLE, 2 * k))
    rows = sample_rows(n, n_init_rows, rng)
    w = None if sample_weight is None else np.asarray(sample_weight, np.float64)[rows]
    centers = kmeans_pp_seeds(X if n_init_rows == n else X[rows], k, rng, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: fewer distinct clusters
        if not _large(n, k, d) or n < 2 * k:
            km = KMeans(k, init=centers, n_init=1, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=seed).fit(X, sample_weight=sample_weight)
        elif faiss_available():
            return _faiss_kmeans(X, centers, seed, sample_weight)
        else:
            km = MiniBatchKMeans(
                k, init=centers, n_init=1, batch_size=2048, max_iter=20, max_no_improvement=3, random_state=seed
            ).fit(X, sample_weight=sample_weight)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _faiss_kmeans(X: np.ndarray, centers: np.ndarray, seed: int, sample_weight: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means from the given initial ``centers``: ``([n] labels, [k, d] centers)``.

    Trains on a seeded sample of :data:`FAISS_POINTS_PER_CENTROID` rows per cluster, by rounds of
    :data:`FAISS_ROUND_ITERS` Lloyd passes until the centres move less than sklearn's criterion
    (``sum of squared shifts <= KMEANS_TOL · mean variance``) or :data:`KMEANS_MAX_ITER` passes;
    then every row is assigned to its nearest centre.
    """
    import faiss

    k, d = centers.shape
    n = X.shape[0]
    m = min(n, FAISS_POINTS_PER_CENTROID * k)
    train = sample_rows(n, m, np.random.default_rng(seed))
    Xt = np.ascontiguousarray(X[train], dtype=np.float32)
    w = None if sample_weight is None else np.ascontiguousarray(np.asarray(sample_weight)[train], dtype=np.float32)
    tol = KMEANS_TOL * float(Xt.var(axis=0, dtype=np.float64).mean())
    km = faiss.Kmeans(d, k, niter=FAISS_ROUND_ITERS, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(1, -(-m // k)))  # no second sampling
    c = np.ascontiguousarray(centers, dtype=np.float32)
    for _ in range(0, KMEANS_MAX_ITER, FAISS_ROUND_ITERS):
        km.train(Xt, weights=w, init_centroids=c)
        shift = float(((km.centroids - c) ** 2).sum(dtype=np.float64))
        c = np.ascontiguousarray(km.centroids, dtype=np.float32)
        if shift <= tol:
            break
    _, labels = km.index.search(Xt if m == n else np.ascontiguousarray(X, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64), c


def take_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), d]`` float32 copy of ``X[rows]`` (``X`` any float array, a float16 memmap included;
    ``rows`` ascending reads a memmap in order)."""
    return np.ascontiguousarray(X[rows], dtype=np.float32)


def kmeans_rows(
    X: np.ndarray, rows: np.ndarray, k: int, rng: np.random.Generator, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows ``X[rows]`` at full dimension, and the member nearest each centre.

    ``X`` may be any float ``[N, d]`` array, a float16 memmap included. On the small path the rows
    are copied as float32 and clustered by :func:`kmeans`. On the large path (``len(rows)·k·d >``
    :data:`KMEANS_FULL_WORK`, or inside :func:`large_pool_kmeans`) :func:`kmeans` trains on a seeded
    sample of :data:`FAISS_POINTS_PER_CENTROID` rows per cluster, then every row is assigned to its
    nearest centre block by block: no float32 copy of all the rows, and no projection.

    Returns:
        ``([len(rows)] int labels, [k'] position in ``rows`` of the member nearest each centre, -1
        for an empty cluster)``. Cost: k-means on at most ``256·k`` rows plus one O(c·k·d) pass;
        memory O(256·k·d + CHUNK_BYTES) on the large path.
    """
    c, d = rows.shape[0], X.shape[1]
    k = max(1, min(int(k), c))
    if not _large(c, k, d):
        Xc = take_rows(X, rows)
        labels, centers = kmeans(Xc, k, rng, sample_weight)
        return labels, nearest_to_centers(Xc, labels, centers)
    train = sample_rows(c, FAISS_POINTS_PER_CENTROID * k, rng)
    w = None if sample_weight is None else np.asarray(sample_weight, np.float64)[train]
    with large_pool_kmeans():
        _, centers = kmeans(take_rows(X, rows[train]), k, rng, w)
    return assign_rows(X, rows, centers)


def assign_rows(X: np.ndarray, rows: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``X[rows]`` to its nearest of ``centers [k, d]``, read block by block:
    ``([len(rows)] labels, [k] position of the member nearest each centre, -1 if none)``.
    Cost: O(c·k·d) time, O(CHUNK_BYTES) memory beyond the ``[c]`` labels and distances."""
    labels = np.empty(rows.shape[0], dtype=np.int64)
    d2 = np.empty(rows.shape[0], dtype=np.float32)
    c2 = sq_norms(centers)
    for blk in row_blocks(rows.shape[0], max(centers.shape[0], X.shape[1])):
        Xb = take_rows(X, rows[blk])
        labels[blk] = sq_dists(Xb, centers, None, c2).argmin(axis=1)
        Xb -= centers[labels[blk]]
        d2[blk] = np.einsum("ij,ij->i", Xb, Xb)  # as nearest_to_centers computes it
    return labels, _nearest_members(labels, d2, centers.shape[0])


def nearest_to_centers(X: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``[k]`` row index of X nearest each center among its own cluster's members (-1 if empty).

    Cost: O(n·d) time (one distance per row, to its own center), O(n) memory.
    """
    d2 = np.empty(X.shape[0], dtype=np.float32)
    for blk in row_blocks(X.shape[0], X.shape[1]):
        diff = X[blk] - centers[labels[blk]]
        d2[blk] = np.einsum("ij,ij->i", diff, diff)
    return _nearest_members(labels, d2, centers.shape[0])


def _nearest_members(labels: np.ndarray, d2: np.ndarray, k: int) -> np.ndarray:
    """``[k]`` position of the member with the smallest ``d2`` in each cluster (the first on ties; -1 if empty)."""
    order = np.lexsort((d2, labels))  # by cluster, then distance
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    out = np.full(k, -1, dtype=np.int64)
    out[labels[order[first]]] = order[first]
    return out


def knn_mean_dist(Q: np.ndarray, R: np.ndarray, k: int, q_in_r: np.ndarray | None = None) -> np.ndarray:
    """Mean euclidean distance of each row of ``Q [q, d]`` to its ``k`` nearest rows of ``R [r, d]``.

    Args:
        q_in_r: ``[q]`` position of each query inside R (that row, itself, is skipped; -1 when the
            query is not in R), or None.

    Returns:
        ``[q]`` float32; zeros when R has no other row. Cost: O(q·r·d) time, O(CHUNK_BYTES) memory.
    """
    k = min(int(k), R.shape[0] - (1 if q_in_r is not None else 0))
    out = np.zeros(Q.shape[0], dtype=np.float32)
    if k <= 0:
        return out
    r2 = sq_norms(R)
    for blk in row_blocks(Q.shape[0], R.shape[0]):
        D = sq_dists(Q[blk], R, None, r2)
        if q_in_r is not None:
            inside = np.flatnonzero(q_in_r[blk] >= 0)
            D[inside, q_in_r[blk][inside]] = np.inf
        near = np.partition(D, k - 1, axis=1)[:, :k]
        out[blk] = np.sqrt(near).mean(axis=1)
    return out
