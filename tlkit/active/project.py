"""The active-learning project folder: everything between labeling sessions lives here, on disk.

```
PROJECT/
  project.yaml      settings: pool root, backbone, weights, image size, classes, Label Studio root + prefix
  pool.csv          id,path — every pool image, path relative to the pool root; grows with `al-add`
  labels.csv        path,label — the one source of truth for human labels
                    (label "__skip__" marks an image as unlabelable: never queried again);
                    validated on every read (a hand edit that breaks it is an error naming the line).
                    A multi-label project (``task: multilabel``) writes path,labels instead: the
                    classes present joined by ";" (``cat;dog``), empty = reviewed, no class present
  label_config.xml  the Label Studio labeling config for the classes (rewritten when classes change)
  rounds/0001/ ...  one folder per finished round (query.csv, labelstudio.json, model/, metrics.json)
  cache/            embeddings keyed by backbone + weights hash + image size (tlkit extract folders)
  .lock             held (flock) while a command changes the project
```

Crash safety: a round is built in ``rounds/NNNN.tmp/`` and renamed into place when complete; a
killed round leaves only the ``.tmp`` folder, which the next command removes. Every file is
written atomically. The lock is an OS-level ``flock``: it is released when the process dies, so a
SIGKILL never leaves the project locked.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import yaml

import tlkit
from tlkit.active import labelstudio as ls
from tlkit.active.labeltext import SKIP_LABEL, check_class_names, join_labels, split_labels
from tlkit.active.poolpath import unique_files
from tlkit.core.constants import (
    DEFAULT_BACKBONE, DEFAULT_SSL, DEFAULT_TASK, FINETUNE_SSL_MODES, MULTILABEL, PROJECTION_DIM, SSL_MODES, TASKS,
)
from tlkit.core.errors import TlkitError
from tlkit.core.io import csv_text, read_csv, write_csv, write_text
from tlkit.core.locks import hold_lock
from tlkit.data import ImageRecord, ImageSource, scan_images
from tlkit.features.store import DTYPES, storage_dtype

log = logging.getLogger(__name__)

ROUND_DIGITS = 4


def label_header(task: str = DEFAULT_TASK) -> list[str]:
    """labels.csv's header: ``path,label`` (single-label) or ``path,labels`` (multi-label)."""
    return ["path", "labels" if task == MULTILABEL else "label"]


def _label_rows(text: str, file: Path, task: str = DEFAULT_TASK) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each data row of labels.csv's ``text``, read by the csv module.

    Quoted fields may hold any character, newlines and U+2028 included; only the csv module's own
    line ends split records (``str.splitlines`` would also split at U+2028, ``\\x1c`` and others).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        want = label_header(task)
        if header is None or [c.strip() for c in header] != want:
            raise TlkitError(f"{file} line 1 must be the header {','.join(want)}; restore it")
        rows = []
        start = reader.line_num + 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
        return rows
    except csv.Error as e:
        raise TlkitError(f"{file} line {reader.line_num} is not valid CSV ({e}); fix or delete the line") from None


