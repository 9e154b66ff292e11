"""One active-learning round: train on the labels, score the pool, select, write the query.

The round is built in ``rounds/NNNN.tmp/`` and renamed to ``rounds/NNNN/`` only when every file is
written, so a round killed at any point leaves the project as it was; running again completes it.
While the latest query still awaits labels, a new round selects nothing and returns the pending
batch instead (``new=True`` starts one anyway).

A multi-label project (``task: multilabel``) fits the one-vs-rest head on the labeled images' class
sets; query.csv's ``predicted`` is the predicted set (``cat;dog``: classes at p >= 0.5) and
``confidence`` the probability of that exact set; the Label Studio tasks carry it as a multi-choice
prediction.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

import tlkit
from tlkit.active import head as heads
from tlkit.active import labelstudio as ls
from tlkit.active.duplicate_groups import one_per_group, read_project_groups
from tlkit.active.labeltext import SKIP_LABEL, join_labels, split_labels
from tlkit.active.learner import (
    AUTO, HeadLearner, Learner, LearnerChoice, LearnerResult, Validation, check_train_mode, resolve_ssl,
)
from tlkit.active.project import Project, labels_digest
from tlkit.active.strategies import Approx, PoolView, check_task, get_strategy, select
from tlkit.core.errors import TlkitError
from tlkit.core.io import write_csv, write_json, write_text

log = logging.getLogger(__name__)

QUERY_COLUMNS = ("path", "rank", "score", "predicted", "confidence")
SCORES = "scores.npz"


@dataclass
class RoundResult:
    """What :func:`run_round` did.

    Attributes:
        round: the round number (the pending one when ``pending``).
        pending: True when nothing new was selected because the last query awaits labels.
        query: rows of the query (path, rank, score, predicted, confidence).
        metrics: the round's metrics.json content (empty when pending).
        dir: the round's folder.
        validation: the round model's validation accuracy and how it was estimated (empty when pending).
    """

    round: int
    pending: bool
    query: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    dir: Path | None = None
    validation: Validation = field(default_factory=Validation)


@dataclass
class PoolData:
    """The pool as arrays: embeddings of decodable images and their labels."""

    paths: list[str]  # [n] pool paths with embeddings
    embeddings: np.ndarray  # [n, d]
    y: np.ndarray  # [n] class index, -1 unlabeled, -2 unlabelable
    classes: tuple[str, ...]
    labels_sha256: str  # project.labels_digest of every label the round saw (gone images' included)
    targets: np.ndarray | None = None  # multi-label: [n, k] uint8 class sets of the labeled rows (0 elsewhere)

    @property
    def multilabel(self) -> bool:
        return self.targets is not None

    def fit_targets(self) -> np.ndarray:
        """What the learner fits: ``y`` [n], or the class sets [n, k] of a multi-label project."""
        return self.targets if self.targets is not None else self.y

    def known_labels(self) -> np.ndarray:
        """PoolView ``labels``: [n] class, -1 unknown; multi-label [n, k] 0/1 rows, -1 rows unknown."""
        if self.targets is None:
            return np.where(self.y >= 0, self.y, -1)
        return np.where((self.y >= 0)[:, None], self.targets.astype(np.int64), -1)

    def predicted(self, probs: np.ndarray, i: int) -> tuple[str, float]:
        """Row ``i``'s predicted label (multi-label: the set at p >= 0.5, as text) and its probability."""
        return predicted_label(self.classes, probs[i], multilabel=self.multilabel)


def predicted_label(classes: tuple[str, ...], p: np.ndarray, *, multilabel: bool = False) -> tuple[str, float]:
    """A model's label for one image from its probabilities ``p [k]``, and the probability of that label.

    Single-label: the most probable class. Multi-label: the set of classes at p >= 0.5 as text
    (:func:`~tlkit.active.labeltext.join_labels`; ``""`` = none), with the probability of exactly that set
    under independent classes, ``prod_j (p_j if present else 1 - p_j)``.
    """
    if not multilabel:
        k = int(p.argmax())
        return classes[k], float(p[k])
    p = np.asarray(p, np.float64)
    present = p >= 0.5
    return join_labels(c for c, on in zip(classes, present) if on), float(np.prod(np.where(present, p, 1 - p)))


