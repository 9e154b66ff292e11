"""The offline demo (``tlkit demo``): sample digits -> features + a probe -> a short fine-tune -> one
active-learning round, each step timed, as a :class:`DemoReport` the CLI prints.

Example:
    >>> report = run_demo("demo-work", per_class=20)      # doctest: +SKIP
    >>> [(s.name, round(s.value, 2)) for s in report.steps]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlkit.demo.samples import digits_arrays, make_digits_folder, pick_per_class


@dataclass
class DemoStep:
    """One line of the demo's report."""

    name: str
    metric: str
    value: float
    seconds: float
    detail: str = ""


@dataclass
class DemoReport:
    workdir: Path
    steps: list[DemoStep] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def probe_classifier(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, test_size: float = 0.3) -> float:
    """Test accuracy of a standardised logistic regression on a stratified split of ``features``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte, ytr, yte = train_test_split(features, labels, test_size=test_size, stratify=labels, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    clf.fit(xtr, ytr)
    return float(clf.score(xte, yte))


def run_demo(
    workdir: str | Path,
    *,
    per_class: int = 40,
    image_size: int = 128,
    progress: Callable[[str, int, int], None] | None = None,
) -> DemoReport:
    """The offline demo: make digit images, extract features with the bundled backbone, fit a probe.

    Args:
        workdir: folder for the sample images and outputs (created).
        per_class: digit images per class.
        image_size: backbone input size.
        progress: ``progress(stage, done, total)`` for a progress display.

    Returns:
        A :class:`DemoReport` whose steps the CLI prints as a table.
    """
    from tlkit.core.io import check_output_dir
    from tlkit.features.extract import extract_features, load_features

    workdir = check_output_dir(workdir, option="--workdir")
    report = DemoReport(workdir)
    t = time.perf_counter()
    images = make_digits_folder(workdir / "digits", per_class=per_class)
    n = per_class * 10
    report.steps.append(DemoStep("make sample images", "images", n, time.perf_counter() - t,
                                 f"{images.relative_to(workdir).as_posix()}/: 10 classes x {per_class} PNGs"))

    t = time.perf_counter()
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress("extract", done[0], n)

    res = extract_features(images, workdir / "features", image_size=image_size, progress=tick)
    report.steps.append(
        DemoStep("extract features", "img/s", res.images_per_s, time.perf_counter() - t,
                 f"{res.meta['backbone']} [{res.meta['weights']['source']}], {res.count}x{res.dim}, {res.meta['precision']}")
    )
    t = time.perf_counter()
    feats, index, _ = load_features(workdir / "features")
    labels = np.array([int(r["label"]) for r in index])
    acc = probe_classifier(np.asarray(feats), labels)
    report.steps.append(DemoStep("logistic regression on features", "test accuracy", acc, time.perf_counter() - t,
                                 "70/30 stratified split"))
    report.steps.append(_finetune_step(workdir, per_class))
    report.steps.append(_al_round_step(workdir, images, image_size))
    return report


def _finetune_step(workdir: Path, per_class: int, recipe: str = "linear-probe") -> DemoStep:
    """A short fine-tune (the linear-probe recipe: frozen body, head on cached features) on 70 % of
    the digits, evaluated on the rest with `tlkit evaluate`'s metrics."""
    from tlkit.train import make_config
    from tlkit.train.engine import fit
    from tlkit.train.evaluate import evaluate_run

    t = time.perf_counter()
    _, labels = digits_arrays()
    picked = pick_per_class(labels, per_class, seed=0)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(picked), bool)
    for c in np.unique(labels[picked]):
        idx = np.flatnonzero(labels[picked] == c)
        test_mask[rng.permutation(idx)[: max(1, int(round(0.3 * len(idx))))]] = True
    train = make_digits_folder(workdir / "ft-train", indices=picked[~test_mask])
    test = make_digits_folder(workdir / "ft-test", indices=picked[test_mask])
    config = make_config(recipe, image_size=128, seed=0)
    result = fit(config, data=train, out=workdir / "ft-run")
    metrics = evaluate_run(workdir / "ft-run", test)
    return DemoStep(f"finetune ({recipe} recipe)", "test accuracy", float(metrics["accuracy"]),
                    time.perf_counter() - t, f"{result.n_train} train images at 128 px, {len(result.history)} "
                    "epochs; run in ft-run/")


def _al_round_step(workdir: Path, images: Path, image_size: int) -> DemoStep:
    """One active-learning round: 3 seed labels per class, then `auto` picks 20 images to label."""
    from tlkit.active.labels import import_seed_labels
    from tlkit.active.project import Project
    from tlkit.active.round import run_round
    from tlkit.core.io import write_csv

    t = time.perf_counter()
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    seed = _three_per_class(paths)
    write_csv(workdir / "seed-labels.csv", ["path", "label"], seed)
    project = Project.create(workdir / "al-project", pool=images, image_size=image_size)
    import_seed_labels(project, workdir / "seed-labels.csv")
    res = run_round(project.root, batch=20)
    val = res.validation.accuracy
    classes = len({row["path"].split("/")[0] for row in res.query})
    return DemoStep("active-learning round (auto)", "selected", len(res.query), time.perf_counter() - t,
                    f"from {len(seed)} seed labels (cv accuracy {val:.2f}); the 20 picks span {classes} classes; "
                    f"{res.dir.relative_to(workdir)}/labelstudio.json")


def _three_per_class(paths: list[str]) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        label = path.split("/")[0]
        if seen.get(label, 0) < 3:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, label))
    return out


__all__ = ["DemoReport", "DemoStep", "probe_classifier", "run_demo"]
