"""The model and the labeling loop behind ``tlkit serve``: predictions, annotations in, retraining.

A :class:`Backend` serves the latest finished round of a project (its pool probabilities, saved
as ``rounds/NNNN/scores.npz``, and its ranking) from memory, so a prediction is a lookup. Labels
arriving from Label Studio go through the same validated, atomic, locked path as ``al-import``
(:func:`tlkit.active.labels.merge_votes`). Retraining is an ordinary ``al-round`` in a background
thread, one at a time: annotations that arrive meanwhile queue the next one, and the served model
changes only when a round folder is complete, so a crash at any point leaves the last model
served and the labels intact. At start, a project whose labels changed since its last round
(a server killed mid-retrain) is retrained.

Sharing the project with the CLI: the server takes the project lock only while it writes (an
import or a round). A CLI command that meets it gets the usual "busy" line; the server, when it
meets a CLI command, waits for it and retries.

``model_version`` is ``tlkit-NNNN``, the served round. Label Studio asks an ML backend for
predictions of tasks that have none of the current version, so a new version after a retrain
makes it fetch fresh predictions (with a Label Studio API key, the backend asks it to at once,
and points the project's shown version at the new one).

A multi-label project is served the same way: a prediction is the predicted set of classes (a
multi-choice result, ``score`` the probability of that exact set), unlabeled images beyond the
query are ranked by mean binary entropy, and webhook annotations are read as sets (an annotation
with no choice ticked: no class present).
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlkit.active import labelstudio as ls
from tlkit.active.labels import forget_labels, merge_votes
from tlkit.active.labeltext import SKIP_LABEL
from tlkit.active.pool import add_paths
from tlkit.active.poolpath import pool_file
from tlkit.active.project import Project, labels_digest
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, read_json

log = logging.getLogger(__name__)

LABEL_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
TRAIN_EVENTS = ("START_TRAINING",)


class BadRequest(TlkitError):
    """A request the backend refuses (HTTP 4xx); nothing was changed."""


@dataclass(frozen=True)
class Served:
    """The model being served: one finished round's pool probabilities and ranking.

    Attributes:
        round: the round served; ``version``, the ``model_version`` reported to Label Studio, is ``tlkit-NNNN``.
        classes: class names in the columns of ``probs``.
        index: pool path -> row of ``probs``.
        probs: [n, k] class probabilities of the round's model for the pool.
        rank: unlabeled pool path -> rank (1 = most useful to label next): the round's query
            first, then every other unlabeled image by margin (least certain first).
    """

    round: int
    classes: tuple[str, ...]
    index: dict[str, int]
    probs: np.ndarray
    rank: dict[str, int] = field(default_factory=dict)
    multilabel: bool = False  # probs are independent per-class probabilities

    @property
    def version(self) -> str:
        return f"tlkit-{self.round:04d}"


def load_served(project: Project) -> Served | None:
    """The latest round that saved pool scores, or None (no round yet)."""
    from tlkit.active.round import SCORES, load_scores

    for n in reversed(project.rounds()):
        folder = project.round_dir(n)
        if (folder / SCORES).is_file():
            paths, probs, classes = load_scores(folder / SCORES)
            labels = project.labels()
            query = [r["path"] for r in read_csv(folder / "query.csv")] if (folder / "query.csv").is_file() else []
            return Served(n, classes, {p: i for i, p in enumerate(paths)}, probs,
                          _ranking(paths, probs, query, labels, project.multilabel), project.multilabel)
    return None


def _ranking(paths: list[str], probs: np.ndarray, query: list[str], labels: dict[str, str],
             multilabel: bool = False) -> dict[str, int]:
    from tlkit.active.strategies.uncertainty import margin_scores, mean_entropy_scores

    order = [p for p in query if p not in labels]
    seen = set(order)
    uncertainty = mean_entropy_scores(probs) if multilabel else margin_scores(probs)
    by_margin = np.argsort(-uncertainty, kind="stable")  # least certain first
    order += [paths[i] for i in by_margin if paths[i] not in labels and paths[i] not in seen]
    return {p: r for r, p in enumerate(order, start=1)}


def _sigmoid_files(predictor, files: list[Path]) -> list[np.ndarray | None]:
    """Per-class probabilities ``[k]`` (sigmoids of the run's logits) of image files, None for a file that
    cannot be decoded: a multi-label head round's model (its classifier gives one logit per class)."""
    import torch

    from tlkit.data import ImageRecord

    out: list[np.ndarray | None] = [None] * len(files)
    loader = predictor.loader([ImageRecord(Path(f), Path(f).name, None) for f in files])
    with torch.no_grad():
        for batch in loader:
            if batch.images is None or len(batch.indices) == 0:
                continue
            probs = torch.sigmoid(predictor.model(batch.images).float()).numpy()
            for i, row in zip(batch.indices.tolist(), probs):
                out[i] = row
    return out


def _event_id(obj: dict[str, Any], what: str) -> int | None:
    """The ``id`` of a webhook's task or annotation: a whole number (or its digits), or None when absent."""
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise BadRequest(f"the {what} id must be a whole number, not {str(value)[:50]!r}")


def _id_text(value: Any, index: int) -> str:
    """A task's id for a message: short, whatever a client sent."""
    return str(value)[:50] if isinstance(value, (int, str)) else str(index)


def choices_names(label_config: str | None) -> tuple[str, str]:
    """(from_name, to_name) of the first Choices control of a Label Studio config (tlkit's by default)."""
    if label_config is not None and not isinstance(label_config, str):
        raise BadRequest("label_config must be the labeling config's XML text")
    if label_config:
        try:
            for el in ET.fromstring(label_config).iter("Choices"):
                return el.get("name", ls.FROM_NAME), el.get("toName", ls.TO_NAME)
        except ET.ParseError:
            raise BadRequest("label_config is not valid XML") from None
    return ls.FROM_NAME, ls.TO_NAME


def _small_fits(train: str):
    """One BLAS thread for head-mode retrains.

    The head's L-BFGS fits are tiny (a few thousand parameters). With two BLAS threads on a busy
    2-core machine, each step waited on a spinning thread: a 10,000-image retrain measured 13-27 s,
    against 0.15 s for the same fits on one thread. Fine-tune retrains keep torch's threads.
    """
    import contextlib

    if train != "head":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class Backend:
    """A project served to Label Studio (see the module docstring).

    Args:
        project_dir: the tlkit project.
        train, strategy, batch, epochs, ssl: how each retrain runs (as ``al-round``; ``ssl`` None: project.yaml's).
        retrain_every: retrain after this many new annotations (0: only on START_TRAINING).
        client: a Label Studio API client (:class:`tlkit.serve.lsclient.LabelStudioClient`), or None.
        resolve: the annotator rule for several annotations of one image (see al-import).
    """

    def __init__(self, project_dir: str | Path, *, train: str = "head", strategy: str = "auto", batch: int = 20,
                 epochs: int | None = None, retrain_every: int = 10, client=None, resolve: str = "agree",
                 add_new: bool = False, ssl: str | None = None):
        self.project = Project.open(project_dir)
        self.train, self.strategy, self.batch, self.epochs = train, strategy, batch, epochs
        self.retrain_every, self.client, self.resolve, self.add_new = retrain_every, client, resolve, add_new
        self.ssl = ssl
        self._model: tuple[str, Any] | None = None  # (version, Predictor) of the served round, for new images
        self.served: Served | None = None
        self.pending = 0  # annotations since the last retrain started
        self.retrains = 0
        self.training = False
        self.last_error: str | None = None
        self._annotations: dict[int, tuple[int, str]] = {}  # annotation id -> (task id, pool path)
        self._shown: str | None = None  # the version Label Studio's project shows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the served model and start the retrain worker (retraining at once if labels changed)."""
        self.served = load_served(self.project)
        self._worker = threading.Thread(target=self._work, name="tlkit-retrain", daemon=True)
        self._worker.start()
        if self._labels_changed_since_last_round():
            log.info("labels changed since the last round: retraining")
            self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)

    @property
    def version(self) -> str:
        return self.served.version if self.served else "tlkit-0000"

    def _labels_changed_since_last_round(self) -> bool:
        rounds = self.project.rounds()
        if not rounds:
            return bool(self.project.labels())
        metrics = self.project.round_dir(rounds[-1]) / "metrics.json"
        try:
            m = read_json(metrics)
        except (OSError, ValueError):
            return True
        labels = self.project.labels()
        if isinstance(m, dict) and "labels_sha256" in m:  # the labels themselves: a relabel changes them
            return labels_digest(labels) != m["labels_sha256"]
        return not isinstance(m, dict) or len(labels) != m.get("labeled", 0) + m.get("unlabelable", 0)

    # ------------------------------------------------------------------ predictions
    def predict(self, tasks: list[dict[str, Any]], label_config: str | None = None) -> list[dict[str, Any]]:
        """One Label Studio prediction per task; BadRequest names the first task that is not a pool image.

        A task names its image by ``data.tlkit_path`` or ``data.image`` (a Label Studio URL). Only a
        pool image (:func:`~tlkit.active.poolpath.pool_file`: inside the pool folder, links followed)
        is ever opened; anything else, outside or missing alike, is the same 400.
        """
        from_name, to_name = choices_names(label_config)
        urls, pool = self.project.image_urls(), set(self.project.pool_paths())
        served = self.served
        paths, new = [], []
        for i, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise BadRequest(f"task {i} has no 'data' object")
            named, image = ls.task_path(task["data"].get("tlkit_path"), task["data"].get(ls.DATA_KEY), urls)
            path = named if named in pool else pool_file(self.project.pool_root, named)
            if path is None:
                raise BadRequest(f"task {_id_text(task.get('id'), i)}: image {image[:200]!r} is not a pool image; "
                                 "put it in the pool folder (tlkit al-add) or fix the task's URL")
            if path not in pool:
                new.append(path)  # a new image in the pool folder: embedded now
            paths.append(path)
        new = list(dict.fromkeys(new))
        fresh = self._predict_new(new, served, from_name, to_name) if new else {}
        if new and self.add_new:
            added = add_paths(self.project, new)
            log.info("added %d new images to the pool; the next retrain ranks them", len(added))
        return [fresh[p] if p in fresh else self._prediction(p, served, from_name, to_name) for p in paths]

    def _predict_new(self, paths: list[str], served: Served | None, from_name: str, to_name: str
                     ) -> dict[str, dict[str, Any]]:
        """Predictions for images that are not in the pool yet: the served round's model on the image
        (the run's :class:`~tlkit.train.predictor.Predictor`, as ``tlkit predict``); an image that
        cannot be decoded gets no prediction."""
        if served is None:
            return {p: {"model_version": self.version, "score": 1.0, "result": []} for p in paths}
        from tlkit.active.round import predicted_label

        predictor = self._round_predictor(served)
        files = [self.project.pool_root / p for p in paths]
        probs = _sigmoid_files(predictor, files) if served.multilabel else predictor.predict_files(files)
        out = {}
        for p, row in zip(paths, probs):
            result = []
            if row is not None and row.any():
                label, conf = predicted_label(tuple(predictor.classes), row, multilabel=served.multilabel)
                result = ls.choice_result(label, conf, from_name, to_name, multilabel=served.multilabel)
            out[p] = {"model_version": served.version, "score": 1.0, "result": result}  # ranked at the next retrain
        return out

    def _round_predictor(self, served: Served):
        if self._model is None or self._model[0] != served.version:
            from tlkit.train.predictor import Predictor

            self._model = (served.version, Predictor.load(self.project.round_dir(served.round) / "model"))
        return self._model[1]

    def _prediction(self, path: str, served: Served | None, from_name: str, to_name: str) -> dict[str, Any]:
        from tlkit.active.round import predicted_label

        if served is None or path not in served.index:
            return {"model_version": self.version, "score": 1.0, "result": []}  # no model for it yet
        label, conf = predicted_label(served.classes, served.probs[served.index[path]], multilabel=served.multilabel)
        rank = served.rank.get(path)
        score = ls.rank_score(rank, len(served.rank)) if rank else 1.0  # labeled images last
        return {"model_version": served.version, "score": score,
                "result": ls.choice_result(label, conf, from_name, to_name, multilabel=served.multilabel)}

    # ------------------------------------------------------------------ annotations in
    def handle_event(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A Label Studio webhook; labels are merged at once, retraining is queued."""
        if not isinstance(payload, dict):
            raise BadRequest("the webhook body must be a JSON object")
        action = payload.get("action")
        if action in LABEL_EVENTS:
            return self._annotated(payload)
        if action == "ANNOTATIONS_DELETED":
            return self._deleted(payload)
        if action in TRAIN_EVENTS:
            self._wake.set()
            return {"status": "retrain queued"}
        return {"status": "ignored", "action": action}

    def _annotated(self, payload: dict[str, Any]) -> dict[str, Any]:
        tasks = payload.get("task")
        tasks = tasks if isinstance(tasks, list) else [tasks]
        anns = payload.get("annotation")
        anns = anns if isinstance(anns, list) else [anns]
        imported = 0
        for task, ann in zip(tasks, anns):
            if not isinstance(task, dict) or not isinstance(ann, dict):
                raise BadRequest("an annotation event needs 'task' and 'annotation' objects")
            imported += self._import_task(task, ann)
        self._count(imported)
        return {"status": "ok", "imported": imported, "model_version": self.version}

    def _import_task(self, task: dict[str, Any], ann: dict[str, Any]) -> int:
        task_id, ann_id = _event_id(task, "task"), _event_id(ann, "annotation")
        if self.client is not None and task_id is not None:
            task = self.client.task(task_id)  # every annotation of the task: the annotator rule applies
        else:
            task = {**task, "annotations": [ann]}  # only this one: the latest annotation of an image wins
        votes = ls.task_votes(task, self.project.image_urls(), f"Label Studio task {task_id}",
                              multilabel=self.project.multilabel)
        if not votes:
            return 0
        path = votes[0].path
        if path is None or path not in set(self.project.pool_paths()):
            raise BadRequest(f"Label Studio task {task_id}: image {votes[0].image[:200]!r} is not in the pool; "
                             "add it to the pool folder and run `tlkit al-add`")
        if ann_id is not None:
            self._annotations[ann_id] = (task_id, path)
        rep = self._retry_busy(lambda: merge_votes(self.project, votes, f"Label Studio task {task_id}", overwrite=True,
                                                   resolve=self.resolve, what="tlkit serve"))
        return rep.added + rep.relabeled

    def _deleted(self, payload: dict[str, Any]) -> dict[str, Any]:
        anns = payload.get("annotations") or []
        if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
            raise BadRequest("'annotations' of ANNOTATIONS_DELETED must be a list of objects")
        changed = 0
        for ann_id in [_event_id(a, "annotation") for a in anns]:
            task_id, path = self._annotations.pop(ann_id, (None, None)) if ann_id is not None else (None, None)
            if path is None:
                log.warning("annotation %s was deleted, but this server did not import it; its label is kept", ann_id)
                continue
            remaining = self.client.task(task_id) if self.client is not None else {"annotations": []}
            votes = ls.task_votes({**remaining, "data": {"tlkit_path": path}}, self.project.image_urls(), "task",
                                  multilabel=self.project.multilabel)
            if votes:
                self._retry_busy(lambda: merge_votes(self.project, votes, f"Label Studio task {task_id}",
                                                     overwrite=True, resolve=self.resolve, what="tlkit serve"))
            else:
                changed += self._retry_busy(lambda: forget_labels(self.project, [path]))
        self._count(changed)
        return {"status": "ok", "removed": changed}

    def _count(self, n: int) -> None:
        with self._lock:
            self.pending += n
            if n and self.retrain_every and self.pending >= self.retrain_every:
                self._wake.set()

    def _retry_busy(self, fn, timeout: float = 60.0):
        """Run ``fn``; while a CLI command holds the project lock, wait for it and retry."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except TlkitError as e:
                if "is busy" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # ------------------------------------------------------------------ retraining
    def request_retrain(self) -> None:
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._lock:
                self.pending = 0
            try:
                self._retrain()
            except Exception as e:  # noqa: BLE001 - the server keeps serving the last model
                self.last_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.error("retrain failed (the last model stays served): %s", self.last_error)

    def _retrain(self) -> None:
        from tlkit.active.round import run_round

        self.training = True
        try:
            t = time.perf_counter()
            with _small_fits(self.train):
                res = self._retry_busy(lambda: run_round(self.project.root, batch=self.batch, strategy=self.strategy,
                                                         train=self.train, new=True, epochs=self.epochs,
                                                         ssl=self.ssl), timeout=3600)
            self.project = Project.open(self.project.root)  # classes may have grown
            self.served = load_served(self.project)
            self.retrains += 1
            self.last_error = None
            log.info("retrained: round %d, serving %s (%.1f s)", res.round, self.version, time.perf_counter() - t)
        finally:
            self.training = False
        if self.client is not None:
            self._tell_label_studio()

    def _tell_label_studio(self) -> None:
        """After a retrain: Label Studio fetches the new version's predictions, then shows them."""
        if self.client.project is None:
            return
        try:
            self.client.retrieve_predictions()
            self._shown = self.version if self.client.show_version(self.version) else None
            served, urls = self.served, self.project.image_urls()
            if served is not None:
                n = self.client.update_ranks(lambda d: served.rank.get(d.get("tlkit_path") or urls.path(str(d.get(ls.DATA_KEY, "")))))
                log.info("Label Studio: tlkit_rank updated in %d tasks", n)
        except Exception as e:  # noqa: BLE001 - Label Studio being down must not stop the loop
            log.warning("could not tell Label Studio about %s: %s", self.version, e)

    def after_predict(self) -> None:
        """Once Label Studio holds predictions of the served version, make its project show them."""
        if self.client is None or self.client.project is None or self._shown == self.version:
            return
        version = self.version

        def show() -> None:
            try:
                if self.client.show_version(version):
                    self._shown = version
            except Exception as e:  # noqa: BLE001
                log.info("Label Studio does not show %s yet: %s", version, e)

        threading.Timer(1.0, show).start()  # after Label Studio has stored the predictions just sent

    def status(self) -> dict[str, Any]:
        return {"model_version": self.version, "training": self.training, "retrains": self.retrains,
                "pending_annotations": self.pending, "last_error": self.last_error,
                "labels": sum(1 for v in self.project.labels().values() if v != SKIP_LABEL)}
