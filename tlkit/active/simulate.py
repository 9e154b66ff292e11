"""Active-learning simulation on labeled data: which strategy wins at which budget, on *your* data.

The true labels play the oracle. For every seed, a random start set of ``start`` labels is drawn
(the same for every strategy, so curves differ only by the strategy); then each round fits the
head-mode classifier (:mod:`tlkit.active.head`), measures accuracy on the test set, and lets the
strategy pick ``batch`` more labels. The result is one accuracy per strategy x seed x budget, and
the area under the budget curve (AUBC, accuracy averaged over the budget range by the trapezoid
rule) per strategy.

Inputs are arrays, so a study runs on any features: ``tlkit extract`` folders, raw pixels, or
embeddings from elsewhere.

Multi-label sets (``y`` and ``y_test`` ``[n, k]`` 0/1) are simulated the same way with the
multi-label head; the curves measure the macro mAP on the test set instead of accuracy
(:attr:`SimulationResult.metric`), and the AUBC is the area under the mAP curve.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tlkit.active.learner import HeadLearner, Learner, LearnerResult, resolve_ssl
from tlkit.active.stopping import cohen_kappa
from tlkit.active.strategies import Approx, PoolView, get_strategy, list_strategies, select
from tlkit.core.constants import DEFAULT_BACKBONE, DEFAULT_SSL
from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_dir, save_png, write_csv, write_json

log = logging.getLogger(__name__)

CURVE_COLUMNS = ("strategy", "seed", "labels", "accuracy")
MAP_CURVE_COLUMNS = ("strategy", "seed", "labels", "map")
"""curves.csv of a multi-label study: the measure is the test set's macro mAP."""


@dataclass
class SimulationResult:
    """Curves and their summary.

    Attributes:
        rows: ``(strategy, seed, labels, accuracy)`` tuples, one per strategy x seed x budget.
        budgets: the label counts measured, ascending (the start included).
        summary: per strategy: ``aubc`` (mean), ``aubc_std``, ``mean_accuracy`` per budget, ``final``.
    """

    rows: list[tuple[str, int, int, float]] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    summary: dict[str, dict] = field(default_factory=dict)
    kappa: list[tuple[str, int, int, float]] = field(default_factory=list)
    """``(strategy, seed, labels, kappa)``: agreement of this round's pool predictions with the previous
    round's on the rows unlabeled in both (the stopping signal of :mod:`tlkit.active.stopping`)."""
    metric: str = "accuracy"
    """What the curves measure: ``accuracy``, or ``mAP`` (macro, multi-label studies); the summary's
    ``mean_accuracy`` and ``aubc`` are of this measure."""


def aubc(budgets: Sequence[int], accuracy: Sequence[float]) -> float:
    """Area under the accuracy-vs-labels curve, normalised by the budget range (in [0, 1])."""
    b, a = np.asarray(budgets, float), np.asarray(accuracy, float)
    if len(b) < 2:
        return float(a[0]) if len(a) else float("nan")
    return float(np.trapezoid(a, b) / (b[-1] - b[0]))


def _start_set(y: np.ndarray, start: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(y), size=min(start, len(y)), replace=False)


def _one_curve(x, y, y_test, learner: Learner, strategy, start_idx, batch, rounds, seed, tick, approx=None):
    info = get_strategy(strategy)
    multi = y.ndim == 2
    labeled = np.zeros(len(y), bool)
    labeled[start_idx] = True
    points, before = [], None
    for r in range(rounds + 1):
        fitted = learner.fit(labeled, y, seed=seed + r, needs=info.needs)
        probs, mc = fitted.probs, fitted.mc_probs
        acc = _test_map(fitted, y_test) if multi else _test_accuracy(fitted, y[labeled], y_test)
        pred = None if probs is None else (probs >= 0.5).reshape(len(probs), -1) if multi else probs.argmax(axis=1)
        kappa = float("nan")
        if pred is not None and before is not None:
            kappa = cohen_kappa(before[~labeled].ravel(), pred[~labeled].ravel())
        points.append((int(labeled.sum()), acc, kappa))
        before = pred
        tick()
        if r == rounds or labeled.all():
            break
        pool = PoolView(embeddings=x, labeled=labeled, candidates=~labeled, probs=probs, mc_probs=mc,
                        labels=np.where(labeled[:, None] if multi else labeled, y, -1), multilabel=multi)
        sel = select(strategy, pool, batch, seed=seed * 7919 + r, approx=approx)
        labeled[sel.indices] = True
    return points