def labels_digest(labels: dict[str, str]) -> str:
    """SHA-256 of a label set, independent of row order (what a round was trained on)."""
    h = hashlib.sha256()
    for path, label in sorted(labels.items()):
        h.update(f"{len(path)}:{path}{len(label)}:{label}".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass(frozen=True)
class ProjectConfig:
    """Settings of a project (``project.yaml``)."""

    pool_root: str
    classes: tuple[str, ...] = ()
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    image_size: int | None = None
    label_studio_prefix: str = ls.DEFAULT_PREFIX
    label_studio_root: str | None = None
    recipe: str | None = None
    seed: int = 0
    embedding_dtype: str = "float32"
    projection_dim: int = PROJECTION_DIM  # what strategies see of pools over 1 GiB of float32 embeddings
    engine: str = "auto"  # inference engine for pool embeddings and finetune scoring: auto | torch | openvino
    ssl: str = DEFAULT_SSL  # head rounds learn from the unlabeled pool too (tlkit.active.semi) | off | fixmatch (finetune rounds; tlkit.active.learner.resolve_ssl)
    tlkit_version: str = tlkit.__version__
    task: str = DEFAULT_TASK  # single | multilabel (al-init --multi-label); written only when multilabel

    @property
    def multilabel(self) -> bool:
        """True for a multi-label project: each image has a set of classes (maybe empty)."""
        return self.task == MULTILABEL

    def to_yaml(self) -> str:
        d = asdict(self)
        d["classes"] = list(self.classes)
        if self.task == DEFAULT_TASK:  # single-label project.yaml files stay as they were
            del d["task"]
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ProjectConfig":
        """Parse ``project.yaml``; any problem is a one-line :class:`TlkitError` naming the key and the fix."""
        import typing

        from tlkit.core.io import yaml_problem

        fix = "fix it by hand (tlkit writes it at `tlkit al-init`)"
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TlkitError(f"project.yaml is not valid YAML ({yaml_problem(e)}); {fix}") from None
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise TlkitError(f"project.yaml must be a mapping of key: value, not a {type(d).__name__}; {fix}")
        fields = cls.__dataclass_fields__
        unknown = set(map(str, d)) - set(fields)
        if unknown:
            raise TlkitError(f"project.yaml has unknown keys {sorted(unknown)}; valid keys: {sorted(fields)}")
        if d.get("pool_root") is None:
            raise TlkitError("project.yaml has no pool_root; add `pool_root: /path/to/the/pool/images`")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            origin = typing.get_origin(hints[key])
            allowed = (list, type(None)) if origin is tuple else typing.get_args(hints[key]) if origin else (hints[key],)
            ok = (value is None and type(None) in allowed) or any(
                isinstance(value, t) and not isinstance(value, bool) for t in allowed if t is not type(None))
            if ok and isinstance(value, list):  # classes: a list of names
                ok = all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in value)
            if ok and key == "image_size" and value is not None:
                ok = value >= 16
            if ok and key == "seed":
                ok = value >= 0
            if ok and key == "projection_dim":
                ok = value >= 8
            if ok and key == "task" and value not in TASKS:
                raise TlkitError(f"project.yaml: task is {value!r}; write `task: {MULTILABEL}` (a set of classes per "
                                 f"image) or leave it out (one class per image)")
            if ok and key == "ssl" and value not in SSL_MODES + FINETUNE_SSL_MODES:
                raise TlkitError(f"project.yaml: ssl is {value!r}; write `ssl: self-training` (pseudo-labels from "
                                 "the pool), `ssl: fixmatch` (finetune rounds: consistency on the pool images) or "
                                 "`ssl: off` (the labeled images alone)")
            if ok and key == "embedding_dtype" and value not in DTYPES:
                raise TlkitError(f"project.yaml: embedding_dtype is {value!r}; write `embedding_dtype: float32` "
                                 "or `embedding_dtype: float16` (half the memory for big pools)")
            if not ok:
                least = {"image_size": " of at least 16 (pixels)", "seed": " of at least 0",
                         "projection_dim": " of at least 8"}.get(key, "")
                want = {int: "a whole number" + least, str: "a text value", list: "a list of class names",
                        type(None): "null"}
                default = fields[key].default
                example = {int: {"image_size": "224", "projection_dim": "256"}.get(key, "0"), str: repr(default) if isinstance(default, str)
                           else "/path/to/file", list: "[cat, dog]", type(None): "null"}
                raise TlkitError(f"project.yaml: {key} is {value!r}, not {' or '.join(want[t] for t in allowed)}; "
                                 "write for example " + " or ".join(f"`{key}: {example[t]}`" for t in allowed))
        d["classes"] = tuple(str(c) for c in d.get("classes") or ())
        if d.get("task") == MULTILABEL:
            check_class_names(d["classes"], "project.yaml classes", multilabel=True)
        return cls(**d)


