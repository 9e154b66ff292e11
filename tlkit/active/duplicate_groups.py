"""A project's duplicate groups: the file ``tlkit audit`` writes and ``al-round`` reads.

``PROJECT/audit/duplicate_groups.json`` holds ``{"threshold": cosine, "groups": [[pool path, ...], ...]}``
(:mod:`tlkit.audit.duplicates` finds the groups). A round offers at most one member of each group per
batch (:func:`one_per_group`), so a labeler never sees two copies of one image in a batch. Part of the
project folder, so below both the rounds and the audit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tlkit.core.io import read_json, write_json

log = logging.getLogger(__name__)

GROUPS_FILE = Path("audit") / "duplicate_groups.json"
"""Where a project keeps its duplicate groups, relative to the project folder."""


def save_project_groups(project_root: Path, groups: list[list[str]], threshold: float) -> Path:
    """Write the groups (lists of pool paths) where ``al-round`` reads them; returns the file."""
    path = Path(project_root) / GROUPS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"threshold": threshold, "groups": [list(g) for g in groups]})
    return path


def read_project_groups(project_root: Path) -> list[list[str]]:
    """The duplicate groups an audit saved in the project ([] when it has not been audited)."""
    path = Path(project_root) / GROUPS_FILE
    if not path.is_file():
        return []
    try:
        return [list(map(str, g)) for g in read_json(path)["groups"]]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; rounds ignore duplicate groups until `tlkit audit` rewrites it", path)
        return []


def one_per_group(paths: list[str], candidates: np.ndarray, groups: list[list[str]]) -> np.ndarray:
    """``candidates [n] bool`` with at most one candidate per duplicate group (its first in pool order).

    So a batch never holds two copies of one image; the others stay candidates for later rounds.
    """
    row = {p: i for i, p in enumerate(paths)}
    out = candidates.copy()
    for g in groups:
        rows = sorted(row[p] for p in g if p in row and out[row[p]])
        out[rows[1:]] = False
    return out


__all__ = ["GROUPS_FILE", "one_per_group", "read_project_groups", "save_project_groups"]
