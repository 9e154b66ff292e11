"""Near-duplicate groups (embedding cosine) and exact duplicates (file hash), and their uses.

A group is a connected component of the graph whose edges are pairs with cosine ≥ the threshold or
identical file bytes. In a project, the groups are saved in ``PROJECT/audit/duplicate_groups.json``:
``al-round`` then offers at most one member of each group per batch
(:func:`tlkit.active.duplicate_groups.one_per_group`), and
``tlkit audit PROJECT --propagate`` writes the labels a group's labeled members agree on for its
unlabeled members (:func:`propagate`), as a CSV ``path,label`` that ``al-import`` takes.

The threshold, :data:`DEFAULT_THRESHOLD`, comes from ``benchmarks/bench_audit.py``: re-encoded,
resized and 90 % cropped copies against distinct images (README, ``tlkit audit``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.core.constants import AUDIT_DUPLICATE_COSINE
from tlkit.core.io import sha256_file

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = AUDIT_DUPLICATE_COSINE
"""Cosine of efficientnet_lite0 embeddings above which two images may be near-duplicates (see the module docstring)."""
PIXEL_THRESHOLD = 0.985
EMBEDDING_ONLY_THRESHOLD = 0.97
"""Without the images (an extract folder whose images are elsewhere) the embeddings alone decide, at this
cosine or ``threshold`` if higher: a weaker test (the study's precision at 0.95 was 3-17 %)."""
"""Thumbnail correlation (:mod:`tlkit.audit.pixels`) two near-duplicates must also reach."""


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are copies of each other.

    Attributes:
        members: row indices, ascending; the first is the group's reference image.
        match: per member, ``"exact"`` (same bytes as another member) or ``"near"``; ``""`` for the first.
        cosine: per member, cosine of its embedding to the first member's.
    """

    members: tuple[int, ...]
    match: tuple[str, ...]
    cosine: tuple[float, ...]


def embedding_only_threshold(threshold: float) -> float:
    """The cosine that decides alone when no thumbnails can confirm a pair (never below
    :data:`EMBEDDING_ONLY_THRESHOLD`)."""
    return max(threshold, EMBEDDING_ONLY_THRESHOLD)


def near_pairs(xn: np.ndarray, thumbs: tuple[np.ndarray, np.ndarray] | None, *, threshold: float = DEFAULT_THRESHOLD,
               pixel_threshold: float = PIXEL_THRESHOLD, ref: np.ndarray | None = None,
               ref_thumbs: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs: thumbnails alike (:func:`tlkit.audit.pixels.alike_pairs`) and embeddings too.

    Args:
        xn: ``[n, d]`` unit-row embeddings of the queries; ``ref``: of a reference set (None: pairs within ``xn``).
        thumbs, ref_thumbs: ``(whole, centre)`` thumbnails; None: the embeddings alone decide (images absent).

    Returns:
        ``([p, 2] int64 (query, reference) pairs, [p] float32 embedding cosine, [p] float32 thumbnail
        correlation (1.0 when the embeddings alone decided))``.
    """
    from tlkit.audit.neighbours import search
    from tlkit.audit.pixels import alike_pairs

    other = xn if ref is None else ref
    if thumbs is None or (ref is not None and ref_thumbs is None):
        nb = search(xn, k=0, threshold=embedding_only_threshold(threshold), ref=ref)
        return nb.pairs, nb.cosine, np.ones(len(nb.pairs), np.float32)
    pairs, pix = alike_pairs(*thumbs, pixel_threshold, ref=ref_thumbs)
    cos = np.einsum("ij,ij->i", xn[pairs[:, 0]], other[pairs[:, 1]]) if len(pairs) else np.zeros(0, np.float32)
    keep = cos >= threshold
    return pairs[keep], cos[keep].astype(np.float32), pix[keep]


def file_hashes(files: list[Path | None]) -> list[str | None]:
    """SHA-256 of each file's bytes (None for a missing or unreadable file)."""
    out: list[str | None] = []
    for f in files:
        try:
            out.append(sha256_file(f) if f is not None else None)
        except OSError:
            out.append(None)
    return out


def hash_pairs(hashes: list[str | None]) -> np.ndarray:
    """``[p, 2]`` int64 pairs (first row with a hash, later row with the same hash)."""
    first: dict[str, int] = {}
    pairs = []
    for i, h in enumerate(hashes):
        if h is None:
            continue
        if h in first:
            pairs.append((first[h], i))
        else:
            first[h] = i
    return np.array(pairs, np.int64).reshape(-1, 2)


def build_groups(xn: np.ndarray, near: np.ndarray, exact: np.ndarray) -> list[DuplicateGroup]:
    """Connected components of the near and exact pairs (``[p, 2]`` row indices into ``xn [n, d]``).

    Returns:
        Groups of two or more members, ordered by their first member.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(xn)
    edges = np.concatenate([near.reshape(-1, 2), exact.reshape(-1, 2)])
    if not len(edges):
        return []
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    in_exact = _exact_members(exact, n)
    groups = []
    for c in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(comp == c)
        cos = xn[members] @ xn[members[0]]
        match = tuple("" if j == 0 else "exact" if in_exact[m] != -1 else "near" for j, m in enumerate(members))
        groups.append(DuplicateGroup(tuple(int(m) for m in members), match, tuple(float(v) for v in cos)))
    return sorted(groups, key=lambda g: g.members[0])


def _exact_members(exact: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` id of each row's exact-copy set (the first row of the set), -1 for rows without a copy."""
    out = np.full(n, -1, np.int64)
    for a, b in exact.reshape(-1, 2):
        out[a] = a if out[a] == -1 else out[a]
        out[b] = out[a]
    return out


def propagate(paths: list[str], labels: dict[str, str], groups: list[DuplicateGroup],
              skip_label: str = "__skip__") -> list[tuple[str, str]]:
    """``(path, label)`` for unlabeled members of groups whose labeled members agree on one class."""
    out = []
    for g in groups:
        given = {labels[paths[m]] for m in g.members if paths[m] in labels} - {skip_label}
        if len(given) == 1:
            label = given.pop()
            out.extend((paths[m], label) for m in g.members if paths[m] not in labels)
    return out
