"""Find images: a class-folder tree, a flat folder, or a CSV manifest -> :class:`ImageSource`.

In folders, files and folders whose name starts with ``.`` (and ``__MACOSX`` folders) are ignored,
extensions are matched case-insensitively, and records are sorted by ``rel``. Symlinked folders
are followed, each real folder once. Manifests keep their row order.

Multi-label data (issue #30) is a manifest whose label cell holds a set of labels joined by a delimiter
(``;`` by default): ``path,labels`` with ``a;b``, or an empty cell for an image with no label (all
negative). Its records carry ``labels`` (a sorted tuple) and ``label=None``; its source has
``task="multilabel"``. Single-label sources are unchanged (``task="single"``, ``labels=None``).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tlkit.core.constants import LABEL_DELIM as _LABEL_DELIM
from tlkit.core.constants import TASKS as _TASK_NAMES
from tlkit.core.errors import TlkitError
from tlkit.core.io import not_utf8_message

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
        label: class name, ``None`` when unknown (and for every multi-label record).
        labels: multi-label records only: the image's labels, sorted, ``()`` for an image with none
            (all negative); ``None`` for single-label records and for unknown labels.
    """

    path: Path
    rel: str
    label: str | None
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ImageSource:
    """The images found by :func:`scan_images`.

    Attributes:
        root: folder the ``rel`` paths are relative to (the CSV's folder for a manifest).
        kind: ``"folders"`` (class tree), ``"flat"`` (unlabeled pool) or ``"manifest"``.
        records: deterministic order (sorted by ``rel`` for folders, file order for manifests).
        classes: sorted class names, empty class folders included; ``()`` when unlabeled.
        empty_classes: class folders that contain no image (a subset of ``classes``).
        task: ``"single"`` (one label per image) or ``"multilabel"`` (a set of labels per image,
            in ``ImageRecord.labels``).
    """

    root: Path
    kind: str
    records: tuple[ImageRecord, ...]
    classes: tuple[str, ...]
    empty_classes: tuple[str, ...] = ()
    task: str = "single"

    @property
    def class_to_idx(self) -> dict[str, int]:
        """``{class name: index}`` in ``classes`` order."""
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.records)


#: ``task`` values of :func:`scan_images`: ``auto`` detects, the others (:data:`tlkit.core.constants.TASKS`,
#: the names projects use too) force one.
TASKS: tuple[str, ...] = ("auto", *_TASK_NAMES)
#: The default delimiter between the labels of one manifest cell (``--label-delim``): ``;`` is not the CSV
#: separator and rarely part of a class name.
DEFAULT_LABEL_DELIM = _LABEL_DELIM


def check_label_delim(delim: str) -> str:
    """``delim`` when it can separate labels inside one CSV cell, else a one-line TlkitError."""
    if not delim or delim != delim.strip() or delim in (",", '"') or "\n" in delim:
        raise TlkitError(f"--label-delim {delim!r}: the labels of one cell need a visible separator other than the "
                         "CSV's comma or quote, e.g. ';' (the default) or '|'")
    return delim


