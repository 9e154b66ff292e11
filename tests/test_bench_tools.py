"""The statistics the active-learning benchmarks make claims with, and the rejected `auto` designs
they can re-run (``benchmarks/tune_experiments.py``) on a real pool: digits pixels, a real model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_auto import paired_aubc  # noqa: E402
from tune_auto import by_split  # noqa: E402
from tune_experiments import register_experiments  # noqa: E402

from tlkit.active.simulate import SimulationResult  # noqa: E402
from tlkit.active.strategies import PoolView, _registry, get_strategy  # noqa: E402
from tlkit.active.strategies.auto import margin_kmeans  # noqa: E402

# (strategy, run id, labels, accuracy): AUBC over two budgets is the mean of the two accuracies.
CURVES = {("a", 0): (0.5, 0.7), ("b", 0): (0.5, 0.6), ("a", 1): (0.5, 0.9), ("b", 1): (0.5, 0.6),
          ("a", 2): (0.5, 0.5), ("b", 2): (0.5, 0.6), ("a", 3): (0.5, 0.5)}


def _rows(curves=CURVES, offset=0):
    return [(s, seed + offset, b, acc) for (s, seed), accs in curves.items() for b, acc in zip((10, 20), accs)]


def test_paired_aubc_pairs_by_seed_and_skips_unpaired_runs():
    d, se, n = paired_aubc(SimulationResult(_rows()), "a", "b")
    diffs = np.array([5.0, 15.0, -5.0])  # points; seed 3 has no "b" run
    assert n == 3
    assert d == pytest.approx(diffs.mean())
    assert se == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))


def test_by_split_averages_within_each_split_first():
    rows = _rows(offset=100_000) + [(s, 101_000 + seed, b, acc) for s, seed, b, acc in _rows()
                                    if seed == 1]  # split 100: seeds 0-2; split 101: seed 1 only
    text = by_split(rows, "a", "b")
    means = np.array([5.0, 15.0])  # split 100: mean(5, 15, -5); split 101: 15
    assert f"{means.mean():+.2f} ± {means.std(ddof=1) / np.sqrt(2):.2f} over 2 splits" in text
    assert "from +5.00 to +15.00" in text
    assert by_split(_rows(), "a", "b") == ""  # one split: nothing to add


@pytest.fixture(scope="module")
def warm_pool() -> PoolView:
    """Digits with 15 labels per class (150 labels: half-way through the soft hand-over)."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 15, replace=False) for c in range(10)])
    labeled = np.isin(np.arange(y.size), idx)
    clf = LogisticRegression(max_iter=300).fit(X[idx], y[idx])
    return PoolView(X, labeled, ~labeled, clf.predict_proba(X).astype(np.float32), None, np.where(labeled, y, -1))


@pytest.fixture()
def experiments():
    """The experimental strategies, registered for one test only (other tests list the registry)."""
    saved = dict(_registry._REGISTRY)
    register_experiments()
    register_experiments()  # idempotent
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved)


def test_experimental_strategies_pick_distinct_candidates(warm_pool, experiments):
    assert "soft" in {s.name for s in _registry.list_strategies()}
    for name in ("soft", "soft-margin", "maxherding-margin", "maxherding-balance-half", "maxherding-balance-two",
                 "maxherding-entropy-centred", "maxherding-entropy-knn", "maxherding-entropy-centred-knn"):
        sel = get_strategy(name).fn(warm_pool, 10, np.random.default_rng(0))
        assert len(set(sel.indices.tolist())) == 10, name
        assert warm_pool.candidates[sel.indices].all(), name


def test_herding_geometry_experiments(warm_pool, experiments, monkeypatch):
    """The library's maxherding-entropy took the 10-NN width, and centring below a cone threshold: with the
    threshold at 0 it is the 10-NN experiment, above every cone the centred 10-NN one; centring moves the picks."""
    from tlkit.active.strategies import herding

    def picks(name):
        return get_strategy(name).fn(warm_pool, 10, np.random.default_rng(5)).indices.tolist()

    monkeypatch.setattr(herding, "HERDING_ENTROPY_CENTRE_BELOW", 0.0)
    assert picks("maxherding-entropy-knn") == picks("maxherding-entropy")
    monkeypatch.setattr(herding, "HERDING_ENTROPY_CENTRE_BELOW", 1.01)
    assert picks("maxherding-entropy-centred-knn") == picks("maxherding-entropy")
    assert picks("maxherding-entropy-centred-knn") != picks("maxherding-entropy-knn")


def test_auto_unseen_experiment_switches_below_one_label_per_class(warm_pool, experiments):
    """With fewer labels than classes the experiment is its strategy; from one label per class on it is auto."""
    import dataclasses

    def picks(name, pool):
        return get_strategy(name).fn(pool, 10, np.random.default_rng(2)).indices.tolist()

    few = np.zeros_like(warm_pool.labeled)
    few[np.flatnonzero(warm_pool.labeled)[:5]] = True  # 5 labels, 10 classes
    pool = dataclasses.replace(warm_pool, labeled=few, candidates=~few, labels=np.where(few, warm_pool.labels, -1))
    assert picks("auto-unseen-typiclust", pool) == picks("typiclust", pool) != picks("auto", pool)
    assert picks("auto-unseen-typiclust", warm_pool) == picks("auto", warm_pool)


