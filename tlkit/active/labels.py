"""Taking labels in (CSV, Label Studio exports) and handing queries out (Label Studio tasks).

Imports validate everything before writing anything: unknown paths, unknown classes, conflicting
relabels and contradictory duplicates are errors (``add_classes`` / ``overwrite`` allow the last
two on purpose), and labels.csv is then rewritten atomically with the merged result. An earlier
label is never lost: changing one needs ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from tlkit.active.project import SKIP_LABEL, Project
from tlkit.errors import TlkitError
from tlkit.io import read_csv, write_json

log = logging.getLogger(__name__)

SKIP_WORDS = {SKIP_LABEL, "__skip__", "skip", "unlabelable"}


@dataclass
class ImportReport:
    """What an import changed."""

    added: int = 0
    relabeled: int = 0
    unchanged: int = 0
    skipped_marked: int = 0
    new_classes: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)


def _read_rows(path: Path, prefix: str) -> list[tuple[str, str, str]]:
    """(path, label, where) triples from a CSV or a Label Studio JSON export."""
    if not path.is_file():
        raise TlkitError(f"label file not found: {path}")
    if path.suffix.lower() == ".json":
        return _read_label_studio(path, prefix)
    rows = read_csv(path)
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        cols = list(rows[0]) if rows else []
        raise TlkitError(f"{path} needs the columns path,label (found {cols or 'no rows'})")
    return [(r["path"].strip(), (r["label"] or "").strip(), f"{path.name} line {i + 2}") for i, r in enumerate(rows)]


def _read_label_studio(path: Path, prefix: str) -> list[tuple[str, str, str]]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TlkitError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(tasks, list):
        raise TlkitError(f"{path} is not a Label Studio export (expected a JSON list of tasks)")
    out = []
    for i, task in enumerate(tasks):
        where = f"{path.name} task {task.get('id', i)}"
        img = (task.get("meta") or {}).get("tlkit_path") or _strip_prefix((task.get("data") or {}).get("image", ""), prefix)
        label = _task_choice(task, where)
        if label is not None:
            out.append((img, label, where))
    return out


def _strip_prefix(image: str, prefix: str) -> str:
    if prefix and image.startswith(prefix):
        image = image[len(prefix) :]
    return unquote(image)


def _task_choice(task: dict[str, Any], where: str) -> str | None:
    """The latest non-cancelled annotation's choice; SKIP_LABEL for a skipped task; None if unannotated."""
    annotations = task.get("annotations") or task.get("completions") or []
    if not annotations:
        return None
    ann = annotations[-1]
    if ann.get("was_cancelled"):
        return SKIP_LABEL
    for res in ann.get("result") or []:
        choices = (res.get("value") or {}).get("choices")
        if choices:
            if len(choices) > 1:
                raise TlkitError(f"{where}: several choices {choices}; tlkit needs one label per image")
            return str(choices[0])
    return None


def _normalise_path(raw: str, pool_root: Path) -> str:
    p = Path(raw)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(pool_root).as_posix()
        except ValueError:
            return raw
    return PurePosixPath(raw.replace("\\", "/")).as_posix().removeprefix("./")


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def import_labels(
    project: Project,
    file: str | os.PathLike,
    *,
    add_classes: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Validate ``file`` and merge its labels into ``project/labels.csv``.

    Args:
        project: the project.
        file: a CSV (``path,label``; label ``__skip__`` marks an image unlabelable) or a Label
            Studio JSON export (choices; a skipped/cancelled task marks the image unlabelable).
        add_classes: accept labels that are not yet project classes (they are added).
        overwrite: allow changing an existing label.

    Raises:
        TlkitError: naming the first offending rows; labels.csv is unchanged.
    """
    with project.lock("al-import"):
        return _import_locked(project, Path(file), add_classes, overwrite)


def _import_locked(project: Project, file: Path, add_classes: bool, overwrite: bool) -> ImportReport:
    pool_root = project.pool_root.resolve()
    rows = [(_normalise_path(p, pool_root), SKIP_LABEL if lab.lower() in SKIP_WORDS else lab, w)
            for p, lab, w in _read_rows(file, project.config.label_studio_prefix)]
    if not rows:
        raise TlkitError(f"{file} holds no labels")
    pool = set(project.pool_paths())
    unknown = [f"{p} ({w})" for p, _, w in rows if p not in pool]
    if unknown:
        raise TlkitError(f"{len(unknown)} paths are not in the pool: {_first(unknown)}; paths are relative to {pool_root}")
    empty = [w for p, lab, w in rows if not lab]
    if empty:
        raise TlkitError(f"{len(empty)} rows have an empty label: {_first(empty)}")
    incoming: dict[str, tuple[str, str]] = {}
    for p, lab, w in rows:
        if p in incoming and incoming[p][0] != lab:
            raise TlkitError(f"{p} is labeled twice in {file.name}: {incoming[p][0]!r} ({incoming[p][1]}) and {lab!r} ({w})")
        incoming[p] = (lab, w)
    classes = list(project.config.classes)
    new_classes = sorted({lab for lab, _ in incoming.values() if lab != SKIP_LABEL and lab not in classes})
    if new_classes and not add_classes:
        raise TlkitError(f"unknown classes {new_classes}; project classes are {classes}; pass --add-classes to add them")
    current = project.labels()
    conflicts = [f"{p}: {current[p]!r} -> {lab!r}" for p, (lab, _) in incoming.items() if p in current and current[p] != lab]
    if conflicts and not overwrite:
        raise TlkitError(f"{len(conflicts)} images already have another label: {_first(conflicts)}; pass --overwrite to relabel")
    report = ImportReport(new_classes=new_classes)
    for p, (lab, _) in incoming.items():
        if current.get(p) == lab:
            report.unchanged += 1
            continue
        report.relabeled += p in current
        report.added += p not in current
        report.skipped_marked += lab == SKIP_LABEL
        if lab != SKIP_LABEL:
            report.per_class[lab] = report.per_class.get(lab, 0) + 1
        current[p] = lab
    if new_classes:
        project.with_classes(tuple(classes + new_classes))
    project.write_labels(current)
    log.info("imported %d labels (%d new, %d relabeled) from %s", len(incoming), report.added, report.relabeled, file)
    return report


def label_studio_tasks(rows: list[dict[str, Any]], prefix: str, round_no: int) -> list[dict[str, Any]]:
    """Label Studio import tasks for a query (``rows`` as in query.csv).

    Each task's ``data.image`` is ``prefix + path``; ``predictions`` carries the model's label as a
    pre-annotation and a ``score`` for sorting by usefulness.
    """
    tasks = []
    for row in rows:
        task: dict[str, Any] = {
            "data": {"image": f"{prefix}{row['path']}"},
            "meta": {"tlkit_path": row["path"], "tlkit_round": round_no, "rank": int(row["rank"])},
        }
        if row.get("predicted"):
            task["predictions"] = [{
                "model_version": f"tlkit-round-{round_no:04d}",
                "score": float(row["score"]),
                "result": [{
                    "from_name": "choice", "to_name": "image", "type": "choices",
                    "value": {"choices": [row["predicted"]]},
                    "score": float(row["confidence"]) if row.get("confidence") else None,
                }],
            }]
        tasks.append(task)
    return tasks


def write_label_studio(path: Path, rows: list[dict[str, Any]], prefix: str, round_no: int) -> None:
    write_json(path, label_studio_tasks(rows, prefix, round_no))
