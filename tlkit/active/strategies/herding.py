"""MaxHerding: greedy soft coverage of the pool with an RBF kernel (cold start and low budget).

Bae, Noh & Sutherland, "Generalized Coverage for More Robust Low-Budget Active Learning" (ECCV 2024).
Coverage of a row j is ``kmax_j = max k(x_j, s)`` over the labeled and already picked rows s; the
objective is the pool's mean coverage. Each pick is the candidate that raises it most:
``gain(c) = mean_j max(k(x_c, x_j) - kmax_j, 0)``. Without labels the first pick is the densest row.

The kernel is ``k(x, y) = exp(-γ ||x̂ - ŷ||²)`` on L2-normalised rows x̂, with the bandwidth set
from the data: by :func:`herding_gamma` (the global scale) for ``maxherding``, by :func:`knn_gamma`
(the local scale) for ``maxherding-entropy``, which also centres the rows first where they share one
direction less than :data:`HERDING_ENTROPY_CENTRE_BELOW` (:func:`cone`: photographs, not upscaled digits).

Labeled rows are covered by themselves (``k = 1``) and never add gain, so the mean runs over the
unlabeled candidates. No ``n x n`` matrix: above :data:`MAXHERDING_MAX_POINTS` candidates, both the
rows that compete and the rows whose coverage is measured are one seeded uniform sample of ``m``
candidates (every labeled row still counts through ``kmax``). Bounds:

* every gain is a mean of ``m`` values in [0, 1], so on a uniform sample each of the ``m`` sampled
  candidates' gains is within ``sqrt(ln(2m/δ) / (2m))`` of its value over all candidates, for all of
  them at once with probability ``1 - δ`` (Hoeffding + union bound): 0.044 for m = 3000, δ = 0.05;
* the sample misses a group holding a fraction ``q`` of the candidates with probability
  ``(1 - q)^m``: 5 % for q = 0.1 % and m = 3000.

Below those sizes nothing is sampled and the picks equal the exact greedy (a test checks this
against a brute-force n x n implementation).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from tlkit.active.strategies._common import fill_up
from tlkit.active.strategies._geometry import row_blocks, sample_rows, sq_dists, sq_norms, take_rows
from tlkit.active.strategies._registry import PoolView, Selection, register_strategy

log = logging.getLogger(__name__)

MAXHERDING_MAX_POINTS = 3000
"""Above this many candidates, picks and coverage use a seeded sample of this many (or n, if larger)."""
MAXHERDING_BANDWIDTH = 0.5
"""γ = 1 / (MAXHERDING_BANDWIDTH · median squared distance between random pairs of normalised rows).

Chosen with the simulator (``benchmarks/bench_auto.py --tune``): on normalised rows the median pair
distance sets the scale, so one value works for 64-d pixels and 1280-d embeddings alike."""
GAMMA_PAIRS = 2000
"""Random pairs whose distances set the bandwidth."""
HERDING_ENTROPY_KNN = 10
"""``maxherding-entropy``'s kernel width comes from the local scale: γ = 1 / (2 · median squared
distance of a row to its ``HERDING_ENTROPY_KNN``-th nearest neighbour), see :func:`knn_gamma`.