def test_soft_switch_hands_over_part_of_the_batch(warm_pool, experiments):
    """At 150 labels (threshold 100 for 10 classes) the first round(0.6 * 10) picks are the late
    phase's own picks; the rest is coverage that treats them as covered."""
    sel = get_strategy("soft").fn(warm_pool, 10, np.random.default_rng(3))
    late = margin_kmeans(warm_pool, 6, np.random.default_rng(3))
    assert sel.indices[:6].tolist() == late.indices.tolist()
    assert not set(sel.indices[6:].tolist()) & set(late.indices.tolist())


def test_experiments_leave_the_registry_as_it_was():
    assert "soft" not in {s.name for s in _registry.list_strategies()}


def test_photo_al_summary_averages_within_each_split_first():
    from bench_photo_al import set_summary

    # split 0: two seeds (0.5 -> 0.7 and 0.5 -> 0.9); split 1: one seed (0.5 -> 0.6)
    runs = {"a": {0: {0: [(10, 0.5), (20, 0.7)], 1: [(10, 0.5), (20, 0.9)]}, 1: {0: [(10, 0.5), (20, 0.6)]}},
            "b": {0: {0: [(10, 0.5), (20, 0.5)], 1: [(10, 0.5), (20, 0.5)]}, 1: {0: [(10, 0.5), (20, 0.5)]},
                  2: {0: [(10, 0.9), (20, 0.9)]}}}  # split 2 only for "b": left out of both summaries
    s = set_summary(runs)
    assert s["a"]["splits"] == s["b"]["splits"] == [0, 1]
    assert s["a"]["acc"][20] == pytest.approx(np.mean([0.8, 0.6]))  # not the pooled mean 0.733
    assert s["a"]["aubc"] == pytest.approx(np.mean([np.mean([0.6, 0.7]), 0.55]))
    assert s["b"]["aubc"] == pytest.approx(0.5)
    assert s["a"]["n_runs"] == 3


def test_injected_flips_always_change_the_label():
    from bench_audit_photos import FLIP_SHARE, flip_labels

    y = np.repeat(np.arange(7), 40)
    noisy, flip = flip_labels(y, 7, seed=3)
    assert len(flip) == round(FLIP_SHARE * len(y)) and len(set(flip.tolist())) == len(flip)
    assert (noisy[flip] != y[flip]).all()
    assert (np.delete(noisy, flip) == np.delete(y, flip)).all()


@pytest.fixture()
def multilabel_variants():
    """bench_multilabel_al's tuning variants, registered for one test only."""
    from bench_multilabel_al import register_variants

    saved = dict(_registry._REGISTRY)
    register_variants()
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved)


def _multilabel_pool(labels_per_class: int, rng: np.random.Generator) -> PoolView:
    """Digits as a 10-class multi-label pool: each image's digit plus a random second class."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Y = np.eye(10, dtype=np.int64)[y]
    Y[np.arange(len(y)), rng.integers(0, 10, len(y))] = 1
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), labels_per_class, replace=False) for c in range(10)])
    labeled = np.isin(np.arange(len(y)), idx)
    P = np.stack([LogisticRegression(max_iter=300).fit(X[idx], Y[idx, j]).predict_proba(X)[:, 1]
                  for j in range(10)], 1).astype(np.float32)
    return PoolView(X, labeled, ~labeled, P, None, np.where(labeled[:, None], Y, -1), multilabel=True)


def test_multilabel_late_variant_hands_over_at_its_labels_per_class(multilabel_variants):
    """``auto-late-mmc`` is ``auto`` below LATE_PER_CLASS labels per class and ``mmc`` from there on."""
    from bench_multilabel_al import LATE_PER_CLASS

    def picks(name, pool):
        return get_strategy(name).fn(pool, 10, np.random.default_rng(4)).indices.tolist()

    rng = np.random.default_rng(0)
    early, late = _multilabel_pool(LATE_PER_CLASS - 5, rng), _multilabel_pool(LATE_PER_CLASS, rng)
    assert picks("auto-late-mmc", early) == picks("auto", early) != picks("mmc", early)
    assert picks("auto-late-mmc", late) == picks("mmc", late) != picks("auto", late)


def test_mil_probabilities_are_out_of_fold_and_the_max_over_crops():
    from bench_multilabel_audit import mil_out_of_fold_probs
    from sklearn.model_selection import KFold

    from tlkit.active.head import mean_average_precision

    X, y = load_digits(return_X_y=True)
    X = (X[:300] / 16.0).astype(np.float32)
    one = np.eye(10, dtype=np.int64)[y[:300]]
    crops = np.stack([X, X[::-1], np.roll(X, 7, 0)], 1)  # [300, 3, 64]: three digit images per row
    Y = np.maximum(np.maximum(one, one[::-1]), np.roll(one, 7, 0))  # a row's classes: its crops' digits
    probs = mil_out_of_fold_probs(crops, Y, seed=0)
    assert probs.shape == Y.shape and ((probs >= 0) & (probs <= 1)).all()
    assert mean_average_precision(Y, probs) > 0.9  # chance: about 0.3
    # a row's own labels never reach the heads that score it: change them, and its fold keeps its probabilities
    fold = next(te for _, te in KFold(5, shuffle=True, random_state=0).split(crops) if 0 in te)
    changed = Y.copy()
    changed[0] = 1 - changed[0]
    assert np.array_equal(mil_out_of_fold_probs(crops, changed, seed=0)[fold], probs[fold])
    # the max over a row's crops: their order does not matter
    assert np.allclose(mil_out_of_fold_probs(crops[:, ::-1], Y, seed=0), probs, atol=1e-5)
