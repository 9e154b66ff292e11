"""tlkit's public Python API: the functions a notebook calls, re-exported as ``tlkit.*``.

Each function calls the same library function as the matching command, so Python and the CLI
cannot drift apart:

| Python                            | command            | library function                                   |
|-----------------------------------|--------------------|----------------------------------------------------|
| `tlkit.extract`                   | `tlkit extract`    | `tlkit.features.extract.extract_features`                   |
| `tlkit.finetune`                  | `tlkit finetune`   | `tlkit.train.make_config` + `tlkit.train.fit`      |
| `tlkit.evaluate`                  | `tlkit evaluate`   | `tlkit.train.evaluate_run`                         |
| `tlkit.predict`                   | `tlkit predict`    | `tlkit.train.predict`                              |
| `tlkit.load_run`                  | (evaluate/predict) | `tlkit.train.Predictor.load`                       |
| `tlkit.init_project`              | `tlkit al-init`    | `tlkit.active.project.Project.create`              |
| `Project.query`                   | `tlkit al-round`   | `tlkit.active.round.run_round`                     |
| `Project.teach`                   | `tlkit al-import`  | `tlkit.active.labels.import_labels` / `import_mapping` |
| `Project.status`                  | `tlkit al-status`  | `tlkit.active.status.project_status`               |
| `tlkit.simulate`                  | `tlkit al-simulate`| `tlkit.active.simulate.simulate_folders`           |

Importing this module (and ``tlkit``) loads neither torch nor scikit-learn; each function imports
what it needs when it is called.

Example:
    >>> import tlkit
    >>> feats = tlkit.extract("photos/", "feats/")                        # doctest: +SKIP
    >>> run = tlkit.finetune("photos/", "runs/photos", epochs=3)          # doctest: +SKIP
    >>> project = tlkit.init_project("proj", pool="unlabeled/")           # doctest: +SKIP
    >>> picks = project.query(20)                                         # doctest: +SKIP
    >>> project.teach({pick.path: "cat" for pick in picks})               # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

from tlkit.core.constants import DEFAULT_BACKBONE, DEFAULT_SSL
from tlkit.core.errors import TlkitError

if TYPE_CHECKING:
    from tlkit.active.labels import ImportReport
    from tlkit.active.simulate import SimulationResult
    from tlkit.active.status import ProjectStatus
    from tlkit.features.extract import ExtractResult
    from tlkit.train import FitResult, PredictResult, Predictor

PathLike = Union[str, os.PathLike]
Progress = Callable[[int], None]

#: The strategies :func:`simulate` compares when none are named (``tlkit al-simulate``'s default).
SIMULATE_STRATEGIES = ("random", "margin", "typiclust", "auto")

__all__ = [
    "Pick",
    "Project",
    "Query",
    "Simulation",
    "evaluate",
    "extract",
    "finetune",
    "init_project",
    "load_run",
    "predict",
    "simulate",
]


def _path_or_none(p: PathLike | None) -> str | None:
    return None if p is None else os.fspath(p)


# --------------------------------------------------------------------------- features and fine-tuning
def extract(
    images: PathLike,
    out: PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: PathLike | None = None,
    pretrained: bool = True,
    image_size: int | None = None,
    batch_size: int | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    decode: str = "auto",
    workers: int | None = None,
    dtype: str = "float32",
    strict: bool = False,
    progress: Progress | None = None,
) -> ExtractResult:
    """Embed every image under ``images`` with a frozen backbone (``tlkit extract``).

    Writes ``out/features.npy`` (``[N, D]``), ``out/index.csv`` (path, label, fingerprint per row) and
    ``out/meta.json``; resumable, and a re-run embeds only new or changed images.

    Args:
        images: a class-folder tree, a flat folder, or a CSV manifest ``path[,label]``.
        out: the output folder (created).
        backbone: a timm name, or ``tv:<name>`` for a torchvision model.
        weights: a local weights file (``.safetensors`` / ``.pth``) instead of the backbone's own.
        pretrained: ``False`` for random initial weights.
        image_size: square input size (default: the backbone's).
        batch_size: ``"auto"`` / ``None`` (8 on a CPU, the largest that fits on CUDA) or a number.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        engine: ``auto`` | ``torch`` | ``openvino``.
        decode: ``auto`` | ``cpu`` | ``device`` (where JPEGs are decoded).
        workers: decoding processes (default: half the cores from 4 up, else 0).
        dtype: storage of ``features.npy``: ``float32`` or ``float16``.
        strict: fail on an undecodable file instead of skipping it (listed in ``skipped.csv``).
        progress: called with the number of images finished after every batch.

    Returns:
        The :class:`~tlkit.features.extract.ExtractResult` (``count``, ``dim``, ``out``, ``meta``, speed).
        Load the features with :func:`tlkit.features.extract.load_features` or ``numpy.load``.

    Example:
        >>> res = tlkit.extract("photos/", "feats/", backbone="resnet18")       # doctest: +SKIP
        >>> x = numpy.load(res.out / "features.npy")                            # doctest: +SKIP
    """
    from tlkit.features.extract import extract_features

    return extract_features(images, out, backbone=backbone, weights=_path_or_none(weights), pretrained=pretrained,
                            image_size=image_size, batch_size=batch_size, device=device, precision=precision,
                            engine=engine, decode=decode, workers=workers, dtype=dtype, strict=strict,
                            progress=progress)


def finetune(
    data: PathLike,
    out: PathLike,
    *,
    recipe: str | PathLike | None = None,
    val: PathLike | None = None,
    resume: bool = False,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **config: Any,
) -> FitResult:
    """Fine-tune a pretrained backbone on a class-folder tree (``tlkit finetune``).

    Args:
        data: training images, one subfolder per class (or a labeled CSV manifest).
        out: the run folder: checkpoints, ``config.yaml``, ``metrics.json``, plots.
        recipe: a bundled recipe name (``tlkit recipes``) or a YAML file.
        val: validation images (default: a stratified split of ``data``).
        resume: continue the run in ``out`` from its last finished epoch.
        overrides: any config key, as ``["key=value", ...]`` or a mapping (``--set``); applied last.
        progress: called with the number of images finished after every step.
        on_epoch: called with each epoch's metrics row.
        **config: any :class:`~tlkit.train.TrainConfig` field, as the command's options: ``backbone``,
            ``epochs``, ``lr``, ``mode``, ``image_size``, ``batch_size``, ``device``, ``seed``, ...;
            ``None`` values are ignored.

    Returns:
        The :class:`~tlkit.train.FitResult` (``best``, ``history``, ``classes``, ``out``).

    Raises:
        TlkitError: an unknown config key or a bad value, or data that cannot be trained on.

    Example:
        >>> run = tlkit.finetune("flowers/train", "runs/flowers", recipe="finetune-fast", epochs=5)  # doctest: +SKIP
        >>> run.best["val_accuracy"]                                                                 # doctest: +SKIP
    """
    from tlkit.train import fit, make_config

    if config.get("weights") is not None:
        config["weights"] = os.fspath(config["weights"])
    cfg = make_config(recipe, overrides=overrides, **config)
    return fit(cfg, data=data, val=val, out=out, resume=resume, progress=progress, on_epoch=on_epoch)


def evaluate(
    run: PathLike,
    data: PathLike,
    *,
    checkpoint: str = "best",
    out: PathLike | None = None,
    tta: bool = False,
    batch_size: int | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    decode: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of a trained run on labeled images (``tlkit evaluate``).

    Writes ``RUN/evaluation.json`` (or ``out``), the per-image predictions and the plots beside it.

    Args:
        run: a run folder written by :func:`finetune` (or an active-learning round's folder).
        data: labeled images: one subfolder per class, or a labeled CSV manifest.
        checkpoint: ``best`` or ``last``.
        out: the metrics file (default ``RUN/evaluation.json``).
        tta: average with horizontally flipped images.
        batch_size: images per forward pass: ``"auto"`` / ``None`` or a number (as in :func:`extract`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        engine: ``auto`` | ``torch`` | ``openvino``.
        decode: ``auto`` | ``cpu`` | ``device`` (where JPEGs are decoded).
        workers: decoding processes (default: half the cores, at most 8, from 4 cores up; else 0).
        progress: called with the number of images finished after every batch.

    Returns:
        The metrics: ``accuracy``, ``f1_macro``, ``f1_weighted``, ``per_class``, ``confusion``,
        ``roc_auc_ovr``, ``average_precision_macro``, ``ece``, ``loss``, ``n``, ...
    """
    from tlkit.train import evaluate_run

    return evaluate_run(run, data, which=checkpoint, batch_size=batch_size, device=device, precision=precision,
                        workers=workers, tta=tta, out=out, engine=engine, decode=decode, progress=progress)


def predict(
    run: PathLike,
    images: PathLike,
    *,
    out: PathLike,
    topk: int = 5,
    tta: bool = False,
    checkpoint: str = "best",
    batch_size: int | str | None = None,
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    decode: str = "auto",
    workers: int | None = None,
    progress: Progress | None = None,
) -> PredictResult:
    """Predict a class for every image of a folder, a CSV manifest or one file (``tlkit predict``).

    Args:
        run: a run folder written by :func:`finetune`.
        images: a folder (recursive), a CSV manifest, or one image file.
        out: the CSV to write: ``path, label, probability, top2_label, top2_probability, ...``.
        topk: how many most likely classes per row.
        tta: average with horizontally flipped images.
        checkpoint: ``best`` or ``last``.
        batch_size: images per forward pass: ``"auto"`` / ``None`` or a number (as in :func:`extract`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        engine: ``auto`` | ``torch`` | ``openvino``.
        decode: ``auto`` | ``cpu`` | ``device`` (where JPEGs are decoded).
        workers: decoding processes (default: half the cores, at most 8, from 4 cores up; else 0).
        progress: called with the number of images finished after every batch.

    Returns:
        The :class:`~tlkit.train.PredictResult` (``out``, ``count``, ``skipped``, ``classes``).
        For probabilities in memory, use :func:`load_run` and ``Predictor.predict_files``.
    """
    from tlkit.train import predict as predict_images

    return predict_images(run, images, out=out, topk=topk, tta=tta, which=checkpoint, batch_size=batch_size,
                          device=device, precision=precision, workers=workers, engine=engine, decode=decode,
                          progress=progress)


def load_run(
    run: PathLike,
    *,
    checkpoint: str = "best",
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
) -> Predictor:
    """A trained run, ready for inference in memory (what ``tlkit evaluate`` and ``predict`` load).

    Args:
        run: a run folder written by :func:`finetune` (or one of its ``.safetensors``).
        checkpoint: ``best`` or ``last``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        engine: ``auto`` | ``torch`` | ``openvino``.

    Returns:
        A :class:`~tlkit.train.Predictor`: ``.model`` (logits ``[B, K]``), ``.classes``, ``.data_config``
        (the run's preprocessing), and ``.predict_files(paths)`` -> probabilities ``[n, K]``.

    Example:
        >>> predictor = tlkit.load_run("runs/flowers")                          # doctest: +SKIP
        >>> probs = predictor.predict_files(["rose.jpg"])                       # doctest: +SKIP
    """
    from tlkit.train import Predictor

    return Predictor.load(run, which=checkpoint, device=device, precision=precision, engine=engine)


# --------------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` (``tlkit al-simulate``) measured and wrote.

    Attributes:
        result: the curves (:class:`~tlkit.active.simulate.SimulationResult`: ``rows``, ``budgets``, ``summary``).
        files: the written files by kind: ``curves`` (CSV), ``plot`` (PNG), ``summary`` (JSON).
    """

    result: SimulationResult
    files: dict[str, Path]

    @property
    def aubc(self) -> dict[str, float]:
        """Area under the budget curve per strategy (mean over seeds), best first."""
        pairs = sorted(((s, v["aubc"]) for s, v in self.result.summary.items()), key=lambda kv: -kv[1])
        return dict(pairs)

    @property
    def best(self) -> str:
        """The strategy with the largest area under the budget curve."""
        return next(iter(self.aubc))


def simulate(
    pool: PathLike,
    test: PathLike,
    out: PathLike,
    *,
    strategies: Sequence[str] = SIMULATE_STRATEGIES,
    backbone: str = DEFAULT_BACKBONE,
    weights: PathLike | None = None,
    image_size: int | None = None,
    train: str = "head",
    epochs: int = 3,
    start: int = 10,
    batch: int = 10,
    rounds: int = 10,
    seeds: int = 3,
    engine: str = "auto",
    ssl: str = DEFAULT_SSL,
    progress: Progress | None = None,
) -> Simulation:
    """Compare active-learning strategies on labeled data, the true labels as the labeler (``tlkit al-simulate``).

    Args:
        pool: labeled images (class folders or a manifest) or a ``tlkit extract`` folder.
        test: held-out labeled images or extract folder.
        out: output folder: ``curves.csv``, ``curves.png``, ``summary.json``.
        strategies: strategy names (``tlkit strategies`` lists them).
        backbone: the backbone that embeds image folders (a timm name, or ``tv:<name>``).
        weights: a local weights file for the backbone.
        image_size: square input size for embedding (default: the backbone's).
        train: ``head`` (a linear head on embeddings) or ``finetune`` (slow: trains each round).
        epochs: epochs per round with ``train="finetune"``.
        start: random labels before the first round.
        batch: labels added per round.
        rounds: rounds after the random start.
        seeds: repeats with different random starts.
        engine: ``auto`` | ``torch`` | ``openvino``.
        ssl: head rounds: ``self-training`` or ``off``.
        progress: called with 1 after every fitted model.
    """
    from tlkit.active.simulate import simulate_folders

    result, files = simulate_folders(pool, test, out, strategies=list(strategies), backbone=backbone,
                                     weights=_path_or_none(weights), image_size=image_size, train=train, start=start,
                                     batch=batch, rounds=rounds, seeds=seeds, epochs=epochs, progress=progress,
                                     engine=engine, ssl=ssl)
    return Simulation(result, files)


# --------------------------------------------------------------------------- active learning
@dataclass(frozen=True)
class Pick:
    """One image a round asks to be labeled.

    Attributes:
        path: the image's pool path (relative to the pool folder; the key :meth:`Project.teach` takes).
        file: the image file on disk.
        rank: 1 = label first.
        score: the strategy's score (higher = more useful to label).
        predicted: the round model's guess ("" before the first labels).
        confidence: the guess's probability (None before the first labels).
    """

    path: str
    file: Path
    rank: int
    score: float
    predicted: str = ""
    confidence: float | None = None


@dataclass(frozen=True)
class Query:
    """The result of one active-learning round (:meth:`Project.query`); iterates over its picks.

    Attributes:
        round: the round's number.
        picks: the images to label, best first.
        pending: True when the last round's picks still await labels, so no new round ran.
        dir: the round's folder (``query.csv``, ``labelstudio.json``, ``metrics.json``, the model).
        validation_accuracy: the round model's validation accuracy (None before enough labels).
        metrics: the round's ``metrics.json`` (empty when ``pending``).
    """

    round: int
    picks: tuple[Pick, ...]
    pending: bool
    dir: Path | None
    validation_accuracy: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Pick]:
        return iter(self.picks)

    def __len__(self) -> int:
        return len(self.picks)

    @property
    def paths(self) -> list[str]:
        """The picks' pool paths, best first."""
        return [p.path for p in self.picks]

    @property
    def labelstudio_tasks(self) -> Path | None:
        """The Label Studio task file to import (``labelstudio.json``), or None."""
        return self.dir / "labelstudio.json" if self.dir is not None else None


def _query(rows: Sequence[Mapping[str, Any]], pool_root: Path, res: Any) -> Query:
    def number(value: Any) -> float | None:
        return None if value in (None, "") else float(value)

    picks = tuple(Pick(str(r["path"]), pool_root / str(r["path"]), int(r["rank"]), float(r["score"]),
                       str(r.get("predicted") or ""), number(r.get("confidence"))) for r in rows)
    return Query(res.round, picks, res.pending, res.dir, res.validation.accuracy, dict(res.metrics))


class Project:
    """An active-learning project folder: query images to label, teach labels back, repeat.

    The same folder the ``tlkit al-*`` commands use: a notebook and the command line can take
    turns on one project. Open one with ``Project(path)``; create one with :meth:`Project.init`
    (or :func:`init_project`).

    Example:
        >>> project = tlkit.Project.init("proj", pool="unlabeled/", classes=["cat", "dog"])  # doctest: +SKIP
        >>> for _ in range(3):                                                             # doctest: +SKIP
        ...     picks = project.query(20, strategy="auto")
        ...     project.teach({p.path: my_labeler(p.file) for p in picks})
        >>> project.status().labeled_per_class                                            # doctest: +SKIP
    """

    def __init__(self, path: PathLike):
        """Open the project in ``path``.

        Raises:
            TlkitError: ``path`` holds no project (no ``project.yaml``).
        """
        from tlkit.active.project import Project as ProjectFolder

        self._folder = ProjectFolder.open(path)

    @classmethod
    def init(
        cls,
        path: PathLike,
        *,
        pool: PathLike,
        labels: PathLike | None = None,
        classes: Sequence[str] = (),
        backbone: str = DEFAULT_BACKBONE,
        weights: PathLike | None = None,
        image_size: int | None = None,
        recipe: str | None = None,
        label_studio_root: PathLike | None = None,
        label_studio_prefix: str | None = None,
        seed: int = 0,
        embedding_dtype: str = "float32",
        multilabel: bool = False,
    ) -> "Project":
        """Create a project over a pool of images (``tlkit al-init``).

        Args:
            path: the project folder to create.
            pool: the folder (or CSV manifest) of the images to label.
            labels: seed labels: a CSV ``path,label`` or a Label Studio export.
            classes: the class names (default: taken from the first labels).
            backbone: the backbone that embeds the pool (a timm name, or ``tv:<name>``).
            weights: a local weights file for the backbone.
            image_size: square input size (default: the backbone's).
            recipe: the finetune recipe of ``train="finetune"`` rounds.
            label_studio_root: Label Studio's document root (default: the pool's parent).
            label_studio_prefix: the image URL prefix before the path relative to that root.
            seed: seed of the rounds' random choices.
            embedding_dtype: cache the pool's embeddings as ``float32`` or ``float16``.
            multilabel: each image gets a set of classes, maybe empty (``al-init --multi-label``; labels
                files are ``path,labels`` with the set joined by ``;``).
        """
        from tlkit.active.labels import import_seed_labels
        from tlkit.active.labelstudio import DEFAULT_PREFIX
        from tlkit.active.project import Project as ProjectFolder
        from tlkit.core.constants import DEFAULT_TASK, MULTILABEL

        folder = ProjectFolder.create(
            path, pool=pool, classes=tuple(classes), backbone=backbone,
            weights=_path_or_none(weights), image_size=image_size, recipe=recipe,
            label_studio_root=label_studio_root, label_studio_prefix=label_studio_prefix or DEFAULT_PREFIX,
            seed=seed, embedding_dtype=embedding_dtype, task=MULTILABEL if multilabel else DEFAULT_TASK,
        )
        if labels is not None:
            import_seed_labels(folder, labels)
        return cls(folder.root)

    def __repr__(self) -> str:
        return f"tlkit.Project({str(self.path)!r})"

    @property
    def path(self) -> Path:
        """The project folder."""
        return self._folder.root

    @property
    def pool_root(self) -> Path:
        """The folder of the pool images; pool paths are relative to it."""
        return self._folder.pool_root

    @property
    def classes(self) -> tuple[str, ...]:
        """The project's classes (read from ``project.yaml`` each time)."""
        return self._reopen().config.classes

    @property
    def labels(self) -> dict[str, str]:
        """The human labels so far: pool path -> label (``__skip__``: unlabelable)."""
        return self._reopen().labels()

    def _reopen(self):
        from tlkit.active.project import Project as ProjectFolder

        self._folder = ProjectFolder.open(self._folder.root)  # the CLI may have changed it in between
        return self._folder

    def query(
        self,
        n: int = 20,
        *,
        strategy: str | None = None,
        train: str = "head",
        new: bool = False,
        max_pool: int | None = None,
        epochs: int | None = None,
        device: str = "auto",
        engine: str | None = None,
        ssl: str | None = None,
        progress: Progress | None = None,
    ) -> Query:
        """Run one round (``tlkit al-round``): train on the labels, score the pool, pick ``n`` images to label.

        While the last round's picks still await labels, no new round runs: the same picks come back
        with ``pending=True`` (``new=True`` starts a round anyway).

        Args:
            n: how many images to pick.
            strategy: a strategy name (``tlkit strategies``); default ``auto``.
            train: ``head`` (a linear head on cached embeddings; seconds) or ``finetune``.
            new: start a new round even when the last picks await labels.
            max_pool: score a random subset of this many unlabeled images.
            epochs: epochs of ``train="finetune"`` rounds.
            device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
            engine: ``auto`` | ``torch`` | ``openvino`` (default: ``project.yaml``'s).
            ssl: head rounds: ``self-training`` or ``off`` (default: ``project.yaml``'s).
            progress: called with images embedded (the first round of a backbone embeds the pool).

        Returns:
            The :class:`Query`: the ranked picks, the round's folder and its validation accuracy.
        """
        from tlkit.active.round import run_round
        from tlkit.active.strategies import DEFAULT_STRATEGY

        res = run_round(self.path, batch=n, strategy=strategy or DEFAULT_STRATEGY, train=train, max_pool=max_pool,
                        new=new, device=device, epochs=epochs, engine=engine, ssl=ssl, progress=progress)
        return _query(res.query, self._reopen().pool_root, res)

    def teach(
        self,
        labels: Mapping[str | os.PathLike, str] | PathLike | Any,
        *,
        add_classes: bool = False,
        overwrite: bool = False,
        skip_unknown: bool = False,
        resolve: str = "agree",
    ) -> ImportReport:
        """Take labels in (``tlkit al-import``): validated first, then merged atomically into ``labels.csv``.

        Args:
            labels: one of
                - a mapping pool path (or file inside the pool) -> label (``"__skip__"``: unlabelable);
                - a pandas DataFrame with columns ``path`` and ``label``;
                - a file: a CSV ``path,label`` or a Label Studio export (JSON, JSON_MIN or CSV).
            add_classes: accept labels that are not project classes yet.
            overwrite: allow changing existing labels.
            skip_unknown: import the rest when some images are not in the pool (they are reported).
            resolve: for Label Studio exports, how disagreeing annotators are settled: ``agree``,
                ``majority`` or ``latest``.

        Returns:
            The :class:`~tlkit.active.labels.ImportReport` (``added``, ``relabeled``, ``per_class``, ...).

        Raises:
            TlkitError: naming the first offending rows; ``labels.csv`` is then unchanged.
        """
        from tlkit.active.labels import import_labels, import_mapping

        folder = self._reopen()
        options = dict(add_classes=add_classes, overwrite=overwrite, skip_unknown=skip_unknown)
        if isinstance(labels, (str, os.PathLike)):
            return import_labels(folder, labels, resolve=resolve, **options)
        if _is_dataframe(labels):
            return import_mapping(folder, _dataframe_labels(labels), source="the DataFrame", **options)
        if isinstance(labels, Mapping):
            return import_mapping(folder, labels, **options)
        raise TlkitError(f"teach() takes a mapping path -> label, a pandas DataFrame (columns path, label) or a "
                         f"label file; got {type(labels).__name__}")

    def status(self, *, plot: bool = True) -> ProjectStatus:
        """Rounds, labels per class, pending picks, validation per round (``tlkit al-status``).

        With ``plot``, writes ``learning_curve.png`` in the project folder.
        """
        from tlkit.active.status import project_status

        return project_status(self.path, plot=plot)

    def simulate(
        self,
        test: PathLike,
        out: PathLike,
        *,
        strategies: Sequence[str] = SIMULATE_STRATEGIES,
        start: int = 10,
        batch: int = 10,
        rounds: int = 10,
        seeds: int = 3,
        ssl: str = DEFAULT_SSL,
        device: str = "auto",
        progress: Progress | None = None,
    ) -> Simulation:
        """Which strategy would have served this project? Replay rounds on its labeled images.

        The project's labeled images (their cached embeddings) are the pool and their labels the
        labeler; ``test`` (held-out labeled images or a ``tlkit extract`` folder, embedded with the
        project's backbone) measures each round's head, as ``tlkit al-simulate`` does. Needs at least
        ``start + batch * rounds`` labeled images for full curves.

        Args:
            test: held-out labeled images (class folders or a manifest) or an extract folder.
            out: output folder: ``curves.csv``, ``curves.png``, ``summary.json``.
            strategies: strategy names (``tlkit strategies`` lists them).
            start: random labels before the first round.
            batch: labels added per round.
            rounds: rounds after the random start.
            seeds: repeats with different random starts.
            ssl: ``self-training`` or ``off``.
            progress: called with 1 after every fitted model.
            device: where the pool is embedded if the project's cache is not filled yet.
        """
        import numpy as np

        from tlkit.active.labeltext import SKIP_LABEL
        from tlkit.active.round import embeddings_for
        from tlkit.active.simulate import labeled_features, simulate_labeled
        from tlkit.core.io import check_output_dir

        folder = self._reopen()
        labels = {p: lab for p, lab in folder.labels().items() if lab != SKIP_LABEL}
        if not labels:
            raise TlkitError(f"{self.path} has no labels yet; teach some before simulating")
        out = check_output_dir(out)
        paths, feats = embeddings_for(folder, device=device)
        rows = [i for i, p in enumerate(paths) if p in labels]
        cfg = folder.config
        xt, names_t = labeled_features(test, out / "features" / "test", backbone=cfg.backbone, weights=cfg.weights,
                                       image_size=cfg.image_size, engine=cfg.engine)
        given = [labels[paths[i]] for i in rows]
        if folder.config.multilabel:  # label sets: labels.csv's "a;b" texts
            from tlkit.active.project import split_labels

            given = [split_labels(t) for t in given]
        result, files = simulate_labeled(np.asarray(feats[rows], np.float32), given, xt,
                                         names_t, out, strategies=list(strategies), start=start, batch=batch,
                                         rounds=rounds, seeds=seeds, progress=progress, ssl=ssl,
                                         title=self.path.name)
        return Simulation(result, files)


def init_project(path: PathLike, *, pool: PathLike, **options: Any) -> Project:
    """Create an active-learning project (``tlkit al-init``); the same as :meth:`Project.init`.

    Args:
        path: the project folder to create.
        pool: the folder (or CSV manifest) of the images to label.
        **options: the keyword arguments of :meth:`Project.init` (``classes``, ``labels``, ``backbone``, ...).
    """
    return Project.init(path, pool=pool, **options)


def _is_dataframe(obj: Any) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return type(obj).__name__ == "DataFrame" and type(obj).__module__.split(".")[0] == "pandas"


def _dataframe_labels(frame: Any) -> dict[str, str]:
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise TlkitError(f"the DataFrame needs the columns path and label; missing {missing} "
                         f"(found {list(frame.columns)})")
    paths, labels = [os.fspath(p) for p in frame["path"].tolist()], frame["label"].tolist()
    twice = sorted(p for p, k in Counter(paths).items() if k > 1)
    if twice:
        raise TlkitError(f"the DataFrame names {len(twice)} images more than once, e.g. {twice[0]!r}; keep one row each")
    return {p: str(lab) for p, lab in zip(paths, labels)}
