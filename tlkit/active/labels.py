"""Taking labels in (CSV, Label Studio exports) and handing queries out (Label Studio tasks).

An import validates everything before writing anything, and then rewrites labels.csv atomically
with the merged result. An earlier label is never lost: changing one needs ``overwrite=True``.

Checks (each an error naming the first offending rows and the option that allows it):

- images that are not in the pool (``skip_unknown`` imports the rest and reports them);
- labels that are not project classes (``add_classes``);
- relabels of labeled images (``overwrite``);
- empty labels, and contradictory rows for one image in a plain CSV.

Several annotations of one image (Label Studio: several annotators, or one image in tasks of two
rounds) are resolved by one documented rule, never a silent choice:

1. An annotation marked ground truth wins (JSON exports carry the flag; several that disagree are
   a disagreement).
2. Otherwise the labeled (not cancelled) annotations must agree. When they disagree, the image is
   not imported and is listed in :attr:`ImportReport.disagreements`, unless ``resolve`` says
   ``majority`` (the most frequent label; a tie stays a disagreement) or ``latest`` (the most
   recently updated annotation).
3. An image whose annotations were all cancelled (skipped) is marked unlabelable (``__skip__``).

In a multi-label project a vote's label is the annotation's set of classes (its canonical text,
:func:`tlkit.active.labeltext.join_labels`); the rules apply per image unchanged, so annotators agree
when they chose the same set, ``majority`` takes the most frequent set, and an annotation with no
class ticked is the empty set (reviewed, no class present), not a missing label.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from tlkit.active import labelstudio as ls
from tlkit.active.labelstudio import Vote
from tlkit.active.labeltext import SKIP_LABEL, SKIP_WORDS, check_class_names, split_labels
from tlkit.active.poolpath import pool_relpath
from tlkit.active.project import Project
from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

RESOLVE_RULES = ("agree", "majority", "latest")
#: Label Studio export formats that leave cancelled (skipped) annotations out.
EXPORTS_WITHOUT_SKIPS = ("JSON_MIN", "CSV")


@dataclass
class ImportReport:
    """What an import changed.

    Attributes:
        added, relabeled, unchanged: counts of images.
        skipped_marked: images newly marked unlabelable.
        new_classes: classes added by this import.
        per_class: newly added or changed labels per class.
        unknown: images of the file that are not in the pool (only with ``skip_unknown``).
        disagreements: images whose annotations disagree, not imported: "path: a (where), b (where)".
        exports: the Label Studio export formats the votes came from (empty for a plain CSV).
        still_pending: images of the latest round's query that are still unlabeled afterwards.
    """

    added: int = 0
    relabeled: int = 0
    unchanged: int = 0
    skipped_marked: int = 0
    new_classes: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)

    @property
    def pending_note(self) -> str | None:
        """One line on queried images still unlabeled after this import and what to do, or None."""
        if not self.still_pending:
            return None
        n = len(self.still_pending)
        note = f"{n} queried images are still unlabeled after this import: {_first(self.still_pending)}"
        lossy = [f for f in self.exports if f in EXPORTS_WITHOUT_SKIPS]
        if lossy:
            return (note + f". Label Studio's {'/'.join(lossy)} export leaves out skipped (cancelled) annotations: "
                    "if they were skipped, export as JSON and import that file (skips mark them unlabelable); "
                    "otherwise label them, or start a new round with `tlkit al-round --new`")
        return note + "; label them in Label Studio and import again, or start a new round with `tlkit al-round --new`"


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def import_labels(
    project: Project,
    file: str | os.PathLike,
    *,
    add_classes: bool = False,
    overwrite: bool = False,
    skip_unknown: bool = False,
    resolve: str = "agree",
) -> ImportReport:
    """Validate ``file`` and merge its labels into ``project/labels.csv``.

    Args:
        project: the project.
        file: a CSV ``path,label`` (label ``__skip__`` marks an image unlabelable), or a Label
            Studio export as JSON, JSON_MIN or CSV (a cancelled annotation marks it unlabelable).
        add_classes: accept labels that are not yet project classes (they are added).
        overwrite: allow changing an existing label.
        skip_unknown: import the rest when some images are not in the pool (they are reported).
        resolve: how disagreeing annotations of one image are settled: ``agree`` (not imported,
            reported), ``majority`` or ``latest`` (see the module docstring).

    Raises:
        TlkitError: naming the first offending rows; labels.csv is unchanged.
    """
    file = Path(file)
    votes = ls.read_votes(file, project.image_urls(), multilabel=project.multilabel)
    if not votes:
        raise TlkitError(f"{file} holds no labels (no annotated task or row); export the annotated tasks "
                         "from Label Studio (JSON, JSON_MIN or CSV) or write a CSV path,label")
    return _import_votes(project, votes, file.name, add_classes=add_classes, overwrite=overwrite,
                         skip_unknown=skip_unknown, resolve=resolve)


def import_mapping(
    project: Project,
    labels: Mapping[str | os.PathLike, str],
    *,
    source: str = "the labels given",
    add_classes: bool = False,
    overwrite: bool = False,
    skip_unknown: bool = False,
) -> ImportReport:
    """Validate a mapping image -> label and merge it into ``project/labels.csv`` (``tlkit.Project.teach``).

    The same checks and atomic merge as :func:`import_labels` on a CSV ``path,label`` with these rows:
    keys are pool paths (relative to the pool folder) or paths of files inside it; the label
    ``__skip__`` marks an image unlabelable.

    Raises:
        TlkitError: naming the first offending items; labels.csv is unchanged.
    """
    votes = [Vote(os.fspath(path), str(label).strip(), f"{source}: {os.fspath(path)!r}", source="csv",
                  image=os.fspath(path)) for path, label in labels.items()]
    if not votes:
        raise TlkitError(f"{source} hold no labels; pass at least one image -> label")
    return _import_votes(project, votes, source, add_classes=add_classes, overwrite=overwrite,
                         skip_unknown=skip_unknown, resolve="agree")


def _import_votes(project: Project, votes: list[Vote], source: str, *, add_classes: bool, overwrite: bool,
                  skip_unknown: bool, resolve: str) -> ImportReport:
    """The rest of an import once its votes are read: merge, then note what the latest query still awaits."""
    report = merge_votes(project, votes, source, add_classes=add_classes, overwrite=overwrite,
                         skip_unknown=skip_unknown, resolve=resolve, what="al-import")
    report.exports = sorted({v.export for v in votes if v.export})
    report.still_pending = [row["path"] for row in project.pending()]
    if report.pending_note:
        log.info(report.pending_note)
    return report


def import_seed_labels(project: Project, file: str | os.PathLike) -> ImportReport:
    """Import the first labels of a new project (``al-init --labels``).

    Like :func:`import_labels`; a project created without classes takes them from the file.
    """
    return import_labels(project, file, add_classes=not project.config.classes)


def merge_votes(project: Project, votes: list[Vote], source: str, *, add_classes: bool = False,
                overwrite: bool = False, skip_unknown: bool = False, resolve: str = "agree",
                what: str = "al-import") -> ImportReport:
    """Validate ``votes`` (from one file or one Label Studio task) and merge them into labels.csv.

    The one import path of :func:`import_labels` and ``tlkit serve``'s webhook: same checks, same
    annotator rule, atomic write under the project lock. ``source`` names the votes in messages.
    """
    if resolve not in RESOLVE_RULES:
        raise TlkitError(f"unknown --resolve {resolve!r}; choose one of: {', '.join(RESOLVE_RULES)}")
    with project.lock(what):
        return _merge_locked(project, votes, source, add_classes, overwrite, skip_unknown, resolve)


def forget_labels(project: Project, paths: list[str], *, what: str = "tlkit serve") -> int:
    """Remove the labels of ``paths`` (e.g. every annotation of the image was deleted); returns how many."""
    with project.lock(what):
        current = project.labels()
        gone = [p for p in paths if p in current]
        for p in gone:
            del current[p]
        if gone:
            project.write_labels(current)
        return len(gone)


def _merge_locked(project: Project, votes: list[Vote], source: str, add_classes: bool, overwrite: bool,
                  skip_unknown: bool, resolve: str) -> ImportReport:
    pool = set(project.pool_paths())
    pool_root = project.pool_root.resolve()
    votes = [_normalise(v, pool_root, pool) for v in votes]
    unknown = list(dict.fromkeys(f"{v.image or v.path} ({v.where})" for v in votes if v.path not in pool))
    if unknown and not skip_unknown:
        raise TlkitError(f"{len(unknown)} images are not in the pool: {_first(unknown)}; paths are relative to "
                         f"{pool_root}; add them with `tlkit al-add`, or pass --skip-unknown to import the rest")
    votes = [v for v in votes if v.path in pool]
    empty = [v.where for v in votes if not v.label and not v.cancelled and not project.multilabel]
    if empty:
        raise TlkitError(f"{len(empty)} rows have an empty label: {_first(empty)}")
    incoming, disagreements = _resolve_all(votes, source, resolve)
    report = ImportReport(unknown=unknown, disagreements=disagreements)
    _check_classes(project, incoming, add_classes, report)
    current = project.labels()
    conflicts = [f"{p}: {current[p]!r} -> {lab!r}" for p, lab in incoming.items() if p in current and current[p] != lab]
    if conflicts and not overwrite:
        raise TlkitError(f"{len(conflicts)} images already have another label: {_first(conflicts)}; "
                         "pass --overwrite to relabel")
    _merge(current, incoming, report, project.multilabel)
    if report.new_classes:
        project.with_classes(tuple(project.config.classes) + tuple(report.new_classes))
    project.write_labels(current)
    log.info("imported %d labels (%d new, %d relabeled) from %s", len(incoming), report.added, report.relabeled, source)
    return report


def _normalise(v: Vote, pool_root: Path, pool: set[str]) -> Vote:
    """The vote with its pool path (:func:`~tlkit.active.poolpath.pool_relpath`; None outside the pool)
    and skip words as SKIP_LABEL.

    A path that is not a pool file's exact name is tried without surrounding spaces, without a
    leading ``./`` and with Windows separators as ``/`` (label files written by hand or by Excel).
    """
    path = v.path
    if path is not None and path not in pool:
        tidy = path.strip().replace("\\", "/")
        tidy = tidy[2:] if tidy.startswith("./") else tidy
        path = pool_relpath(pool_root, tidy)
    return replace(v, path=path, label=SKIP_LABEL if v.label.lower() in SKIP_WORDS else v.label)


def _resolve_all(votes: list[Vote], source: str, rule: str) -> tuple[dict[str, str], list[str]]:
    """One label per image from its votes; images whose votes disagree are listed, not labeled."""
    by_path: dict[str, list[Vote]] = {}
    for v in votes:
        by_path.setdefault(v.path, []).append(v)
    incoming: dict[str, str] = {}
    disagreements: list[str] = []
    for path, vs in by_path.items():
        plain = [v for v in vs if v.source == "csv"]
        if len({v.label for v in plain}) > 1:
            a, b = plain[0], next(v for v in plain if v.label != plain[0].label)
            raise TlkitError(f"{path} is labeled twice in {source}: {a.label!r} ({a.where}) and {b.label!r} ({b.where})")
        label = _resolve(vs, rule)
        if label is None:
            disagreements.append(f"{path}: " + ", ".join(f"{v.label} ({v.where})" for v in vs if not v.cancelled))
        else:
            incoming[path] = label
    return incoming, disagreements


def _resolve(votes: list[Vote], rule: str) -> str | None:
    """The label of one image (module docstring rule), or None when its annotations disagree."""
    labeled = [v for v in votes if not v.cancelled]
    truth = {v.label for v in labeled if v.ground_truth}
    if truth:
        return truth.pop() if len(truth) == 1 else None
    if not labeled:
        return SKIP_LABEL
    counts = Counter(v.label for v in labeled)
    if len(counts) == 1:
        return labeled[0].label
    if rule == "majority":
        (top, n), (_, n2) = counts.most_common(2)
        return top if n > n2 else None
    if rule == "latest":
        return max(enumerate(labeled), key=lambda iv: (_when(iv[1].time), iv[0]))[1].label
    return None


def _when(stamp: str) -> datetime:
    """An annotation's ISO 8601 time as an aware datetime (no zone: UTC); unknown or unreadable: the earliest."""
    try:
        t = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _names(label: str, multilabel: bool) -> tuple[str, ...]:
    """The classes of an imported label: its set (multi-label), or itself; none for ``__skip__``."""
    if label == SKIP_LABEL:
        return ()
    return split_labels(label) if multilabel else (label,)


def _check_classes(project: Project, incoming: dict[str, str], add_classes: bool, report: ImportReport) -> None:
    classes, multi = set(project.config.classes), project.multilabel
    new = sorted({c for lab in incoming.values() for c in _names(lab, multi) if c not in classes})
    if new and not add_classes:
        raise TlkitError(f"unknown classes {new}; project classes are {list(project.config.classes)}; "
                         "pass --add-classes to add them")
    check_class_names(new, "--add-classes", multilabel=multi)
    report.new_classes = new


def _merge(current: dict[str, str], incoming: dict[str, str], report: ImportReport, multilabel: bool = False) -> None:
    for p, lab in incoming.items():
        if current.get(p) == lab:
            report.unchanged += 1
            continue
        report.relabeled += p in current
        report.added += p not in current
        report.skipped_marked += lab == SKIP_LABEL
        for c in _names(lab, multilabel):
            report.per_class[c] = report.per_class.get(c, 0) + 1
        current[p] = lab

