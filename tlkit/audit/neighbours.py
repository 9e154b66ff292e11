"""Memory-bounded neighbour search on embeddings: k nearest neighbours and every pair above a cosine.

Rows are L2-normalised first, so a cosine ``c`` and a euclidean distance ``e`` meet in ``e² = 2 − 2c``.
The search runs in a PCA projection to ``dims`` dimensions (fitted on a sample): projecting onto a
subspace never lengthens a difference vector, so every pair with full cosine ``≥ t`` has projected
squared distance ``≤ 2(1 − t)``. The pairs found that way are then checked with the full vectors, so
the pair list is exact (none missed, none extra); only the k-NN distances, which score outliers, are
those of the projection.

On a CPU with native bf16 (AVX512-BF16/AMX, :func:`tlkit.core.runtime.cpu_has_fast_bf16`) the search runs
on the full vectors in bf16 instead, which is faster there and much tighter: a projection keeps the
cluster structure but drops the within-cluster spread, so on 100,000 clustered rows the 128-d screen
let through ~50 million candidate pairs for a 0.97 cosine, each checked on its full vectors, where the
full bf16 screen lets through none extra. For unit rows a bf16 dot product is within
:data:`BF16_COS_ERROR` of the float32 one (inputs rounded to 8 significant bits: ``≤ 2u·Σ|x_i y_i| ≤ 2u``
by Cauchy-Schwarz, ``u = 2⁻⁸``; the output rounded once more: ``≤ u``), so screening at
``threshold − BF16_COS_ERROR`` misses no pair; the candidates are checked in float32 as above, and the
k nearest rows' distances are recomputed in float32 (their order may differ from the exact one only
among rows within that error of each other).

Work goes in row blocks: one ``[block, n]`` matrix at a time (torch GEMM + ``topk``), so memory is
O(n·(d + dims) + block·n) and no ``n x n`` matrix is ever built. faiss is not needed.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

DIMS = 128
"""Dimensions of the search projection."""
BLOCK_BYTES = 128 * 2**20
"""Largest float32 ``[block, n]`` distance matrix held at once."""
PCA_SAMPLE = 20_000
"""Rows the projection is fitted on (a seeded sample above it)."""
MAX_PAIRS = 20_000_000
"""More candidate pairs than this is an error (memory): the images are too alike for the threshold."""
MARGIN = 1e-3
"""Slack on the projected squared distance, for float32 rounding (candidates are re-checked exactly)."""
BF16_COS_ERROR = 3 * 2.0**-8 + 1e-4
"""Bound on ``|cos_bf16 − cos|`` for unit rows (module docstring; 1e-4 for float32 accumulation)."""


def normalise(x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``[n, d]`` float32 copy of ``x`` with unit rows (all-zero rows stay zero); ``x`` may be a memmap."""
    out = np.empty(x.shape, np.float32)
    for i in range(0, len(x), chunk):
        block = np.asarray(x[i : i + chunk], dtype=np.float32)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.maximum(norm, 1e-12), out=out[i : i + chunk])
    return out


@dataclass(frozen=True)
class Projection:
    """``z = (x - mean) @ components``: a PCA basis of unit-row embeddings (orthonormal columns)."""

    mean: np.ndarray  # [d]
    components: np.ndarray  # [d, r]

    @classmethod
    def fit(cls, xn: np.ndarray, dims: int = DIMS, seed: int = 0) -> "Projection":
        """Fit on ``xn [n, d]`` (unit rows), on a sample of :data:`PCA_SAMPLE` rows above that."""
        n, d = xn.shape
        rows = xn if n <= PCA_SAMPLE else xn[np.sort(np.random.default_rng(seed).choice(n, PCA_SAMPLE, replace=False))]
        mean = rows.mean(0, dtype=np.float64)
        if d <= dims:
            return cls(mean.astype(np.float32), np.eye(d, dtype=np.float32))
        c = rows.astype(np.float64) - mean
        _, vecs = np.linalg.eigh(c.T @ c)
        return cls(mean.astype(np.float32), np.ascontiguousarray(vecs[:, ::-1][:, :dims], dtype=np.float32))

    def __call__(self, xn: np.ndarray, chunk: int = 8192) -> np.ndarray:
        out = np.empty((len(xn), self.components.shape[1]), np.float32)
        for i in range(0, len(xn), chunk):
            out[i : i + chunk] = (xn[i : i + chunk] - self.mean) @ self.components
        return out


