"""The one answer to "is this a file of the pool?", for every path someone else named.

A project's pool is the set of files inside its pool folder. Paths reach tlkit from people and
programs it does not control: ``tlkit_path`` and image URLs in Label Studio tasks, webhooks and
exports, rows of label files, new images found by ``al-add`` or ``tlkit serve --add-new``. Every
one of them goes through :func:`pool_relpath` before it is used, so that no entry point can be
talked into opening, embedding or recording a file outside the pool folder:

- a relative path may not climb (``..`` as a component is refused, not normalised away);
- an absolute path must lie inside the pool folder (it is then made relative);
- the real location, with every symlink followed, must lie inside the pool folder too, so a link
  in the pool that points elsewhere is not a pool file;
- a non-string, an empty string, a NUL byte or the pool folder itself names nothing.

Any other character is allowed: file names with spaces at either end, newlines, U+2028 or control
characters are real pool files and keep their exact names.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tlkit.data import ImageRecord

log = logging.getLogger(__name__)


def pool_relpath(pool_root: str | os.PathLike, path: object) -> str | None:
    """The pool path (POSIX, relative to ``pool_root``) that ``path`` names, or None when it names
    nothing inside the pool folder (see the module docstring). The file need not exist.

    Example:
        >>> pool_relpath("/data/pool", "cats/1.jpg")      # doctest: +SKIP
        'cats/1.jpg'
        >>> pool_relpath("/data/pool", "../etc/passwd") is None
        True
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        return None
    if os.path.isabs(path):
        lexical = os.path.normpath(path)
        rel = _inside(lexical, os.path.normpath(os.path.abspath(pool_root)))
        if rel is None:
            rel = _inside(os.path.realpath(lexical), os.path.realpath(pool_root))
        if rel is None:
            return None
    else:
        if ".." in path.split("/"):
            return None
        rel = posixpath.normpath(path)
    if rel in (".", "") or rel.startswith("/"):
        return None
    real_root = os.path.realpath(pool_root)
    return rel if real_inside(os.path.realpath(os.path.join(real_root, rel)), real_root) else None


def pool_file(pool_root: str | os.PathLike, path: object) -> str | None:
    """Like :func:`pool_relpath`, and the file exists (a regular file, links followed)."""
    rel = pool_relpath(pool_root, path)
    return rel if rel is not None and os.path.isfile(os.path.join(pool_root, rel)) else None


def real_inside(real_path: str, real_root: str) -> bool:
    """Whether ``real_path`` lies inside ``real_root`` (both already ``os.path.realpath``-ed, so a
    scan of many files resolves the pool folder once)."""
    return _inside(real_path, real_root) not in (None, ".")


def _inside(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` (POSIX), or None when it is not under it; both absolute, normalised."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    return rel.as_posix()


@dataclass(frozen=True)
class UniqueFiles:
    """Pool paths of scanned records, one per real file inside the pool folder, and what was left out."""

    paths: list[str]
    duplicates: list[str]  # "rel (same file as other)"
    outside: list[str]  # links whose target lies outside the pool folder


def unique_files(records: Sequence[ImageRecord], pool_root: Path, prefix: str = "",
                 seen: dict[str, str] | None = None) -> UniqueFiles:
    """Pool paths (``prefix`` + ``rel``) of ``records``, one per real file inside ``pool_root``.

    ``seen`` maps real paths already in the pool to their pool path (updated in place).
    """
    seen = {} if seen is None else seen
    paths, duplicates, outside = [], [], []
    real_root = os.path.realpath(pool_root)
    for r in sorted(records, key=lambda r: r.rel):
        rel = posixpath.normpath(posixpath.join(prefix, r.rel))
        real = os.path.realpath(r.path)
        if not real_inside(real, real_root):
            outside.append(rel)
            continue
        if real in seen:
            if seen[real] != rel:
                duplicates.append(f"{rel} (same file as {seen[real]})")
            continue
        seen[real] = rel
        paths.append(rel)
    if outside:
        log.warning("%d files are links to files outside the pool folder and were left out: %s", len(outside),
                    ", ".join(outside[:3]))
    return UniqueFiles(paths, duplicates, outside)