def scan_images(source: str | os.PathLike, *, labeled: bool | None = None, task: str = "auto",
                label_delim: str = DEFAULT_LABEL_DELIM) -> ImageSource:
    """Find the images of a folder or a CSV manifest.

    Args:
        source: a folder, or a ``.csv`` manifest with a header row ``path[,label]`` (paths relative
            to the CSV's folder; absolute paths must lie inside it; an empty label means unknown).
        labeled: ``None`` detects: a folder whose images all sit in subfolders is a class tree
            (label = first-level folder name), any other folder is an unlabeled pool (images at
            its root make the whole folder unlabeled). ``False``: every label is ``None``.
            ``True``: the folder must be a class tree (images at its root are an error) and every
            manifest row must have a label (a multi-label row may have none: all negative).
        task: ``auto`` detects multi-label data: a manifest with a ``labels`` column, or a ``label`` cell
            holding ``label_delim``; ``single`` reads each ``label`` cell as one class name (as before
            multi-label existed) and refuses a ``labels`` column; ``multilabel`` reads every label cell as a
            set (folders are single-label only).
        label_delim: the separator between the labels of one cell.

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
    if task not in TASKS:
        raise TlkitError(f"--task {task!r}: choose one of: {', '.join(TASKS)}")
    check_label_delim(label_delim)
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise TlkitError(f"image source {str(source)!r} is a file, not a folder or a .csv "
                             "manifest; pass the folder that holds the images")
        src = _scan_manifest(path, labeled, task, label_delim)
    else:
        if task == "multilabel" and labeled is not False:
            raise TlkitError(f"{source}: a folder of class subfolders holds one label per image, but the task is "
                             "multi-label; give a CSV manifest path,labels (labels joined by "
                             f"{label_delim!r}) or use --task single")
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


def _scan_manifest(csv_path: Path, labeled: bool | None, task: str = "auto",
                   delim: str = DEFAULT_LABEL_DELIM) -> ImageSource:
    root = csv_path.parent
    rows: list[tuple[str, str, int]] = []  # (rel, label cell, line)
    first_line: dict[str, int] = {}
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            ip, il, header_multi = _manifest_columns(csv_path, header, labeled)
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
                rows.append((rel, row[il].strip() if il is not None and il < len(row) else "", line))
    except UnicodeDecodeError as e:
        raise TlkitError(f"manifest {not_utf8_message(csv_path, e)}") from None
    except (OSError, csv.Error) as e:
        raise TlkitError(f"cannot read manifest {csv_path}: {e}; it must be a UTF-8 CSV file "
                         "with a header row path[,label]") from None
    if not rows:
        raise TlkitError(f"manifest {csv_path} lists no images; add rows below the header")
    if task == "single" and header_multi:
        raise TlkitError(f"manifest {csv_path}: its 'labels' column holds a set of labels per image, but the task is "
                         "single-label; use --task multilabel (or auto), or give one label per image in a 'label' "
                         "column")
    multi_rows = task == "auto" and any(delim in cell for _, cell, _ in rows)
    if task == "multilabel" or header_multi or multi_rows:
        return _multilabel_source(csv_path, rows, labeled, delim)
    records: list[ImageRecord] = []
    for rel, cell, line in rows:
        label = cell or None
        if labeled and label is None:
            raise TlkitError(f"manifest {csv_path}, line {line}: {rel!r} has no label; label every row or do not "
                             "require labels")
        records.append(ImageRecord(root / rel, rel, None if labeled is False else label))
    classes = tuple(sorted({r.label for r in records if r.label is not None}))
    return ImageSource(root, "manifest", tuple(records), classes)


def split_labels(cell: str, delim: str, where: str) -> tuple[str, ...]:
    """The sorted, de-duplicated labels of one multi-label cell (``""``: none); an empty label between two
    delimiters is a one-line TlkitError.

    Example:
        >>> split_labels("dog; cat", ";", "line 2")
        ('cat', 'dog')
    """
    if not cell.strip():
        return ()
    parts = [p.strip() for p in cell.split(delim)]
    if not all(parts):
        raise TlkitError(f"{where}: {cell!r} has an empty label between {delim!r} delimiters; write the labels "
                         f"joined by {delim!r} (e.g. 'cat{delim}dog'), or leave the cell empty for an image with "
                         "no label")
    return tuple(sorted(set(parts)))


def _multilabel_source(csv_path: Path, rows: list[tuple[str, str, int]], labeled: bool | None,
                       delim: str) -> ImageSource:
    root = csv_path.parent
    records = []
    for rel, cell, line in rows:
        labels = None if labeled is False else split_labels(cell, delim, f"manifest {csv_path}, line {line}")
        records.append(ImageRecord(root / rel, rel, None, labels))
    classes = tuple(sorted({c for r in records for c in (r.labels or ())}))
    if labeled and not classes:
        raise TlkitError(f"manifest {csv_path}: no row has a label; a multi-label manifest needs labels joined by "
                         f"{delim!r} in its label column (an empty cell means no label for that image)")
    return ImageSource(root, "manifest", tuple(records), classes, task="multilabel")


def _manifest_columns(csv_path: Path, header: list[str] | None,
                      labeled: bool | None) -> tuple[int, int | None, bool]:
    """Indices of the ``path`` and ``label`` (or ``labels``) columns (case-insensitive), and whether the
    label column is ``labels`` (multi-label)."""
    if not header:
        raise TlkitError(f"manifest {csv_path} is empty; its first row must be a header "
                         "path[,label]")
    cols = [h.strip().lower() for h in header]
    if "path" not in cols:
        found = ", ".join(repr(h) for h in header)
        raise TlkitError(f"manifest {csv_path} has no 'path' column (found columns: {found}); "
                         "its first row must be a header such as path,label")
    if "label" in cols and "labels" in cols:
        raise TlkitError(f"manifest {csv_path} has both a 'label' and a 'labels' column; keep 'label' for one label "
                         "per image or 'labels' for a set of labels per image")
    if labeled and "label" not in cols and "labels" not in cols:
        raise TlkitError(f"manifest {csv_path} has no 'label' column but labels are required; "
                         "add a label column")
    for name in ("label", "labels"):
        if name in cols:
            return cols.index("path"), cols.index(name), name == "labels"
    return cols.index("path"), None, False


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