@dataclass(frozen=True)
class Neighbours:
    """What :func:`search` found.

    Attributes:
        index: ``[q, k]`` int64 nearest rows of the reference set (nearest first; -1 when there are fewer).
        dist: ``[q, k]`` float32 euclidean distances ``sqrt(2 − 2·cosine)``: exact on the bf16 path, in
            the projection otherwise.
        pairs: ``[p, 2]`` int64 ``(query row, reference row)`` with full cosine ``≥ threshold``; in a
            self-search each pair once, ``i < j``.
        cosine: ``[p]`` float32 full cosine of each pair.
    """

    index: np.ndarray
    dist: np.ndarray
    pairs: np.ndarray
    cosine: np.ndarray


def search(
    xn: np.ndarray,
    *,
    k: int = 5,
    threshold: float | None = None,
    ref: np.ndarray | None = None,
    dims: int = DIMS,
    bf16: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> Neighbours:
    """k nearest neighbours and pairs with cosine ≥ ``threshold`` (see the module docstring).

    Args:
        xn: ``[q, d]`` unit rows (:func:`normalise`): the queries.
        k: neighbours per query.
        threshold: report pairs with cosine at least this (None: no pairs).
        ref: ``[r, d]`` unit rows to search in; None searches ``xn`` in itself (a row is never its own
            neighbour).
        bf16: search the full vectors in bf16 (None: where the CPU has native bf16 and ``d > dims``)
            rather than a float32 projection to ``dims``.
        progress: called with the number of query rows done after each block.

    Example:
        >>> xn = normalise(np.random.rand(1000, 64))
        >>> nb = search(xn, k=3, threshold=0.99)          # nb.index: [1000, 3]; nb.pairs: [p, 2]
    """
    self_search = ref is None
    r_full = xn if self_search else ref
    k = max(0, min(int(k), len(r_full) - (1 if self_search else 0)))
    found = _Pairs(xn, r_full, threshold)
    if bf16 is None:
        from tlkit.core.runtime import cpu_has_fast_bf16

        bf16 = cpu_has_fast_bf16() and xn.shape[1] > dims
    search_in = _search_bf16 if bf16 else functools.partial(_search_projected, dims=dims)
    index, dist = search_in(xn, r_full, k=k, found=found, self_search=self_search, progress=progress)
    return Neighbours(index, dist, *found.result())


class _Pairs:
    """The pairs found so far: screened candidates ``(query row, reference row)`` checked on the full
    float32 vectors (:func:`_confirm`) block by block, so candidates never pile up."""

    def __init__(self, xn: np.ndarray, ref: np.ndarray, threshold: float | None):
        self.xn, self.ref, self.threshold = xn, ref, threshold
        self.pairs: list[np.ndarray] = []
        self.cosines: list[np.ndarray] = []

    def add(self, cand: np.ndarray) -> None:
        hit, cos = _confirm(self.xn, self.ref, cand, self.threshold)
        self.pairs.append(hit)
        self.cosines.append(cos)
        if sum(len(p) for p in self.pairs) > MAX_PAIRS:
            raise TlkitError(f"more than {MAX_PAIRS:,} image pairs have cosine >= {self.threshold}: the images are "
                             "too alike for this threshold; raise --threshold")

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.pairs:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        return np.concatenate(self.pairs), np.concatenate(self.cosines)


def _hits(block: torch.Tensor, rows: torch.Tensor, close: Callable[[torch.Tensor], torch.Tensor], r0: int,
          c0: int, upper: bool) -> np.ndarray:
    """``[p, 2]`` (row, column) of the ``close`` entries of ``block`` in ``rows`` (the rows that have one;
    a full-block nonzero() is slow), offset by ``(r0, c0)``; only ``row < column`` when ``upper``."""
    hit = close(block[rows]).nonzero()
    hit[:, 0] = rows[hit[:, 0]] + r0
    hit[:, 1] += c0
    hit = hit.numpy()
    return hit[hit[:, 0] < hit[:, 1]] if upper else hit


def _search_projected(xn: np.ndarray, r_full: np.ndarray, *, k: int, found: _Pairs, self_search: bool,
                      progress, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` in a float32 PCA projection to ``dims`` (module docstring); ``(index, dist)``."""
    proj = Projection.fit(r_full, dims)
    zq = torch.from_numpy(proj(xn))
    zr = zq if self_search else torch.from_numpy(proj(r_full))
    q2, r2 = (zq * zq).sum(1), (zr * zr).sum(1)
    index = np.full((len(xn), k), -1, np.int64)
    dist = np.zeros((len(xn), k), np.float32)
    radius2 = None if found.threshold is None else 2.0 * (1.0 - float(found.threshold)) + MARGIN
    step = max(1, BLOCK_BYTES // (4 * max(1, len(r_full))))
    for s in range(0, len(xn), step):
        e = min(s + step, len(xn))
        d2 = torch.addmm(r2[None, :], zq[s:e], zr.T, beta=1.0, alpha=-2.0)
        d2 += q2[s:e, None]
        d2.clamp_(min=0.0)
        if self_search:
            d2[torch.arange(e - s), torch.arange(s, e)] = float("inf")
        nearest = None
        if k:
            v, ix = torch.topk(d2, k, dim=1, largest=False)
            nearest = v[:, 0].clone()
            index[s:e], dist[s:e] = ix.numpy(), v.sqrt_().numpy()
        if radius2 is not None:
            rows = ((d2.amin(1) if nearest is None else nearest) <= radius2).nonzero()[:, 0]
            found.add(_hits(d2, rows, lambda b: b <= radius2, s, 0, self_search))
        if progress:
            progress(e - s)
    return index, dist


class _TopK:
    """Running k largest dot products per query row (bf16 values, int64 reference rows)."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.v = torch.full((n, k), -math.inf, dtype=torch.bfloat16)
        self.i = torch.full((n, k), -1, dtype=torch.int64)

    def update(self, block: torch.Tensor, r0: int, c0: int) -> torch.Tensor:
        """Merge ``block [b, c]`` (rows ``r0..``, columns ``c0..``); returns each row's largest value."""
        v, ix = torch.topk(block, min(self.k, block.shape[1]), dim=1)
        r1 = r0 + len(block)
        cv, ci = torch.cat([self.v[r0:r1], v], 1), torch.cat([self.i[r0:r1], ix + c0], 1)
        cv, pick = torch.topk(cv, self.k, dim=1)
        self.v[r0:r1], self.i[r0:r1] = cv, torch.gather(ci, 1, pick)
        return v[:, 0]

    def exact(self, xq: torch.Tensor, xr: torch.Tensor, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """``(index, dist)`` with float32 distances of the rows found, nearest first (the k rows of a
        chunk are gathered at once: ``chunk · k · d`` floats, 105 MB at 2,048 x 10 x 1,280)."""
        n = len(self.i)
        index, dist = np.full((n, self.k), -1, np.int64), np.zeros((n, self.k), np.float32)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            ix = self.i[s:e]
            cos = torch.bmm(xr[ix.clamp(min=0)], xq[s:e, :, None])[:, :, 0]
            cos, order = torch.sort(cos, dim=1, descending=True)
            index[s:e] = torch.gather(ix, 1, order).numpy()
            dist[s:e] = (2.0 - 2.0 * cos).clamp_(min=0.0).sqrt_().numpy()
        return index, dist


def _search_bf16(xn: np.ndarray, r_full: np.ndarray, *, k: int, found: _Pairs, self_search: bool,
                 progress) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` on the full vectors in bf16 (module docstring); ``(index, dist)``. A self-search
    computes each tile of ``X Xᵀ`` on or above the diagonal once, for its rows and its columns."""
    xq32 = torch.from_numpy(xn)
    xr32 = xq32 if self_search else torch.from_numpy(r_full)
    xq = xq32.bfloat16()
    xr = xq if self_search else xr32.bfloat16()
    n, m = len(xn), len(r_full)
    top = _TopK(n, k)
    screen = None if found.threshold is None else float(found.threshold) - BF16_COS_ERROR
    tile = max(1, int(math.sqrt(BLOCK_BYTES // 2)))  # a [tile, tile] bf16 block of dot products
    rows_step = tile if self_search else max(1, BLOCK_BYTES // (2 * max(1, m)))
    for s in range(0, n, rows_step):
        e = min(s + rows_step, n)
        cand: list[np.ndarray] = []
        for c0 in range(s, m, tile) if self_search else [0]:
            dot = torch.mm(xq[s:e], xr[c0:c0 + tile].T if self_search else xr.T)
            diagonal = self_search and c0 == s
            if diagonal:
                dot.fill_diagonal_(-math.inf)
            best = top.update(dot, s, c0) if k else dot.amax(1)
            if k and self_search and not diagonal:  # the same tile seen from its columns' rows
                top.update(dot.T.contiguous(), c0, s)  # (2x faster than topk along dim 0)
            if screen is not None:
                rows = (best.float() >= screen).nonzero()[:, 0]
                cand.append(_hits(dot, rows, lambda b: b >= screen, s, c0, diagonal))
        if cand:
            found.add(np.concatenate(cand))
        if progress:
            progress(e - s)
    return top.exact(xq32, xr32) if k else (np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32))


def _confirm(xn: np.ndarray, ref: np.ndarray, cand: np.ndarray, threshold: float | None,
             chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs whose full cosine reaches ``threshold``, and those cosines."""
    if threshold is None or not len(cand):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    cos = np.empty(len(cand), np.float32)
    for i in range(0, len(cand), chunk):
        c = cand[i : i + chunk]
        cos[i : i + chunk] = np.einsum("ij,ij->i", xn[c[:, 0]], ref[c[:, 1]])
    keep = cos >= threshold
    return cand[keep].astype(np.int64), cos[keep]