@dataclass(frozen=True)
class EmbeddingCache:
    """Where a project's pool embeddings live for one machine (:func:`embedding_cache`).

    Attributes:
        folder: ``cache/<backbone>-<weights>-<size>-<device>-<engine>-<precision>[-<dtype>]``.
        device: the device kind that embeds (``cpu``, ``cuda``, ...).
        engine, precision: what embeds (planned: :func:`tlkit.engines.planned_engine`; the folder's
            ``meta.json`` says what ran).
        others: the cache folders of the same backbone, weights and size made on another device or with
            another engine (kept, never mixed in).
    """

    folder: Path
    device: str
    engine: str
    precision: str
    others: tuple[str, ...] = ()

    def to_metrics(self) -> dict[str, Any]:
        """The round's ``metrics.json`` entry ``embeddings``."""
        return {"cache": self.folder.name, "device": self.device, "engine": self.engine, "precision": self.precision,
                "other_caches": list(self.others)}


def _adopt_legacy(base: Path, stem: str, dtype: str) -> None:
    """Rename a cache folder named before the device was part of the key (``base`` = stem + dtype) after
    what its ``meta.json`` says made it; a folder without a readable meta.json is left as it is (never used)."""
    from tlkit.core.io import read_json

    try:
        meta = read_json(base / "meta.json")
        made = f"{torch_device_kind(meta['device'])}-{meta['engine']}-{meta['precision']}"
    except Exception:  # noqa: BLE001 - unfinished or foreign folder: extract's own recovery ignores it too
        return
    target = base.with_name(f"{stem}-{made}{dtype}")
    if not target.exists():
        os.replace(base, target)
        log.info("embedding cache %s renamed %s (made on %s with %s %s)", base.name, target.name, meta["device"],
                 meta["engine"], meta["precision"])


def torch_device_kind(device: str) -> str:
    """``cuda`` for ``cuda:0``, ``cpu`` for ``cpu``: the part of a device name the cache is keyed by."""
    return str(device).split(":", 1)[0]


def embedding_cache(project: Project, *, device: str = "auto", engine: str | None = None,
                    backbone=None) -> EmbeddingCache:
    """The embedding cache folder for this machine, by the documented rule (see :func:`embeddings_for`).

    ``backbone``: the project's :class:`tlkit.models.backbones.Backbone` when already created."""
    from tlkit.core.runtime import resolve_device
    from tlkit.engines import planned_engine
    from tlkit.models.backbones import create_backbone

    cfg = project.config
    bb = backbone or create_backbone(cfg.backbone, weights=cfg.weights)
    size = bb.data_config.at_size(cfg.image_size).input_size[-1]
    stem = f"{bb.name.replace(':', '_')}-{(bb.weights.sha256 or bb.weights.source)[:12]}-{size}"
    dtype = "" if cfg.embedding_dtype == "float32" else f"-{cfg.embedding_dtype}"
    dev = resolve_device(device)
    name, precision = planned_engine(engine or cfg.engine, dev, "auto")
    if (project.cache_dir / (stem + dtype) / "meta.json").is_file():
        _adopt_legacy(project.cache_dir / (stem + dtype), stem, dtype)
    folder = project.cache_dir / f"{stem}-{dev.type}-{name}-{precision}{dtype}"

    def same_set(p: Path) -> bool:  # another device/engine's cache of this backbone, weights, size and dtype
        rest = p.name[len(stem) + 1:].split("-") if p.name.startswith(stem + "-") else []
        return len(rest) == 3 + bool(dtype) and (not dtype or "-" + rest[3] == dtype)

    others = tuple(sorted(p.name for p in project.cache_dir.glob(f"{stem}-*") if p.is_dir() and p != folder
                          and same_set(p) and (p / "meta.json").is_file()))
    return EmbeddingCache(folder, dev.type, name, precision, others)


