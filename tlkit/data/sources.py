"""Find images: a class-folder tree, a flat folder, or a CSV manifest -> :class:`ImageSource`.

In folders, files and folders whose name starts with ``.`` (and ``__MACOSX`` folders) are ignored,
extensions are matched case-insensitively, and records are sorted by ``rel``. Symlinked folders
are followed, each real folder once. Manifests keep their row order.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.io import not_utf8_message

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
#: Folder names skipped while scanning (besides hidden ones): macOS zip debris.
IGNORED_FOLDERS: frozenset[str] = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class ImageRecord:
    """One image file.

    Attributes:
        path: absolute path of the file.
        rel: POSIX path relative to the source root: the stable id of the image.
        label: class name, ``None`` when unknown.
    """

    path: Path
    rel: str
    label: str | None


@dataclass(frozen=True)
class ImageSource:
    """The images found by :func:`scan_images`.

    Attributes:
        root: folder the ``rel`` paths are relative to (the CSV's folder for a manifest).
        kind: ``"folders"`` (class tree), ``"flat"`` (unlabeled pool) or ``"manifest"``.
        records: deterministic order (sorted by ``rel`` for folders, file order for manifests).
        classes: sorted class names, empty class folders included; ``()`` when unlabeled.
        empty_classes: class folders that contain no image (a subset of ``classes``).
    """

    root: Path
    kind: str
    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]
    empty_classes: tuple[str, ...] = ()

    @property
    def class_to_idx(self) -> dict[str, int]:
        """``{class name: index}`` in ``classes`` order."""
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.records)


def scan_images(source: str | os.PathLike, *, labeled: bool | None = None) -> ImageSource:
    """Find the images of a folder or a CSV manifest.

    Args:
        source: a folder, or a ``.csv`` manifest with a header row ``path[,label]`` (paths relative
            to the CSV's folder; absolute paths must lie inside it; an empty label means unknown).
        labeled: ``None`` detects: a folder whose images all sit in subfolders is a class tree
            (label = first-level folder name), any other folder is an unlabeled pool (images at
            its root make the whole folder unlabeled). ``False``: every label is ``None``.
            ``True``: the folder must be a class tree (images at its root are an error) and every
            manifest row must have a label.

    Raises:
        TlkitError: the source does not exist, holds no image, or a manifest row is invalid.

    Example:
        >>> src = scan_images("data/train")          # doctest: +SKIP
        >>> src.kind, src.classes, src.records[0].rel  # doctest: +SKIP
        ('folders', ('cat', 'dog'), 'cat/001.jpg')
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise TlkitError(f"image source {str(source)!r} does not exist; "
                         "pass a folder of images or a .csv manifest")
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise TlkitError(f"image source {str(source)!r} is a file, not a folder or a .csv "
                             "manifest; pass the folder that holds the images")
        src = _scan_manifest(path, labeled)
    else:
        src = _scan_folder(path, labeled)
    log.info("%s: %d images (%s, %d classes%s)", path, len(src.records), src.kind,
             len(src.classes), f", {len(src.empty_classes)} empty" if src.empty_classes else "")
    return src


def _walk_images(root: Path) -> list[str]:
    """Sorted POSIX rel paths of the images under ``root``, recursive, hidden entries skipped."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                log.warning("%s: already scanned through another symlink; skipped", folder)
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as e:
            log.warning("cannot list folder %s (%s); its images are skipped", folder, e.strerror)
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in IGNORED_FOLDERS:
                continue
            try:
                if entry.is_dir():
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file() and _is_image_name(entry.name):
                    found.append(prefix + entry.name)
            except OSError:  # broken symlink, permission problem
                log.warning("cannot stat %s; skipped", entry.path)
    return sorted(found)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan_folder(root: Path, labeled: bool | None) -> ImageSource:
    rels = _walk_images(root)
    if not rels:
        raise TlkitError(f"no images found in {root} (looked recursively for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}; hidden files are ignored)")
    at_root = [r for r in rels if "/" not in r]
    if at_root and labeled:
        raise TlkitError(
            f"{root} is not a class tree: {len(at_root)} images sit directly in it (e.g. "
            f"{at_root[0]!r}); move them into a class folder, or use the folder as an unlabeled "
            "pool (labeled=False)")
    if labeled is False or at_root:
        if labeled is None and len(at_root) < len(rels):
            log.warning("%s: %d images at the root and %d in subfolders: treated as an unlabeled "
                        "pool (all labels None); move every image into a class folder to use "
                        "labels",
                        root, len(at_root), len(rels) - len(at_root))
        records = tuple(ImageRecord(root / r, r, None) for r in rels)
        return ImageSource(root, "flat", records, ())
    records = tuple(ImageRecord(root / r, r, r.split("/", 1)[0]) for r in rels)
    labels = {rec.label for rec in records}
    folders = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
               and e.name not in IGNORED_FOLDERS}
    classes = tuple(sorted(labels | folders))
    if labeled is None:
        log.info("%s: class tree with %d classes; pass labeled=False to treat it as an unlabeled "
                 "pool", root, len(classes))
    return ImageSource(root, "folders", records, classes,
                       tuple(c for c in classes if c not in labels))


def _scan_manifest(csv_path: Path, labeled: bool | None) -> ImageSource:
    root = csv_path.parent
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            ip, il = _manifest_columns(csv_path, header, labeled)
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                where = f"manifest {csv_path}, line {line}"
                raw = row[ip].strip() if ip < len(row) else ""
                rel = _manifest_rel(root, raw, where)
                if rel in first_line:
                    raise TlkitError(f"{where}: {raw!r} is already listed on line "
                                     f"{first_line[rel]}; list each image once")
                first_line[rel] = line
                label = (row[il].strip() if il is not None and il < len(row) else "") or None
                if labeled and label is None:
                    raise TlkitError(f"{where}: {raw!r} has no label; label every row or do not "
                                     "require labels")
                records.append(ImageRecord(root / rel, rel, None if labeled is False else label))
    except UnicodeDecodeError as e:
        raise TlkitError(f"manifest {not_utf8_message(csv_path, e)}") from None
    except (OSError, csv.Error) as e:
        raise TlkitError(f"cannot read manifest {csv_path}: {e}; it must be a UTF-8 CSV file "
                         "with a header row path[,label]") from None
    if not records:
        raise TlkitError(f"manifest {csv_path} lists no images; add rows below the header")
    classes = tuple(sorted({r.label for r in records if r.label is not None}))
    return ImageSource(root, "manifest", tuple(records), classes)


def _manifest_columns(csv_path: Path, header: list[str] | None,
                      labeled: bool | None) -> tuple[int, int | None]:
    """Indices of the ``path`` and ``label`` columns (case-insensitive)."""
    if not header:
        raise TlkitError(f"manifest {csv_path} is empty; its first row must be a header "
                         "path[,label]")
    cols = [h.strip().lower() for h in header]
    if "path" not in cols:
        found = ", ".join(repr(h) for h in header)
        raise TlkitError(f"manifest {csv_path} has no 'path' column (found columns: {found}); "
                         "its first row must be a header such as path,label")
    if labeled and "label" not in cols:
        raise TlkitError(f"manifest {csv_path} has no 'label' column but labels are required; "
                         "add a label column")
    return cols.index("path"), (cols.index("label") if "label" in cols else None)


def _manifest_rel(root: Path, raw: str, where: str) -> str:
    """Validate one manifest path; return it as a POSIX path relative to ``root``."""
    if not raw:
        raise TlkitError(f"{where}: empty path; every row needs a path")
    full = Path(os.path.normpath(root / raw))  # lexical: '..' cannot escape through the check
    rel = None
    for base in (root, Path(os.path.normpath(os.path.abspath(root)))):
        try:
            rel = full.relative_to(base)
            break
        except ValueError:
            continue
    if rel is None or rel == Path("."):
        raise TlkitError(f"{where}: path {raw!r} is outside the manifest's folder {root}; "
                         "paths must be relative to the CSV's folder and stay inside it")
    if not full.is_file():
        what = "is not a file" if full.exists() else "does not exist"
        raise TlkitError(f"{where}: path {raw!r} {what} ({full}); fix the path or drop the row")
    return rel.as_posix()


IMBALANCE_RATIO = 10


@dataclass(frozen=True)
class Imbalance:
    """The largest and the smallest class of a labeled set whose sizes differ by more than a ratio."""

    largest: str
    largest_count: int
    smallest: str
    smallest_count: int

    @property
    def ratio(self) -> float:
        return self.largest_count / self.smallest_count

    def describe(self) -> str:
        """``'0' has 22 images, '1' only 2 (11x)``."""
        return (f"{self.largest!r} has {self.largest_count} images, {self.smallest!r} only "
                f"{self.smallest_count} ({self.ratio:.0f}x)")


def class_imbalance(counts: dict[str, int], *, ratio: float = IMBALANCE_RATIO) -> Imbalance | None:
    """The extremes of ``counts`` (images per class) when the largest class has more than ``ratio`` times
    the images of the smallest non-empty one, else ``None``.

    Example:
        >>> class_imbalance({"cat": 22, "dog": 2}).describe()
        "'cat' has 22 images, 'dog' only 2 (11x)"
    """
    present = {k: v for k, v in counts.items() if v > 0}
    if len(present) < 2:
        return None
    big = max(present, key=lambda k: (present[k], k))
    small = min(present, key=lambda k: (present[k], k))
    if present[big] <= ratio * present[small]:
        return None
    return Imbalance(big, present[big], small, present[small])