Chosen on tuning data only, by a rule fixed before the runs (``benchmarks/results/auto_few_bandwidth_plan.md``):
mean accuracy over 20, 30 and 50 labels (``auto``'s few-labels phase), points against the global width
(self-trained head; photos: cifar10 and clothing splits 100-102 x 2 seeds; digits splits 100-104):

==========================  ======  ========  ============  =============
kernel width                cifar10  clothing  digits-lite0  digits-pixels
==========================  ======  ========  ============  =============
global, 0.5 x median (was)   46.2     70.9       75.5          84.5
10-NN (kept)                 +1.2     +0.2       +1.0          -0.0
global, 0.25 x median        +0.9     +0.2       +0.9          -0.6
centred rows                 +2.2     +2.4       -1.2          +0.5
centred rows, 10-NN          +2.1     +2.1       -0.8          +0.5
==========================  ======  ========  ============  =============

Centring (as ``probcover`` does) gained most on photos but lost up to 2.5 points at 30-50 labels on
digits-lite0, so the rule kept the uncentred 10-NN width; centring came later, gated by the rows' shape
(:data:`HERDING_ENTROPY_CENTRE_BELOW`). Plain ``maxherding`` (``auto``'s cold start
and its multi-label few-labels phase, tuned with the global width) keeps :func:`herding_gamma`."""
KNN_WIDTH_QUERIES = 500
"""Rows whose k-th neighbour distance sets :func:`knn_gamma`."""
HERDING_ENTROPY_CENTRE_BELOW = 0.85
"""``maxherding-entropy`` centres the rows (the mean of the candidates and labeled rows subtracted) before
L2-normalising them when the candidates' :func:`cone` is below this (0: never). Raw CNN features share one
direction; centring, as ``probcover`` and ``typiclust`` do, lets the kernel see what tells rows apart, but
where nearly all of a row is that shared direction (digits upscaled for an ImageNet network) it hurt.

Chosen on tuning data only, by rules fixed before each run (``benchmarks/results/auto_few_centre_plan.md``).
Centring helped every tuning set whose cone is at most 0.83 (cifar10 0.72, clothing 0.63, photo crops 0.64,
digits-pixels 0.83) and hurt digits-lite0 (0.935) and digits-lite0-96 (0.880): a first threshold of 0.90
failed its confirmation (digits-lite0-96 -0.65 to -0.97 AUBC points). At 0.85, on fresh splits, ``auto``'s
AUBC (10-200 labels) minus today's, in points: cifar10 splits 105-106 -0.13, clothing 105-106 +1.39,
digits-pixels 105-109 -0.06 (mean +0.40; with the global width on centred rows +0.20)."""
HERDING_ENTROPY_CENTRED_KNN = 10
"""The kernel width on centred rows: 0 the global width (:func:`herding_gamma`), k > 0 :func:`knn_gamma`
(the 10-NN width, as on uncentred rows, had the higher mean in the confirmation above)."""


def normalized(X: np.ndarray) -> np.ndarray:
    """``X [m, d]`` with unit-length rows (zero rows stay zero), float32."""
    norms = np.sqrt(sq_norms(X))
    return (X / np.maximum(norms, 1e-12)[:, None]).astype(np.float32, copy=False)


def cone(X: np.ndarray) -> float:
    """How much the rows of ``X [m, d]`` share one direction: ``||mean row|| / mean ||row||`` in [0, 1]
    (1: all rows point the same way; near 0: spread around the origin). O(m·d)."""
    X = np.asarray(X, np.float32)
    norms = np.sqrt(sq_norms(X))
    mean_norm = float(norms.mean()) if norms.size else 0.0
    return float(np.linalg.norm(X.mean(0, dtype=np.float64)) / mean_norm) if mean_norm > 1e-12 else 0.0


def herding_gamma(Z: np.ndarray, rng: np.random.Generator) -> float:
    """Kernel width for normalised rows ``Z [m, d]``: see :data:`MAXHERDING_BANDWIDTH`. O(pairs·d)."""
    a, b = rng.integers(0, Z.shape[0], size=(2, GAMMA_PAIRS))
    ok = a != b
    d2 = np.einsum("ij,ij->i", Z[a[ok]] - Z[b[ok]], Z[a[ok]] - Z[b[ok]])
    med = float(np.median(d2)) if d2.size else 0.0
    return 1.0 / (MAXHERDING_BANDWIDTH * med) if med > 1e-12 else 1.0


def knn_gamma(Z: np.ndarray, k: int, rng: np.random.Generator) -> float:
    """Kernel width for normalised rows ``Z [m, d]`` from the local scale: ``1 / (2 · median d²_k)``,
    ``d_k`` the distance of a row to its ``k``-th nearest neighbour, on up to :data:`KNN_WIDTH_QUERIES`
    random rows. Falls back to :func:`herding_gamma` below ``k + 1`` rows or when that median is 0
    (duplicates). O(queries·m·d) time, O(queries·m) memory."""
    m = Z.shape[0]
    if m <= k:
        return herding_gamma(Z, rng)
    q = rng.choice(m, min(KNN_WIDTH_QUERIES, m), replace=False)
    d2 = sq_dists(Z[q], Z)
    med = float(np.median(np.partition(d2, k, axis=1)[:, k]))
    return 1.0 / (2.0 * med) if med > 1e-12 else herding_gamma(Z, rng)


def rbf(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """``[a, b]`` float32 ``exp(-γ ||a - b||²)``, computed in row blocks."""
    out = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
    b2 = sq_norms(B)
    for blk in row_blocks(A.shape[0], B.shape[0]):
        D = sq_dists(A[blk], B, None, b2)
        D *= -gamma
        out[blk] = np.exp(D, out=D)
    return out


def initial_coverage(Z_ref: np.ndarray, Z_lab: np.ndarray, gamma: float) -> np.ndarray:
    """``[r]`` float32 coverage of each reference row by the labeled rows (0 without labels).

    Cost: O(r·l·d) time, O(CHUNK) memory (labeled rows in blocks)."""
    kmax = np.zeros(Z_ref.shape[0], dtype=np.float32)
    for blk in row_blocks(Z_lab.shape[0], Z_ref.shape[0]):
        np.maximum(kmax, rbf(Z_lab[blk], Z_ref, gamma).max(axis=0), out=kmax)
    return kmax


def herding_greedy(K: np.ndarray, kmax: np.ndarray, n: int, tie: np.ndarray,
                   weights: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """Greedy coverage over a kernel block.

    Args:
        K: ``[m, r]`` kernel between the m candidates and the r reference rows.
        kmax: ``[r]`` current coverage (updated in place).
        n: picks; tie: ``[m]`` tie-break order (a seeded permutation).
        weights: ``[r]`` weight of each reference row's coverage (None: all 1).

    Returns:
        (candidate positions, gain at pick time). Gains are updated incrementally: a pick changes
        only the rows it covers better, so a step costs O(m·|changed rows|), not O(m·r).
    """
    r = K.shape[1]
    w = np.ones(r, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    gain = np.zeros(K.shape[0])
    for blk in row_blocks(K.shape[0], r):
        gain[blk] = (np.maximum(K[blk] - kmax[None, :], 0) @ w).astype(np.float64)
    picked, scores = [], []
    available = np.ones(K.shape[0], dtype=bool)
    for _ in range(n):
        key = np.where(available, gain, -np.inf)
        best = key.max()
        if not np.isfinite(best):
            break
        j = int(np.flatnonzero(key == best)[np.argmin(tie[key == best])])
        picked.append(j)
        scores.append(float(gain[j]) / r)
        available[j] = False
        changed = np.flatnonzero(K[j] > kmax)
        if changed.size:
            old, new = kmax[changed], K[j, changed]
            for blk in row_blocks(K.shape[0], changed.size):
                Kc = K[blk][:, changed]
                gain[blk] -= ((np.maximum(Kc - old, 0) - np.maximum(Kc - new, 0)) @ w[changed]).astype(np.float64)
            kmax[changed] = new
    return picked, scores


@register_strategy(
    "maxherding",
    description="greedy soft (RBF kernel) coverage of the pool given the labeled rows (MaxHerding; cold start)",
    needs=("embeddings",),
    full_dim=True,
)
def maxherding(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """MaxHerding (see the module docstring). Score = mean coverage gained by the pick.

    Cost: O((m + l)·m·d) for the kernels plus O(m²) per pick at most, with m ≤
    :data:`MAXHERDING_MAX_POINTS` sampled candidates and l labeled rows; memory O(m² + m·d)
    (36 MB for the kernel block at the default), never O(n²).
    """
    return _herd(pool, n, rng, "maxherding")


def _herd(pool: PoolView, n: int, rng: np.random.Generator, why: str,
          weights: Callable[[np.ndarray], np.ndarray] | None = None, knn: int = 0,
          centre_below: float = 0.0, centred_knn: int = 0) -> Selection:
    """Greedy coverage of the (sampled) candidates; ``weights(cand)`` gives each candidate row's
    coverage weight ``[m]`` (None: 1 each); ``knn`` > 0: the kernel width from :func:`knn_gamma`.
    Candidates whose :func:`cone` is below ``centre_below`` are centred first (with the labeled rows), and
    the width is then ``centred_knn``'s (0: :func:`herding_gamma`)."""
    cand_all = pool.candidate_indices
    cand = cand_all[sample_rows(cand_all.size, max(MAXHERDING_MAX_POINTS, n), rng)]
    if cand.size < cand_all.size:
        log.info("%s: a sample of %d of %d candidates", why, cand.size, cand_all.size)
    C = np.asarray(take_rows(pool.embeddings, cand), np.float32)
    L = np.asarray(take_rows(pool.embeddings, pool.labeled_indices), np.float32)
    shape = cone(C) if centre_below > 0 else 1.0
    if shape < centre_below:
        log.info("%s: rows centred (cone %.2f < %.2f)", why, shape, centre_below)
        mu = (C.sum(0, dtype=np.float64) + L.sum(0, dtype=np.float64)) / max(len(C) + len(L), 1)
        C, L, knn = C - mu.astype(np.float32), L - mu.astype(np.float32), centred_knn
    Z = normalized(C)
    gamma = knn_gamma(Z, knn, rng) if knn else herding_gamma(Z, rng)
    kmax = initial_coverage(Z, normalized(L), gamma)
    w = weights(cand) if weights is not None else None
    picked, scores = herding_greedy(rbf(Z, Z, gamma), kmax, n, rng.permutation(cand.size), w)
    return fill_up(cand[np.asarray(picked, dtype=np.int64)], scores, pool, n, rng, why=why)


HERDING_WEIGHT_POWER = 1.0
"""``maxherding-entropy`` weights by ``(H / log k) ** HERDING_WEIGHT_POWER``: above 1, coverage leans
towards the most uncertain rows. Measured with ``tune_auto.py --wide`` (tuning data only;
``benchmarks/results/tune_auto_wide_power.txt``), AUBC pixels / lite0 / lite0-96 / photos: power 1
0.899 / 0.844 / 0.800 / 0.929, power 2 0.897 / 0.842 / 0.798 / 0.928, power 4 0.889 / 0.837 / 0.791
/ 0.917; as ``auto``'s phase from 10 labels per class, power 4 gave 0.896 / 0.845 / 0.799 / 0.929
against ``auto``'s 0.900 / 0.844 / 0.800 / 0.930. So 1 is kept."""
HERDING_WEIGHT_FLOOR = 1e-6
"""``maxherding-entropy``: a row's coverage counts ``H / log k + HERDING_WEIGHT_FLOOR`` times, ``H``
its predictive entropy (the floor keeps confident rows from counting exactly 0).

Tuned with ``benchmarks/tune_auto.py`` on data the README does not report (digits pixels and digits
efficientnet_lite0 at 224 px, splits 100-104, one seed each; photo crops, crop seed 13, 5 seeds), in
the family ``1 + β·H / log k``; AUBC over 10-200 labels:

====================================  ======  =====  ======
weights                               pixels  lite0  photos
====================================  ======  =====  ======
1 (plain ``maxherding``)              0.887   0.816  0.915
1 + H / log k                         0.892   0.835  0.925
1 + 4 H / log k                       0.896   0.847  0.929
H / log k (β → ∞, kept)               0.897   0.847  0.930
``clue``                              0.883   0.822  0.893
scikit-activeml Clue                  0.882   0.822  0.902
====================================  ======  =====  ======
"""


@register_strategy(
    "maxherding-entropy",
    description="MaxHerding coverage of the uncertain part of the pool: each row weighted by its predictive entropy",
    needs=("embeddings",),
    full_dim=True,
)
def maxherding_entropy(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """:func:`maxherding` whose gains weight each candidate row's coverage by its normalised predictive
    entropy (:data:`HERDING_WEIGHT_FLOOR`): coverage where the model is unsure, as CLUE weights k-means
    by entropy. Without a model (``probs`` None, or one class) it is plain MaxHerding. Same cost and
    sampling bound as :func:`maxherding`. On a multi-label pool the weight is the mean binary entropy
    over the classes / log 2 (:func:`~tlkit.active.strategies.uncertainty.uncertainty_weight`).
    """
    return _herd(pool, n, rng, "maxherding-entropy", entropy_weights(pool), knn=HERDING_ENTROPY_KNN,
                 centre_below=HERDING_ENTROPY_CENTRE_BELOW, centred_knn=HERDING_ENTROPY_CENTRED_KNN)


def entropy_weights(pool: PoolView) -> Callable[[np.ndarray], np.ndarray] | None:
    """``maxherding-entropy``'s coverage weights ``cand -> [m]`` (normalised uncertainty ** power + floor), or
    None (plain coverage) without a model: ``probs`` None, or a single-label pool with one class."""
    if pool.probs is None or (pool.probs.shape[1] < 2 and not pool.multilabel):
        return None
    from tlkit.active.strategies.uncertainty import uncertainty_weight

    return lambda cand: uncertainty_weight(pool, cand) ** HERDING_WEIGHT_POWER + HERDING_WEIGHT_FLOOR