def embeddings_for(project: Project, *, device: str = "auto", engine: str | None = None,
                   progress: Callable[[int], None] | None = None):
    """Pool embeddings from the project's cache (computed once per backbone + weights + size + device + engine).

    ``engine``: ``auto`` | ``torch`` | ``openvino`` (:mod:`tlkit.engines`); ``None``: project.yaml's.

    The rule for moving a project between machines: the cache folder is named by everything that decides
    its numbers, the device kind, engine and precision included
    (``cache/resnet50-<weights>-224-cuda-torch-bf16``). On a machine of another kind (a project made on a
    laptop CPU, then run on a GPU server, or back) the pool is embedded once more into that machine's own
    folder, with one warning naming the folder it did not use; the other folder is kept, so moving back
    costs nothing. Rows from two engines are never mixed in one cache: strategies compare pool rows with
    each other, and a head trained on one engine's rows scores the other's. A folder named before this
    rule (no device part) is renamed after what its ``meta.json`` says made it.

    Returns:
        (paths [n], embeddings [n, d]): decodable pool images in pool order; the embeddings are a
        read-only memmap of the cache, float32 or float16 (``project.yaml``: ``embedding_dtype``),
        so a big pool is paged in from disk instead of copied.
    """
    paths, feats, _ = _embeddings(project, device, engine, progress)
    return paths, feats


def _embeddings(project: Project, device: str, engine: str | None, progress: Callable[[int], None] | None):
    """:func:`embeddings_for` and the :class:`EmbeddingCache` it used."""
    from tlkit.features.extract import extract_features, load_features
    from tlkit.models.backbones import create_backbone

    cfg = project.config
    bb = create_backbone(cfg.backbone, weights=cfg.weights)
    size = bb.data_config.at_size(cfg.image_size).input_size[-1]
    cache = embedding_cache(project, device=device, engine=engine, backbone=bb)
    if cache.others and not (cache.folder / "meta.json").is_file():
        log.warning("no pool embeddings made on %s with %s %s yet: embedding the pool into %s; %s (made on another "
                    "device or engine) kept, not mixed in", cache.device, cache.engine, cache.precision,
                    cache.folder.name, ", ".join(cache.others))
    extract_features(project.pool_source(), cache.folder, backbone=bb, image_size=size, device=device,
                     engine=engine or cfg.engine, progress=progress, dtype=cfg.embedding_dtype)
    feats, index, _ = load_features(cache.folder, mmap=True)
    return [r["path"] for r in index], feats, cache


def pool_data(project: Project, paths: list[str], embeddings: np.ndarray) -> PoolData:
    """The pool's labels as arrays: ``y`` [n] (-1 unlabeled, -2 unlabelable; multi-label: 0 labeled) and,
    in a multi-label project, ``targets`` [n, k]."""
    labels = project.labels()
    classes = project.config.classes
    idx = {c: i for i, c in enumerate(classes)}
    y = np.full(len(paths), -1, dtype=np.int64)
    targets = np.zeros((len(paths), len(classes)), np.uint8) if project.multilabel else None
    for i, p in enumerate(paths):
        lab = labels.get(p)
        if lab is None:
            continue
        if lab == SKIP_LABEL:
            y[i] = -2
        elif targets is not None:
            y[i] = 0
            targets[i, [idx[c] for c in split_labels(lab)]] = 1
        else:
            y[i] = idx[lab]
    return PoolData(paths, embeddings, y, classes, labels_digest(labels), targets)


def _candidates(y: np.ndarray, max_pool: int | None, rng: np.random.Generator) -> np.ndarray:
    cand = y == -1
    if max_pool and cand.sum() > max_pool:
        keep = rng.choice(np.flatnonzero(cand), size=max_pool, replace=False)
        cand = np.zeros_like(cand)
        cand[keep] = True
    return cand


def _query_rows(data: PoolData, sel, probs: np.ndarray | None) -> list[dict[str, Any]]:
    rows = []
    for rank, (i, score) in enumerate(zip(sel.indices, sel.scores), start=1):
        row = {"path": data.paths[i], "rank": rank, "score": f"{float(score):.6g}", "predicted": "", "confidence": ""}
        if probs is not None:
            label, conf = data.predicted(probs, i)
            row["predicted"], row["confidence"] = label, f"{conf:.4f}"
        rows.append(row)
    return rows


