"""What an audit looks at: a project's pool, a labeled folder, or a ``tlkit extract`` folder, as arrays."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSet:
    """Images with embeddings and (optional) labels.

    Attributes:
        name: for messages (the folder or project).
        root: the folder ``paths`` are relative to (None when the images are not on this machine).
        paths: ``[n]`` image paths (POSIX, relative to ``root``).
        labels: ``[n]`` label per image; None when unlabeled (and for ``__skip__`` in a project).
            Multi-label: the image's set of classes as text (``cat;dog``; ``""`` = no class present).
        embeddings: ``[n, d]`` float32.
        multilabel: the labels are sets (a multi-label project).
        classes: the project's classes (multi-label: the columns of the label sets); () when unknown.
    """

    name: str
    root: Path | None
    paths: list[str]
    labels: list[str | None]
    embeddings: np.ndarray
    multilabel: bool = False
    classes: tuple[str, ...] = ()

    def file(self, i: int) -> Path | None:
        """The image file of row ``i`` (None when it is not on disk)."""
        if self.root is None:
            return None
        f = self.root / self.paths[i]
        return f if f.is_file() else None


@dataclass(frozen=True)
class Embedder:
    """How image folders are embedded: backbone, weights, size (a project's own settings, or the CLI's)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    image_size: int | None = None
    device: str = "auto"


def from_project(project, *, device: str = "auto", progress: Callable[[int], None] | None = None) -> AuditSet:
    """The project's whole pool (embeddings from its cache) with its labels (``__skip__`` -> None)."""
    from tlkit.active.labeltext import SKIP_LABEL
    from tlkit.active.round import embeddings_for

    paths, emb = embeddings_for(project, device=device, progress=progress)
    emb = np.array(emb, dtype=np.float32)  # the cache's memmap (float32 or float16), as a float32 copy
    labels = project.labels()
    return AuditSet(str(project.root), project.pool_root, paths,
                    [None if labels.get(p) in (None, SKIP_LABEL) else labels[p] for p in paths], emb,
                    project.multilabel, tuple(project.config.classes))


def from_folder(source: str | Path, cache: Path, embedder: Embedder, *, option: str = "--data",
                progress: Callable[[int], None] | None = None) -> AuditSet:
    """A labeled or unlabeled image folder / manifest (embedded into ``cache``, resumable and reused),
    or a ``tlkit extract`` output folder used as it is."""
    from tlkit.features.extract import extract_features, load_features

    source = Path(source)
    if not source.exists():
        raise TlkitError(f"{option} {source} does not exist; give an image folder, a CSV manifest or a "
                         "`tlkit extract` output folder")
    folder = source
    if not (source / "features.npy").is_file():
        extract_features(source, cache, backbone=embedder.backbone, weights=embedder.weights,
                         image_size=embedder.image_size, device=embedder.device, progress=progress)
        folder = cache
    feats, index, meta = load_features(folder, mmap=False)
    root = Path(meta.get("source", {}).get("root", "")) if meta.get("source") else None
    if root is not None and not root.is_dir():
        log.warning("the images of %s are not at %s: no file hashes or contact sheets", source, root)
        root = None
    return AuditSet(str(source), root, [r["path"] for r in index], [r.get("label") or None for r in index],
                    np.ascontiguousarray(feats, dtype=np.float32))
