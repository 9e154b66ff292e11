"""What strategies see of a big pool: the embeddings as float32, or a projection when they are too big.

A pool of a million 1,280-d rows is 4.9 GB in float32 (2.4 GB stored as float16, memory-mapped).
The geometric strategies that touch every candidate (coreset, TypiClust, BADGE, ...) copy them and
convert them to float32, which at that size would not fit next to the pool. So above
:attr:`Approx.above_bytes` of float32 embeddings they see a projection instead:

* onto the top :attr:`Approx.dim` right singular vectors of the embeddings, **uncentred** (the
  first one is close to the mean direction), fitted on a seeded sample of :attr:`Approx.fit_rows`
  rows, plus one column holding the norm of what they drop (:func:`project`). Every row keeps its
  norm exactly; inner products and distances are kept up to the energy dropped (reported in the
  log), and no distance grows, so euclidean and cosine geometry both survive it;
* computed block by block from the stored rows (float16 or float32, memmap or not): memory is the
  ``[n, dim]`` float32 result plus one block.

Strategies that read only a bounded sample of rows (MaxHerding, ProbCover, ``auto``) or stream them
(k-means, CLUE: trained on a sample, every row assigned block by block) never need the projection:
they get the stored rows at full dimension (``StrategyInfo.full_dim``).

Below the threshold nothing changes: strategies see the exact embeddings (as float32). The head
(the classifier) always trains and scores on the full embeddings. Selection quality with the
projection forced on is measured by ``benchmarks/bench_scale.py --aubc`` (README).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tlkit.core.constants import PROJECTION_DIM

log = logging.getLogger(__name__)

BLOCK_ROWS = 16384
"""Rows converted (and projected) at a time."""


@dataclass(frozen=True)
class Approx:
    """When and how strategies see a projection of the embeddings (see the module docstring).

    Attributes:
        dim: dimension of the projection.
        above_bytes: project when the pool's embeddings take more than this as float32 (``n·d·4``);
            0 forces the projection (and the large-pool k-means) on, ``None`` turns it off.
        fit_rows: rows of the seeded sample the projection is fitted on.
    """

    dim: int = PROJECTION_DIM
    above_bytes: int | None = 1 << 30
    fit_rows: int = 20000

    def applies(self, n: int, d: int) -> bool:
        return self.above_bytes is not None and d > self.dim and n * d * 4 > self.above_bytes

    @property
    def is_forced(self) -> bool:
        """Made by :meth:`forced`: every approximation on at any size, the large-pool k-means included."""
        return self.above_bytes == 0

    @classmethod
    def forced(cls, dim: int = PROJECTION_DIM) -> "Approx":
        return cls(dim=dim, above_bytes=0)


DEFAULT_APPROX = Approx()


def projection(x: np.ndarray, dim: int, fit_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``([d, dim] float32 basis, fraction of the sample's energy kept)``: top right singular vectors of
    a seeded sample of ``x``'s rows, uncentred. Cost: O(s·d² + d³) for s sampled rows."""
    n = x.shape[0]
    rows = np.arange(n) if n <= fit_rows else np.sort(rng.choice(n, fit_rows, replace=False))
    gram = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for s in range(0, rows.size, BLOCK_ROWS):
        block = np.asarray(x[rows[s : s + BLOCK_ROWS]], dtype=np.float32)
        gram += (block.T @ block).astype(np.float64)
    evals, evecs = np.linalg.eigh(gram)  # ascending
    top = evecs[:, ::-1][:, :dim]
    kept = float(evals[::-1][:dim].sum() / max(evals.sum(), 1e-30))
    return np.ascontiguousarray(top, dtype=np.float32), kept


def project(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``[n, dim + 1]`` float32: ``x @ basis`` and, last, the norm of what the basis drops
    (``sqrt(||x||² - ||x @ basis||²)``), computed by blocks of :data:`BLOCK_ROWS` rows.

    The extra column keeps every row's norm exactly, and distances stay between the projected
    ones and the true ones: ``||z - z'||² + (r - r')² <= ||x - x'||²``; a row far off the basis
    (atypical) stays far from the others.
    """
    dim = basis.shape[1]
    out = np.empty((x.shape[0], dim + 1), dtype=np.float32)
    for s in range(0, x.shape[0], BLOCK_ROWS):
        block = np.asarray(x[s : s + BLOCK_ROWS], dtype=np.float32)
        z = block @ basis
        out[s : s + len(block), :dim] = z
        rest = np.einsum("ij,ij->i", block, block) - np.einsum("ij,ij->i", z, z)
        out[s : s + len(block), dim] = np.sqrt(np.maximum(rest, 0.0))
    return out


def geometry(x: np.ndarray, approx: Approx, seed: int, projected: bool = True) -> np.ndarray:
    """The ``[n, d']`` rows strategies work on: ``x`` itself as float32 (d' = d), or when
    :meth:`Approx.applies` its projection (d' = ``approx.dim + 1``, :func:`project`), or with
    ``projected=False`` (strategies that read a bounded sample of rows, ``StrategyInfo.full_dim``) ``x``
    as stored, not copied."""
    n, d = x.shape
    if not approx.applies(n, d):
        return np.ascontiguousarray(x, dtype=np.float32)  # no copy of a float32 array (a memmap's pages stay shared)
    if not projected:
        return x
    basis, kept = projection(x, approx.dim, approx.fit_rows, np.random.default_rng([seed, 17]))
    log.info("strategies see a %d-d projection of the %s x %d embeddings (%.1f %% of the energy kept)",
             approx.dim, f"{n:,}", d, 100 * kept)
    return project(x, basis)


def check_finite(x: np.ndarray) -> bool:
    """True when every value of ``x`` is finite; checked by blocks (no ``[n, d]`` temporary)."""
    return all(bool(np.isfinite(x[s : s + BLOCK_ROWS]).all()) for s in range(0, x.shape[0], BLOCK_ROWS))