def _save_head_model(folder: Path, project: Project, head: heads.LinearHead, image_size: int | None) -> None:
    """The backbone with the head folded in as its classifier: a run usable by evaluate/predict."""
    import torch

    from tlkit.models.backbones import create_backbone
    from tlkit.train.checkpoint import RunMeta, save_weights
    from tlkit.train.model import architecture_kwargs

    cfg = project.config
    bb = create_backbone(cfg.backbone, weights=cfg.weights, num_classes=len(head.classes))
    w, b = head.folded()
    classifier = bb.model.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(w))
        classifier.bias.copy_(torch.from_numpy(b))
    config, task = {"head": "standardised logistic regression"}, {}
    if head.multilabel:  # the classifier's outputs are per-class logits: evaluate/predict apply a sigmoid
        from tlkit.train.multilabel import DEFAULT_THRESHOLD

        config = {"head": "standardised one-vs-rest logistic regression", "task": "multilabel"}
        task = {"task": "multilabel", "thresholds": (DEFAULT_THRESHOLD,) * len(head.classes)}
    meta = RunMeta(bb.name, tuple(head.classes), bb.data_config.at_size(image_size),
                   architecture_kwargs(bb.name, bb.weights.source), weights_origin=bb.weights.to_dict(), train="head",
                   config=config, **task)
    save_weights(folder / "best.safetensors", bb.model.state_dict(), meta.to_dict())


def _metrics(data: PoolData, extra: dict[str, Any]) -> dict[str, Any]:
    if data.targets is not None:  # images labeled with each class present
        per_class = {c: int(data.targets[:, i].sum()) for i, c in enumerate(data.classes)}
    else:
        per_class = {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)}
    return {
        "labeled": int((data.y >= 0).sum()),
        "unlabelable": int((data.y == -2).sum()),
        "labeled_per_class": per_class,
        "pool": len(data.paths),
        "labels_sha256": data.labels_sha256,
        **extra,
    }