def _test_accuracy(fitted: LearnerResult, y_lab: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of the fitted model on the test set; without a model, of the majority labeled class."""
    if fitted.test_probs is None:
        return _majority(y_lab, y_test)
    return float((fitted.test_probs.argmax(1) == y_test).mean())


def _test_map(fitted: LearnerResult, Y_test: np.ndarray) -> float:
    """Macro mAP of the fitted multi-label model on the test set; without a model, of constant scores
    (each class's average precision is then its share of the test set)."""
    from tlkit.active.head import mean_average_precision

    probs = fitted.test_probs if fitted.test_probs is not None else np.zeros(Y_test.shape, np.float32)
    value = mean_average_precision(Y_test, probs)
    return float("nan") if value is None else value


def _majority(y_lab: np.ndarray, y_test: np.ndarray) -> float:
    if len(y_lab) == 0:
        return 0.0
    return float((y_test == np.bincount(y_lab).argmax()).mean())


def _check_strategies(strategies: Sequence[str]) -> None:
    if not strategies:
        names = ", ".join(s.name for s in list_strategies())
        raise TlkitError(f"no strategy given; pass --strategies with comma-separated names from: {names}")
    for s in strategies:
        get_strategy(s)


def simulate(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    strategies: Sequence[str],
    start: int = 10,
    batch: int = 10,
    rounds: int = 10,
    seeds: int | Sequence[int] = 3,
    classes: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    learner: Learner | None = None,
    approx: Approx | None = None,
    ssl: str | None = None,
) -> SimulationResult:
    """Simulate active learning with each strategy and seed.

    Args:
        x: pool features ``[n, d]``; y: their true labels ``[n]`` (int class indices), or ``[n, k]``
            0/1 label sets (multi-label: the curves measure mAP).
        x_test, y_test: held-out features ``[m, d]`` and labels ``[m]`` (multi-label: ``[m, k]``).
        strategies: registered strategy names.
        start: random labels before the first round; batch: labels added per round.
        rounds: selection rounds (curves have ``rounds + 1`` points).
        seeds: a count (0..S-1) or explicit seeds.
        progress: called with 1 after every fitted model (strategies x seeds x (rounds + 1) in all).
        learner: fits on the labeled rows and scores pool and test (``test_probs``); default: a
            :class:`~tlkit.active.learner.HeadLearner` on ``x`` and ``x_test`` (no cross-validation);
            :class:`~tlkit.active.finetune.FinetuneLearner` fine-tunes.
        ssl: the default learner's ``ssl`` (``self-training`` or ``off``; :mod:`tlkit.active.semi`);
            ``None``: its default.
        approx: what strategies see of big pools (:class:`~tlkit.active.strategies.Approx`;
            ``Approx.forced()`` measures the large-pool approximations on small data).
    """
    _check_strategies(strategies)
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise TlkitError("features and labels differ in length")
    if start < 1 or batch < 1 or rounds < 0:
        raise TlkitError("--start and --batch must be at least 1, --rounds at least 0")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    y, y_test = np.asarray(y), np.asarray(y_test)
    multi = y.ndim == 2
    if multi and (y_test.ndim != 2 or y_test.shape[1] != y.shape[1]):
        raise TlkitError(f"multi-label pool labels are {y.shape} but test labels are {y_test.shape}; give both as [n, k]")
    if multi:
        from tlkit.active.strategies import check_task
        from tlkit.core.constants import MULTILABEL

        for s in strategies:
            check_task(get_strategy(s), MULTILABEL)
    k = y.shape[1] if multi else int(max(y.max(), y_test.max())) + 1
    classes = tuple(classes) if classes else tuple(str(i) for i in range(k))
    x, x_test = np.asarray(x, np.float32), np.asarray(x_test, np.float32)
    learner = learner or HeadLearner(x, classes, x_test=x_test, validate=False, ssl=resolve_ssl("head", ssl))
    result = SimulationResult(metric="mAP" if multi else "accuracy")
    tick = (lambda: progress(1)) if progress else (lambda: None)
    for seed in seeds:
        start_idx = _start_set(y, start, np.random.default_rng(seed))
        for s in strategies:
            t = time.perf_counter()
            for labels, acc, kappa in _one_curve(x, y, y_test, learner, s, start_idx, batch, rounds, seed, tick, approx):
                result.rows.append((s, seed, labels, acc))
                result.kappa.append((s, seed, labels, kappa))
            log.info("%s seed %d: %.1f s", s, seed, time.perf_counter() - t)
    result.budgets = sorted({r[2] for r in result.rows})
    result.summary = summarise(result.rows, strategies)
    return result


def curves_by_seed(rows: list[tuple[str, int, int, float]], strategy: str) -> dict[int, list[tuple[int, float]]]:
    """``{seed: [(labels, accuracy), ...]}`` of one strategy, budgets ascending."""
    per_seed: dict[int, list[tuple[int, float]]] = {}
    for strat, seed, labels, acc in rows:
        if strat == strategy:
            per_seed.setdefault(seed, []).append((labels, acc))
    return {seed: sorted(pts) for seed, pts in per_seed.items()}


def aubc_by_seed(rows: list[tuple[str, int, int, float]], strategy: str) -> dict[int, float]:
    """``{seed: AUBC}`` of one strategy."""
    return {seed: aubc(*zip(*pts)) for seed, pts in curves_by_seed(rows, strategy).items()}


def summarise(rows: list[tuple[str, int, int, float]], strategies: Sequence[str]) -> dict[str, dict]:
    """Per strategy: AUBC mean/std over seeds, mean accuracy per budget, final accuracy."""
    out = {}
    for s in strategies:
        per_seed = curves_by_seed(rows, s)
        areas = [aubc(*zip(*pts)) for pts in per_seed.values()]
        by_budget: dict[int, list[float]] = {}
        for pts in per_seed.values():
            for labels, acc in pts:
                by_budget.setdefault(labels, []).append(acc)
        mean_acc = {b: float(np.mean(v)) for b, v in sorted(by_budget.items())}
        out[s] = {"aubc": float(np.mean(areas)), "aubc_std": float(np.std(areas)),
                  "mean_accuracy": mean_acc, "final": list(mean_acc.values())[-1]}
    return out


def write_outputs(result: SimulationResult, out: str | Path, *, title: str = "") -> dict[str, Path]:
    """Write ``curves.csv``, ``curves.png`` (mean ± std) and ``summary.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = MAP_CURVE_COLUMNS if result.metric == "mAP" else CURVE_COLUMNS
    write_csv(out / "curves.csv", columns, ((s, seed, n, f"{a:.6f}") for s, seed, n, a in result.rows))
    summary = {"budgets": result.budgets, "strategies": result.summary,
               "best_aubc": max(result.summary, key=lambda s: result.summary[s]["aubc"])}
    if result.metric != "accuracy":  # single-label summaries stay as they were
        summary["metric"] = result.metric
    write_json(out / "summary.json", summary)
    _plot(result, out / "curves.png", title)
    return {"curves": out / "curves.csv", "plot": out / "curves.png", "summary": out / "summary.json"}


def _plot(result: SimulationResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for s in result.summary:
        by: dict[int, list[float]] = {}
        for strat, _, n, a in result.rows:
            if strat == s:
                by.setdefault(n, []).append(a)
        b = np.array(sorted(by))
        m = np.array([np.mean(by[k]) for k in b])
        sd = np.array([np.std(by[k]) for k in b])
        ax.plot(b, m, marker=".", label=f"{s} (AUBC {result.summary[s]['aubc']:.3f})")
        ax.fill_between(b, m - sd, m + sd, alpha=0.15)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test mAP (macro)" if result.metric == "mAP" else "test accuracy")
    ax.set_title(title or "active-learning simulation (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def labeled_features(
    source: str | Path, cache: Path, *, backbone: str, weights: str | None, image_size: int | None,
    progress: Callable[[int], None] | None = None, engine: str = "auto",
) -> tuple[np.ndarray, list[str] | list[tuple[str, ...]]]:
    """Features ``[n, d]`` and labels of a labeled set: class names, or label sets (tuples) when the
    set is multi-label (a ``path,labels`` manifest; its extract's index.csv has a ``labels`` column).

    ``source`` is a ``tlkit extract`` output folder (features.npy + index.csv with labels), used as
    it is, or a labeled image folder/manifest, extracted into ``cache`` (resumable, reused).
    """
    from tlkit.features.extract import extract_features, load_features

    source = Path(source)
    if not (source / "features.npy").is_file():
        extract_features(source, cache, backbone=backbone, weights=weights, image_size=image_size, progress=progress,
                         engine=engine)
        source = cache
    feats, index, _ = load_features(source, mmap=False)
    if index and "labels" in index[0]:  # multi-label: every row is labeled ("" = none of the classes)
        from tlkit.active.project import split_labels

        return np.asarray(feats, np.float32), [split_labels(r["labels"]) for r in index]
    if not index or "label" not in index[0] or any(not r.get("label") for r in index):
        raise TlkitError(f"{source}: every image needs a label (a class-folder tree, a path,label manifest or a "
                         "path,labels multi-label manifest)")
    return np.asarray(feats, np.float32), [r["label"] for r in index]


def simulate_folders(
    pool: str | Path,
    test: str | Path,
    out: str | Path,
    *,
    strategies: Sequence[str],
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    image_size: int | None = None,
    train: str = "head",
    start: int = 10,
    batch: int = 10,
    rounds: int = 10,
    seeds: int = 3,
    epochs: int = 3,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    ssl: str | None = None,
) -> tuple[SimulationResult, dict[str, Path]]:
    """:func:`simulate` on labeled folders (images or extract outputs); writes the outputs to ``out``.

    ``ssl``: the learner's (:func:`tlkit.active.learner.resolve_ssl`; ``None``: the ``train`` mode's default).
    """
    ssl = resolve_ssl(train, ssl)
    _check_strategies(strategies)
    out = check_output_dir(out)
    x, names = labeled_features(pool, out / "features" / "pool", backbone=backbone, weights=weights,
                                image_size=image_size, engine=engine)
    xt, names_t = labeled_features(test, out / "features" / "test", backbone=backbone, weights=weights,
                                   image_size=image_size, engine=engine)
    learner = None
    if train == "finetune":
        if names and isinstance(names[0], tuple):
            raise TlkitError("al-simulate --train finetune is single-label only; simulate multi-label sets with "
                             "--train head")
        learner = _finetune_learner(pool, test, out, sorted(set(names)), backbone, weights, image_size, epochs, ssl)
    return simulate_labeled(x, names, xt, names_t, out, strategies=strategies, start=start, batch=batch,
                            rounds=rounds, seeds=seeds, progress=progress, learner=learner, ssl=ssl,
                            title=Path(pool).name)


def simulate_labeled(
    x: np.ndarray,
    names: Sequence[str] | Sequence[tuple[str, ...]],
    x_test: np.ndarray,
    names_test: Sequence[str] | Sequence[tuple[str, ...]],
    out: str | Path,
    *,
    strategies: Sequence[str],
    start: int = 10,
    batch: int = 10,
    rounds: int = 10,
    seeds: int = 3,
    progress: Callable[[int], None] | None = None,
    learner: Learner | None = None,
    ssl: str = DEFAULT_SSL,
    title: str = "",
) -> tuple[SimulationResult, dict[str, Path]]:
    """:func:`simulate` on features with class names (``al-simulate``; ``tlkit.Project.simulate`` on a
    project's labeled images), or label sets (tuples of names: a multi-label study, measured by mAP);
    writes curves.csv, curves.png and summary.json to ``out``."""
    kinds = {isinstance(ns[0], tuple) for ns in (names, names_test) if len(ns)}
    if len(kinds) > 1:
        raise TlkitError("the pool and the test set must both be single-label or both multi-label (path,labels)")
    multi = kinds == {True}
    if multi:
        classes = sorted(set().union(*names))
        unknown = sorted(set().union(*names_test) - set(classes))
    else:
        classes = sorted(set(names))
        unknown = sorted(set(names_test) - set(classes))
    if unknown:
        raise TlkitError(f"test classes {unknown} do not occur in the pool; remove them or add pool images")
    idx = {c: i for i, c in enumerate(classes)}
    if multi:
        y, yt = (np.zeros((len(ns), len(classes)), np.int64) for ns in (names, names_test))
        for arr, ns in ((y, names), (yt, names_test)):
            for i, labels in enumerate(ns):
                arr[i, [idx[c] for c in labels]] = 1
    else:
        y = np.array([idx[c] for c in names])
        yt = np.array([idx[c] for c in names_test])
    result = simulate(x, y, x_test, yt, strategies=strategies, start=start, batch=batch, rounds=rounds, seeds=seeds,
                      classes=classes, progress=progress, learner=learner, ssl=ssl)
    files = write_outputs(result, out, title=f"{title}: start {start}, batch {batch}, {len(result.summary)} strategies")
    return result, files


def _finetune_learner(pool, test, out, classes, backbone, weights, image_size, epochs, ssl) -> Learner:
    """Fine-tuning needs the images: the extracted index gives each row's file under the source root."""
    from tlkit.active.finetune import FinetuneLearner
    from tlkit.core.io import read_csv, read_json

    def paths(src: str | Path, cache: Path) -> list[Path]:
        folder = Path(src) if (Path(src) / "features.npy").is_file() else cache
        root = Path(read_json(folder / "meta.json")["source"]["root"])
        return [root / r["path"] for r in read_csv(folder / "index.csv")]

    pool_paths = paths(pool, out / "features" / "pool")
    test_paths = paths(test, out / "features" / "test")
    missing = [str(p) for p in pool_paths[:1] + test_paths[:1] if not p.is_file()]
    if missing:
        raise TlkitError(f"--train finetune needs the images; {missing[0]} is missing")
    # throwaway runs in temporary folders: no TensorBoard logs
    config = {"backbone": backbone, "weights": weights, "image_size": image_size, "epochs": epochs,
              "tensorboard": False}
    return FinetuneLearner(pool_paths, tuple(classes), test_paths=test_paths, config=config, ssl=ssl)
