"""The project's pool: one entry per real image file, growing between rounds.

``pool.csv`` lists every pool image once (``id,path``, path relative to the pool root). A file
reached twice (a symlink and its target, or two links to one file) is one entry: the first path in
sorted order, so two entries can never receive contradictory labels. Labeling teams add images
between rounds: :func:`add_images` appends the new ones (ids continue), and the next round embeds
only them (the embedding cache reuses every unchanged row). Images deleted from disk stay in
``pool.csv`` (their labels stay valid) and are left out of rounds with a warning.

Only files inside the pool folder join the pool (:func:`tlkit.active.poolpath.pool_relpath`): a
symlink in the pool folder whose target lies outside it is left out and reported, at ``al-init``,
``al-add`` and ``tlkit serve --add-new`` alike.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tlkit.active.poolpath import UniqueFiles, pool_file, unique_files
from tlkit.active.project import Project
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, write_csv
from tlkit.data import ImageRecord, scan_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolUpdate:
    """What :func:`add_images` changed.

    Attributes:
        added: new pool paths, in the order they were appended.
        known: images of the source that were already in the pool.
        duplicates: files left out because they are another pool file (symlinks).
        missing: pool entries whose file is gone from disk (kept in pool.csv).
        total: pool size afterwards.
        outside: files left out because they are links to files outside the pool folder.
    """

    added: list[str]
    known: int
    duplicates: list[str]
    missing: list[str]
    total: int
    outside: list[str]


def _prefix(folder: Path, pool_root: Path) -> str:
    """``folder``'s path inside the pool folder ("" for the pool folder itself)."""
    try:
        rel = Path(os.path.realpath(folder)).relative_to(os.path.realpath(pool_root)).as_posix()
    except ValueError:
        raise TlkitError(f"{folder} is outside the pool folder {pool_root}; copy or move new images under the pool "
                         "folder first, then run `tlkit al-add` again") from None
    return "" if rel == "." else rel


def add_images(project_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> PoolUpdate:
    """Add new images to the pool: those under ``source`` (a folder or CSV manifest inside the pool
    folder), or, without ``source``, every image under the pool folder not yet in the pool."""
    project = Project.open(project_dir)
    with project.lock("al-add"):
        pool_root = project.pool_root
        if not pool_root.is_dir():
            raise TlkitError(f"pool folder {pool_root} is gone; restore it (project.yaml: pool_root)")
        scanned = scan_images(source if source is not None else pool_root, labeled=False)
        existing, found = _append(project, scanned.records, _prefix(scanned.root, pool_root))
        missing = [p for p in existing if not (pool_root / p).exists()]
        if missing:
            log.warning("%d pool images are gone from disk (e.g. %s); rounds leave them out", len(missing), missing[0])
        known = len(scanned.records) - len(found.paths) - len(found.duplicates) - len(found.outside)
        log.info("added %d images to the pool (%d already there)", len(found.paths), known)
        return PoolUpdate(found.paths, known, found.duplicates, missing, len(existing) + len(found.paths),
                          found.outside)


def add_paths(project: Project, paths: Sequence[str], *, what: str = "tlkit serve") -> list[str]:
    """Add these images (files inside the pool folder, named relative to it) to the pool; returns the new ones.

    Paths that name nothing inside the pool folder (:func:`~tlkit.active.poolpath.pool_file`) are ignored.
    """
    with project.lock(what):
        rels = (pool_file(project.pool_root, p) for p in paths)
        records = [ImageRecord(project.pool_root / p, p, None) for p in dict.fromkeys(rels) if p is not None]
        return _append(project, records, "")[1].paths


def _append(project: Project, records: Sequence[ImageRecord], prefix: str) -> tuple[list[str], UniqueFiles]:
    """Append the records that are new to pool.csv (ids continue; one entry per real file); hold the lock.

    Returns:
        (pool paths before, what was added and left out).
    """
    rows = read_csv(project.pool_csv)
    existing = [r["path"] for r in rows]
    known = set(existing)
    seen = {os.path.realpath(project.pool_root / p): p for p in existing}
    fresh = [r for r in records if posixpath.normpath(posixpath.join(prefix, r.rel)) not in known]
    found = unique_files(fresh, project.pool_root, prefix, seen)
    if found.paths:
        next_id = max((int(r["id"]) for r in rows), default=-1) + 1
        write_csv(project.pool_csv, ["id", "path"],
                  [(r["id"], r["path"]) for r in rows] + [(next_id + i, p) for i, p in enumerate(found.paths)])
    return existing, found