def run_round(
    project_dir: str | os.PathLike,
    *,
    batch: int = 20,
    strategy: str = "auto",
    train: str = "head",
    max_pool: int | None = None,
    new: bool = False,
    device: str = "auto",
    epochs: int | None = None,
    engine: str | None = None,
    ssl: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RoundResult:
    """Run one round in ``project_dir`` (see the module docstring).

    Args:
        batch: images to select.
        strategy: a registered strategy name (``tlkit strategies`` lists them).
        train: ``head`` (frozen backbone, cached embeddings, linear head; seconds), ``finetune``
            (the finetune engine on the labeled images; GPU when present) or ``auto`` (the round chooses
            the learner and its ``ssl``: :func:`_fit_auto`; ``metrics.json`` says why in ``learner_choice``).
        max_pool: score only a random subset of this many unlabeled images.
        new: start a new round even if the last query still awaits labels.
        epochs: epochs for ``train="finetune"``.
        engine: inference engine for the pool (``auto`` | ``torch`` | ``openvino``; ``None``: project.yaml's).
        ssl: how the unlabeled pool teaches the learner: head rounds ``self-training`` (pseudo-labels,
            :mod:`tlkit.active.semi`) or ``off``; finetune rounds ``fixmatch`` (consistency on the pool
            images, :mod:`tlkit.train.consistency`) or ``off``; ``None``: project.yaml's, resolved by
            :func:`tlkit.active.learner.resolve_ssl`.
        progress: called with images embedded (first round of a backbone only).
    """
    check_train_mode(train, auto=True)
    info = get_strategy(strategy)
    if batch < 1:
        raise TlkitError(f"--batch must be at least 1 (got {batch})")
    project = Project.open(project_dir)
    check_task(info, project.config.task)
    if project.multilabel and train != "head":
        raise TlkitError(f"--train {train} rounds are single-label; a multi-label project trains with --train head")
    if train == AUTO and ssl is not None:
        raise TlkitError("--train auto chooses --ssl too; drop --ssl, or name the learner with --train head|finetune")
    ssl = resolve_ssl(train, ssl, project.config.ssl) if train != AUTO else None
    with project.lock("al-round"):
        pending = project.pending()
        rounds = project.rounds()
        if pending and not new:
            return RoundResult(rounds[-1], True, pending, dir=project.round_dir(rounds[-1]))
        n = (rounds[-1] if rounds else 0) + 1
        return _new_round(project, n, batch, info, train, max_pool, device, epochs, progress,
                          engine or project.config.engine, ssl)


def _fit_learner(project: Project, data: PoolData, n: int, train: str, needs: tuple[str, ...], seed: int,
                 model_dir: Path, device: str, epochs: int | None, engine: str, ssl: str) -> LearnerResult:
    """The round's learner fitted on the labeled pool rows (the finetune run is kept in ``model_dir``)."""
    from tlkit.active.finetune import DEFAULT_EPOCHS, FinetuneLearner

    cfg = project.config
    if train == "head":
        learner: Learner = HeadLearner(data.embeddings, data.classes, ssl=ssl)
        return learner.fit(data.y >= 0, data.fit_targets(), seed=seed, needs=needs)
    else:
        learner = FinetuneLearner(
            [project.pool_root / p for p in data.paths], data.classes, recipe=cfg.recipe, device=device,
            config={"backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size,
                    "epochs": epochs or DEFAULT_EPOCHS},
            previous=_previous_model(project, n), run_dir=model_dir, engine=engine,
            pixel_store=project.cache_dir / "pixels", ssl=ssl)
    return learner.fit(data.y >= 0, data.y, seed=seed, needs=needs)


def _fit_auto(project: Project, data: PoolData, n: int, needs: tuple[str, ...], seed: int, model_dir: Path,
              device: str, epochs: int | None, engine: str) -> tuple[LearnerResult, LearnerChoice]:
    """``--train auto``: a fine-tune round on a GPU once every class has
    :data:`~tlkit.active.learner.FINETUNE_MIN_PER_CLASS` labels; otherwise both heads (plain and self-trained)
    fitted with their cross-validation, and the one :func:`~tlkit.active.learner.choose_head` picks is used."""
    from tlkit.active.learner import Candidate, choose_head, finetune_rule
    from tlkit.core.constants import DEFAULT_FINETUNE_SSL
    from tlkit.core.runtime import resolve_device

    smallest = min(int((data.y == i).sum()) for i in range(len(data.classes))) if data.classes else 0
    finetune, why = finetune_rule(smallest, resolve_device(device).type == "cuda")
    if finetune:
        res = _fit_learner(project, data, n, "finetune", needs, seed, model_dir, device, epochs, engine,
                           DEFAULT_FINETUNE_SSL)
        skipped = "not fitted: a fine-tune round was due"
        cands = (Candidate(res.notes["learner"], res.validation.accuracy, res.train_s),
                 Candidate("head", note=skipped), Candidate("head+self-training", note=skipped))
        return res, LearnerChoice("finetune", DEFAULT_FINETUNE_SSL, res.notes["learner"], cands, why)
    fits = {ssl: HeadLearner(data.embeddings, data.classes, ssl=ssl).fit(data.y >= 0, data.y, seed=seed, needs=needs)
            for ssl in ("off", "self-training")}
    ssl, reason = choose_head(fits)
    cands = tuple(Candidate(f.notes["learner"], f.validation.accuracy, f.train_s) for f in fits.values())
    cands += (Candidate("finetune", note=why),)
    return fits[ssl], LearnerChoice("head", ssl, fits[ssl].notes["learner"], cands, f"{reason}; finetune: {why}")


def _new_round(project: Project, n: int, batch: int, info, train: str, max_pool, device, epochs, progress,
               engine: str, ssl: str | None) -> RoundResult:
    t0 = time.perf_counter()
    final = project.round_dir(n)
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True)
    paths, emb, cache = _embeddings(project, device, engine, progress)
    data = pool_data(project, paths, emb)
    seed = project.config.seed * 1000 + n
    rng = np.random.default_rng(seed)
    requested = train
    if train == AUTO:
        fitted, choice = _fit_auto(project, data, n, info.needs, seed, tmp / "model", device, epochs, engine)
        train, ssl = choice.train, choice.ssl
        log.info("--train auto: %s (%s)", choice.chosen, choice.reason)
    else:
        fitted = _fit_learner(project, data, n, train, info.needs, seed, tmp / "model", device, epochs, engine, ssl)
    probs, extra = fitted.probs, fitted.metrics()
    if requested == AUTO:
        extra["learner_choice"] = choice.to_metrics()
    pool = PoolView(embeddings=data.embeddings, labeled=data.y != -1,
                    candidates=_one_per_duplicate_group(project, data.paths, _candidates(data.y, max_pool, rng)),
                    probs=probs, mc_probs=fitted.mc_probs, labels=data.known_labels(), multilabel=data.multilabel)
    t = time.perf_counter()
    sel = select(info.name, pool, batch, seed=seed, approx=Approx(dim=project.config.projection_dim))
    extra["select_s"] = round(time.perf_counter() - t, 3)
    extra["strategy_plan"] = getattr(sel, "strategy", None) or info.name
    rows = _query_rows(data, sel, probs)
    extra["stopping"] = _stopping_record(project, n, data, probs, fitted.validation.accuracy, tmp)
    write_csv(tmp / "query.csv", QUERY_COLUMNS, ([r[c] for c in QUERY_COLUMNS] for r in rows))
    write_json(tmp / "labelstudio.json", ls.tasks(rows, project.image_urls(), n, multilabel=data.multilabel))
    if fitted.head is not None:
        _save_head_model(tmp / "model", project, fitted.head, project.config.image_size)
    metrics = _metrics(data, {"round": n, "strategy": info.name, "train": train, "selected": len(rows),
                                       "candidates": int(pool.candidates.sum()), **extra,
                                       "embeddings": cache.to_metrics(),
                                       "elapsed_s": round(time.perf_counter() - t0, 3)})
    write_json(tmp / "metrics.json", metrics)
    if probs is not None:
        save_scores(tmp / SCORES, data.paths, probs, data.classes)
    write_text(tmp / "config.yaml", yaml.safe_dump({
        "round": n, "batch": batch, "strategy": info.name, "train": requested, "max_pool": max_pool, "seed": seed,
        "epochs": epochs, "ssl": ssl, "project": yaml.safe_load(project.config.to_yaml()), "tlkit_version": tlkit.__version__,
    }, sort_keys=False))
    os.replace(tmp, final)
    return RoundResult(n, False, rows, metrics, final, fitted.validation)