def _new_project_folder(root: str | os.PathLike) -> Path:
    """``root`` as a Path, when it can hold a new project (missing, or a folder without project.yaml)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise TlkitError(f"{root} is a file; pick a folder for the project")
    if (root / "project.yaml").exists():
        raise TlkitError(f"{root} is already a tlkit project; use it as it is, or pick a new folder")
    return root


class Project:
    """An open project folder. Use :meth:`create` or :meth:`open`.

    Example:
        >>> p = Project.create("proj", pool="images/", classes=("cat", "dog"))
        >>> p.labels()          # {} until labels are imported
        >>> import_seed_labels(p, "seed.csv")   # tlkit.active.labels; al-init --labels
    """

    def __init__(self, root: Path, config: ProjectConfig):
        self.root = root
        self.config = config

    # ------------------------------------------------------------------ paths
    @property
    def pool_csv(self) -> Path:
        return self.root / "pool.csv"

    @property
    def labels_csv(self) -> Path:
        return self.root / "labels.csv"

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def pool_root(self) -> Path:
        return Path(self.config.pool_root)

    def round_dir(self, n: int) -> Path:
        return self.rounds_dir / f"{n:0{ROUND_DIGITS}d}"

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        pool: str | os.PathLike,
        classes: tuple[str, ...] | list[str] = (),
        backbone: str = DEFAULT_BACKBONE,
        weights: str | None = None,
        image_size: int | None = None,
        label_studio_prefix: str = ls.DEFAULT_PREFIX,
        label_studio_root: str | os.PathLike | None = None,
        recipe: str | None = None,
        seed: int = 0,
        embedding_dtype: str = "float32",
        task: str = DEFAULT_TASK,
    ) -> "Project":
        """Create a project over the images under ``pool``.

        ``label_studio_root`` is Label Studio's document root (default: the pool's parent); image
        URLs in task files are ``label_studio_prefix`` + the image's path relative to it.
        Seed labels are a separate import afterwards (:func:`tlkit.active.labels.import_seed_labels`).
        ``embedding_dtype`` is how the pool's embeddings are cached: ``float32``, or ``float16``
        (half the disk and memory; :data:`tlkit.features.store.DTYPES`). ``task``: ``single`` (one
        class per image) or ``multilabel`` (a set of classes per image; labels.csv ``path,labels``).
        """
        from tlkit.core.errors import check_choice

        storage_dtype(embedding_dtype)
        check_choice(task, TASKS, "task")
        classes = tuple(dict.fromkeys(c.strip() for c in classes if c.strip()))
        check_class_names(classes, "--classes", multilabel=task == MULTILABEL)
        root = _new_project_folder(root)
        source = scan_images(pool, labeled=False)
        pool_root = Path(source.root).resolve()
        ls_root = Path(label_studio_root).resolve() if label_studio_root else pool_root.parent
        ls.check_root(ls_root, pool_root)
        config = ProjectConfig(
            pool_root=str(pool_root), classes=classes,
            backbone=backbone, weights=str(Path(weights).resolve()) if weights else None, image_size=image_size,
            label_studio_prefix=label_studio_prefix, label_studio_root=str(ls_root), recipe=recipe, seed=seed,
            embedding_dtype=embedding_dtype, task=task,
        )
        return cls._write_new(root, config, source)

    @classmethod
    def _write_new(cls, root: Path, config: ProjectConfig, source: ImageSource) -> "Project":
        """Write pool.csv (links to other pool files left out), an empty labels.csv, project.yaml, label_config.xml."""
        found = unique_files(source.records, Path(config.pool_root))
        paths, duplicates = found.paths, found.duplicates
        if duplicates:
            log.warning("%d pool files are links to other pool files and were left out: %s", len(duplicates),
                        ", ".join(duplicates[:3]))
        root.mkdir(parents=True, exist_ok=True)
        project = cls(root, config)
        with project.lock():
            write_csv(project.pool_csv, ["id", "path"], enumerate(paths))
            write_csv(project.labels_csv, label_header(config.task), [])
            write_text(root / "project.yaml", config.to_yaml())
            write_text(project.label_config_xml, ls.label_config(config.classes, multilabel=config.multilabel))
        return project

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Project":
        root = Path(root)
        cfg = root / "project.yaml"
        if not cfg.is_file():
            raise TlkitError(f"{root} is not a tlkit project (no project.yaml); create one with `tlkit al-init`")
        return cls(root, ProjectConfig.from_yaml(cfg.read_text(encoding="utf-8")))

    def save_config(self, config: ProjectConfig) -> None:
        write_text(self.root / "project.yaml", config.to_yaml())
        self.config = config

    def with_classes(self, classes: tuple[str, ...]) -> None:
        self.save_config(replace(self.config, classes=classes))
        write_text(self.label_config_xml, ls.label_config(classes, multilabel=self.multilabel))

    @property
    def multilabel(self) -> bool:
        """True for a multi-label project (project.yaml ``task: multilabel``)."""
        return self.config.multilabel

    @property
    def label_config_xml(self) -> Path:
        return self.root / "label_config.xml"

    def image_urls(self) -> ls.ImageUrls:
        """Label Studio image URLs of pool images (projects made before ``label_studio_root`` use the pool root)."""
        cfg = self.config
        return ls.ImageUrls(cfg.label_studio_prefix, Path(cfg.label_studio_root or cfg.pool_root), Path(cfg.pool_root))

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self, what: str = "a command") -> Iterator[None]:
        """Hold the project's lock; a second holder fails at once with a clear message."""
        with hold_lock(self.root / ".lock", what, name=str(self.root)):
            self._cleanup_partial_rounds()
            yield

    def _cleanup_partial_rounds(self) -> None:
        if not self.rounds_dir.is_dir():
            return
        for tmp in self.rounds_dir.glob("*.tmp"):
            log.warning("removing %s left by an interrupted round", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ pool and labels
    def pool_paths(self) -> list[str]:
        """Pool image paths (relative to the pool root), in id order."""
        return [row["path"] for row in read_csv(self.pool_csv)]

    def pool_source(self) -> ImageSource:
        root = self.pool_root
        if not root.is_dir():
            raise TlkitError(f"pool folder {root} is gone; restore it (project.yaml: pool_root)")
        paths = self.pool_paths()
        present = [p for p in paths if (root / p).is_file()]
        if len(present) < len(paths):
            gone = sorted(set(paths) - set(present))
            log.warning("%d pool images are gone from disk (e.g. %s); this round leaves them out", len(gone), gone[0])
        records = tuple(ImageRecord(root / p, p, None) for p in present)
        return ImageSource(root=root, kind="flat", records=records, classes=())

    def labels(self) -> dict[str, str]:
        """Human labels: path -> label (including ``__skip__`` for unlabelable images).

        In a multi-label project the label is the image's set of classes as :func:`join_labels`
        writes it (``"cat;dog"``; ``""``: reviewed, no class present).

        Raises:
            TlkitError: labels.csv was edited into something invalid (a row without two fields,
                an empty label, a class that is not a project class, an image that is not in the
                pool, or two different labels for one image), naming the line and the fix.
        """
        if not self.labels_csv.exists():
            return {}
        try:
            with open(self.labels_csv, encoding="utf-8-sig", newline="") as f:  # keep a \r inside a quoted name
                text = f.read()
        except UnicodeDecodeError:
            raise TlkitError(f"{self.labels_csv} is not UTF-8 text; save it as UTF-8 "
                             f"(columns {','.join(label_header(self.config.task))})") from None
        return self._check_labels(_label_rows(text, self.labels_csv, self.config.task))

    def _check_labels(self, rows: list[tuple[int, list[str]]]) -> dict[str, str]:
        allowed, pool = set(self.config.classes) | {SKIP_LABEL}, set(self.pool_paths())
        out: dict[str, str] = {}
        for n, row in rows:
            if not row or not "".join(row).strip():
                continue
            where = f"{self.labels_csv} line {n}"
            fix = "fix or delete the line (or re-import the labels with `tlkit al-import`)"
            multi = self.multilabel
            if len(row) != 2 or not row[0].strip() or not (multi or row[1].strip()):
                raise TlkitError(f"{where} must be {','.join(label_header(self.config.task))} "
                                 f"(found {','.join(row)!r}); {fix}")
            path = row[0] if row[0] in pool else row[0].strip()  # a pool file's exact name; hand edits may pad
            label = row[1].strip()
            if multi and label != SKIP_LABEL:
                label = join_labels(split_labels(label))
            names = split_labels(label) if multi and label != SKIP_LABEL else (label,)
            for name in names:
                if name not in allowed or (len(names) > 1 and name == SKIP_LABEL):
                    raise TlkitError(f"{where}: {name!r} is not a project class {list(self.config.classes)}; "
                                     f"{fix}, or add the class with `tlkit al-import --add-classes`")
            if path not in pool:
                raise TlkitError(f"{where}: {path!r} is not in the pool; {fix}, or add the image with `tlkit al-add`")
            if out.get(path, label) != label:
                raise TlkitError(f"{where}: {path!r} is labeled {out[path]!r} on an earlier line and {label!r} here; "
                                 "keep one of the two lines")
            out[path] = label
        return out

    def write_labels(self, labels: dict[str, str]) -> None:
        """Write labels.csv atomically; the text is read back with :meth:`labels`' reader before it replaces the file."""
        order = {p: i for i, p in enumerate(self.pool_paths())}
        rows = sorted(labels.items(), key=lambda kv: order.get(kv[0], len(order)))
        text = csv_text(label_header(self.config.task), rows)
        back = {row[0]: row[1] for _, row in _label_rows(text, self.labels_csv, self.config.task)}
        if back != labels:
            bad = next(p for p in labels if back.get(p) != labels[p])
            raise TlkitError(f"labels.csv would not read back for {bad!r} (a bug in tlkit); labels.csv is unchanged")
        write_text(self.labels_csv, text)

    # ------------------------------------------------------------------ rounds
    def rounds(self) -> list[int]:
        """Numbers of the finished rounds, ascending."""
        if not self.rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.rounds_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def last_query(self) -> list[dict[str, str]]:
        rounds = self.rounds()
        if not rounds:
            return []
        path = self.round_dir(rounds[-1]) / "query.csv"
        return read_csv(path) if path.exists() else []

    def pending(self) -> list[dict[str, str]]:
        """Rows of the latest query that still await a label."""
        labels = self.labels()
        return [row for row in self.last_query() if row["path"] not in labels]
