"""Outliers: images far from everything else in embedding space ("none of these classes").

An image's score is its mean distance to its :data:`K` nearest neighbours (unit-row embeddings, in the
search projection of :mod:`tlkit.audit.neighbours`). An image is an outlier when its robust z-score,
``(score − median) / (1.4826 · MAD)``, exceeds :data:`Z_THRESHOLD` (the Iglewicz–Hoaglin rule).
Copies are not neighbours of each other here, so two copies of one stray image still stand out.
"""

from __future__ import annotations

import numpy as np

K = 5
Z_THRESHOLD = 3.5


def knn_scores(index: np.ndarray, dist: np.ndarray, group_of: np.ndarray | None = None) -> np.ndarray:
    """``[n]`` mean distance to the nearest neighbours that are not in the row's own duplicate group.

    Args:
        index, dist: ``[n, k']`` neighbours from :func:`tlkit.audit.neighbours.search` (k' ≥ K).
        group_of: ``[n]`` duplicate group id of each row (-1: none).
    """
    raw = dist.astype(np.float64)
    d = raw.copy()
    if group_of is not None:
        same = (group_of[:, None] >= 0) & (group_of[np.maximum(index, 0)] == group_of[:, None])
        d[same] = np.nan
    d[index < 0] = np.nan
    out = np.empty(len(d))
    for i, row in enumerate(d):
        row = row[~np.isnan(row)][:K]
        out[i] = row.mean() if len(row) else raw[i, :K][index[i, :K] >= 0].mean() if (index[i] >= 0).any() else 0.0
    return out.astype(np.float32)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """``[n]`` robust z-scores (median / MAD)."""
    med = np.median(scores)
    mad = np.median(np.abs(scores - med)) * 1.4826
    return (scores - med) / max(mad, 1e-9)


def flag(scores: np.ndarray, z: float = Z_THRESHOLD) -> np.ndarray:
    """Rows whose robust z-score exceeds ``z``, most outlying first."""
    rz = robust_z(scores)
    rows = np.flatnonzero(rz > z)
    return rows[np.argsort(-scores[rows], kind="stable")]
