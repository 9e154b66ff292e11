"""`tlkit al-simulate`: curves, summary, shared random starts, inputs from images or extract folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tlkit.active.simulate import aubc, simulate
from tlkit.core.errors import TlkitError


def test_aubc_is_normalised_area():
    assert aubc([10, 20], [0.5, 0.7]) == pytest.approx(0.6)
    assert aubc([10, 20, 40], [0.5, 0.5, 0.5]) == pytest.approx(0.5)


def test_simulate_on_arrays_same_start_and_rising_curves():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target
    res = simulate(x[:1200], y[:1200], x[1200:], y[1200:], strategies=["random", "margin"], start=10, batch=20,
                   rounds=3, seeds=2)
    assert len(res.rows) == 2 * 2 * 4 and res.budgets == [10, 30, 50, 70]
    first = {(s, seed): a for s, seed, n, a in res.rows if n == 10}
    assert first[("random", 0)] == first[("margin", 0)] and first[("random", 1)] == first[("margin", 1)]
    for s in ("random", "margin"):
        ma = res.summary[s]["mean_accuracy"]
        assert ma[70] > ma[10] + 0.15


def test_head_learner_returns_one_typed_result():
    from sklearn.datasets import load_digits

    from tlkit.active.learner import HeadLearner

    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    classes = tuple(str(c) for c in range(10))
    labeled = np.zeros(1200, bool)
    labeled[:100] = True
    learner = HeadLearner(x[:1200], classes, x_test=x[1200:])
    res = learner.fit(labeled, y[:1200], seed=0, needs=("probs", "mc_probs"))
    assert res.probs.shape == (1200, 10) and res.mc_probs.shape == (1200, 10, 8) and res.test_probs.shape == (597, 10)
    assert res.validation.method == "cv" and 0.5 < res.validation.accuracy <= 1.0 and res.head is not None
    assert res.metrics()["val_accuracy_cv"] == res.validation.accuracy and res.metrics()["val_method"] == "cv"
    one_class = learner.fit(labeled & (y[:1200] == 3), y[:1200], seed=0)
    assert one_class.probs is None and one_class.test_probs is None and one_class.validation.accuracy is None
    quick = HeadLearner(x[:1200], classes, validate=False).fit(labeled, y[:1200], seed=0)
    assert quick.validation.accuracy is None and quick.mc_probs is None and np.allclose(quick.probs, res.probs)


def test_simulate_rejects_unknown_strategy():
    with pytest.raises(TlkitError, match="unknown strategy"):
        simulate(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((2, 2)), np.array([0, 1]), strategies=["nope"])


def test_cli_end_to_end_on_image_folders(tmp_path):
    from tlkit.demo import make_digits_folder

    pool = make_digits_folder(tmp_path / "pool", per_class=12, seed=0)
    test = make_digits_folder(tmp_path / "test", per_class=5, seed=99)
    out = tmp_path / "sim"
    res = run_cli("al-simulate", "--pool", str(pool), "--test", str(test), "--out", str(out), "--strategies",
                  "random,auto", "--seeds", "2", "--start", "10", "--batch", "10", "--rounds", "2", "--image-size", "64",
                  "--engine", "torch")
    assert res.returncode == 0, res.stderr
    assert "AUBC" in res.stdout
    assert json.loads((out / "features" / "pool" / "meta.json").read_text())["engine"] == "torch"
    with open(out / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["strategy", "seed", "labels", "accuracy"]
    assert len(rows) == 2 * 2 * 3
    assert {r["labels"] for r in rows} == {"10", "20", "30"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"random", "auto"} and summary["best_aubc"] in {"random", "auto"}
    assert (out / "curves.png").stat().st_size > 1000
    # the extracted features can be reused directly as an input
    res2 = run_cli("al-simulate", "--pool", str(out / "features" / "pool"), "--test", str(out / "features" / "test"),
                   "--out", str(tmp_path / "sim2"), "--strategies", "margin,typiclust", "--seeds", "2", "--rounds", "1")
    assert res2.returncode == 0, res2.stderr
    with open(tmp_path / "sim2" / "curves.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * 2 * 2


def test_cli_finetune_simulation(tmp_path):
    from tlkit.demo import make_digits_folder

    pool = make_digits_folder(tmp_path / "pool", per_class=3, seed=0)
    test = make_digits_folder(tmp_path / "test", per_class=2, seed=99)
    out = tmp_path / "sim"
    res = run_cli("al-simulate", "--pool", str(pool), "--test", str(test), "--out", str(out), "--strategies",
                  "random,margin", "--seeds", "1", "--start", "10", "--batch", "10", "--rounds", "1",
                  "--image-size", "64", "--train", "finetune", "--epochs", "1")
    assert res.returncode == 0, res.stderr
    with open(out / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 1 * 2 and {r["labels"] for r in rows} == {"10", "20"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)


def test_cli_rejects_unknown_train_mode(tmp_path, digits_dir):
    res = run_cli("al-simulate", "--pool", str(digits_dir), "--test", str(digits_dir), "--out", str(tmp_path / "o"),
                  "--train", "bogus")
    assert res.returncode == 2 and "head or finetune" in res.stderr


def test_stopping_signal_flattens_when_the_curve_does():
    """On a simulated run, round-to-round agreement (kappa) rises towards 1 as accuracy gains shrink."""
    from sklearn.datasets import load_digits

    from tlkit.active.stopping import STABLE_KAPPA

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target
    res = simulate(x[:1200], y[:1200], x[1200:], y[1200:], strategies=["random"], start=10, batch=40, rounds=8, seeds=2)
    acc = res.summary["random"]["mean_accuracy"]
    kappa = {b: np.mean([k for _, _, bb, k in res.kappa if bb == b]) for b in res.budgets[1:]}
    b = res.budgets
    assert acc[b[2]] - acc[b[0]] > 0.15 and abs(acc[b[-1]] - acc[b[-3]]) < 0.03  # steep, then flat
    assert kappa[b[1]] < 0.9 and min(kappa[bb] for bb in b[-3:]) >= STABLE_KAPPA - 0.02, kappa
    assert np.isnan([k for _, _, bb, k in res.kappa if bb == b[0]]).all()  # no previous round


def test_stopping_hint_in_plain_language():
    from tlkit.active.stopping import agreement, cohen_kappa, stop_set, stopping_hint

    assert stopping_hint([{"stopping": {"kappa": None}}]) is None
    busy = [{"stopping": {"kappa": k, "cv_gain": 0.05}} for k in (None, 0.6, 0.8)]
    assert "more labels still pay" in stopping_hint(busy) and "0.800" in stopping_hint(busy)
    flat = busy + [{"stopping": {"kappa": k, "cv_gain": 0.002}} for k in (0.98, 0.99, 0.995)]
    assert stopping_hint(flat).startswith("accuracy gains have flattened for 3 rounds") and "+0.6 points" in stopping_hint(flat)
    assert cohen_kappa(np.array([0, 1, 2, 0]), np.array([0, 1, 2, 0])) == 1.0
    assert cohen_kappa(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])) == -1.0
    assert agreement({"a": "x", "b": "y"}, {"b": "y", "c": "x"}) == 1.0  # common paths only
    paths = [f"img{i}.png" for i in range(3000)]
    first = [paths[i] for i in stop_set(paths)]
    grown = paths + ["new.png"]
    assert len(first) == 2000 and len(set(first) - {grown[i] for i in stop_set(grown)}) <= 1  # stable as the pool grows