def save_scores(path: Path, paths: list[str], probs: np.ndarray, classes: tuple[str, ...]) -> None:
    """The round model's class probabilities for the pool: what ``tlkit serve`` answers with."""
    from tlkit.core.io import atomic_write

    with atomic_write(path, "wb") as f:
        np.savez(f, paths=np.array(paths, dtype=str), probs=probs.astype(np.float32), classes=np.array(classes, dtype=str))


def load_scores(path: Path) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """(pool paths [n], probabilities [n, k] float32, classes [k]) saved by a round (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return [str(p) for p in z["paths"]], z["probs"], tuple(str(c) for c in z["classes"])


def _one_per_duplicate_group(project: Project, paths: list[str], candidates: np.ndarray) -> np.ndarray:
    """At most one candidate per duplicate group saved by `tlkit audit` (none saved: unchanged)."""
    groups = read_project_groups(project.root)
    if not groups:
        return candidates
    kept = one_per_group(paths, candidates, groups)
    log.info("%d candidates held back: copies of other candidates (tlkit audit)", int(candidates.sum() - kept.sum()))
    return kept


def _stopping_record(project: Project, n: int, data: PoolData, probs, cv: float | None, tmp: Path) -> dict[str, Any]:
    """Predictions on the stop set (written to ``stop_set.json``) and their agreement with the last round's."""
    from tlkit.active import stopping
    from tlkit.core.io import read_json

    record: dict[str, Any] = {"kappa": None, "cv_gain": None}
    if probs is None:
        return record
    pos = stopping.stop_set([p for p, y in zip(data.paths, data.y) if y == -1])
    unlabeled = np.flatnonzero(data.y == -1)[pos]
    current = {data.paths[i]: data.predicted(probs, i)[0] for i in unlabeled}
    write_json(tmp / "stop_set.json", current)
    for r in reversed(project.rounds()):
        folder = project.round_dir(r)
        if r < n and (folder / "stop_set.json").exists():
            record["kappa"] = stopping.agreement(read_json(folder / "stop_set.json"), current)
            metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
            before = Validation.from_metrics(metrics).accuracy
            record["cv_gain"] = None if before is None or cv is None else cv - before
            break
    return record


def _previous_model(project: Project, n: int) -> Path | None:
    for r in reversed(project.rounds()):
        if r < n and (project.round_dir(r) / "model" / "best.safetensors").exists():
            return project.round_dir(r) / "model"
    return None

