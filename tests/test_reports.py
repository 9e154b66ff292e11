"""Evaluation pictures and TensorBoard logs of real tiny runs on digit images (32 px): ROC, precision-recall,
reliability and top-losses PNGs, average precision against scikit-learn, event files, a binary task."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.test_train import make_digits, tiny_config
from tlkit.core.io import read_csv, read_json
from tlkit.train import evaluate_run, fit
from tlkit.train.metrics import calibration_bins, compute_metrics, expected_calibration_error

EVAL_PLOTS = ("confusion_matrix", "roc", "pr", "reliability", "top_losses")


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()


def saved_predictions(folder, stem="evaluation"):
    """``(CSV rows, probs [n, K])`` as evaluate wrote them (same row order)."""
    rows = read_csv(folder / f"{stem}_predictions.csv")
    return rows, np.load(folder / f"{stem}_probs.npy")


def assert_ap_matches_sklearn(m, folder, classes):
    from sklearn.metrics import average_precision_score

    rows, probs = saved_predictions(folder)
    y = np.array([classes.index(r["label"]) for r in rows])
    onehot = y[:, None] == np.arange(len(classes))
    assert m["average_precision_macro"] == pytest.approx(average_precision_score(onehot, probs, average="macro"))
    assert m["average_precision_micro"] == pytest.approx(average_precision_score(onehot, probs, average="micro"))
    for c, name in enumerate(classes):
        assert m["per_class"][name]["average_precision"] == pytest.approx(
            average_precision_score(onehot[:, c], probs[:, c]))


@pytest.fixture(scope="module")
def digits3(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("reports") / "digits")


@pytest.fixture(scope="module")
def run3(digits3, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports-run") / "run"
    fit(tiny_config(), data=digits3, out=out)
    return out


# --------------------------------------------------------------------------- finetune


@pytest.mark.slow
def test_finetune_writes_tensorboard_events(run3):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tlkit.train.checkpoint import load_train_state

    acc = EventAccumulator(str(run3 / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("step/train_loss", "step/lr", "train/loss", "train/accuracy", "val/loss", "val/accuracy",
                "val/f1_macro", "epoch/lr", "hparam/best_val_accuracy"):
        assert tag in tags["scalars"], tag
    steps = load_train_state(run3 / "train_state.pt")["step"]
    assert [e.step for e in acc.Scalars("step/lr")] == list(range(1, steps + 1))
    history = read_json(run3 / "metrics.json")["history"]
    assert [e.value for e in acc.Scalars("val/accuracy")] == pytest.approx([h["val_accuracy"] for h in history])
    assert {"val/confusion_matrix", "val/predictions"} <= set(tags["images"])
    assert acc.Images("val/predictions")[-1].encoded_image_string[:4] == b"\x89PNG"
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


@pytest.mark.slow
def test_finetune_plots_the_best_epochs_validation_predictions(run3):
    for name in ("roc", "pr", "reliability", "confusion_matrix", "loss", "accuracy"):
        assert_png(run3 / "plots" / f"{name}.png")


# --------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_writes_predictions_plots_and_sklearns_average_precision(run3, digits3):
    m = evaluate_run(run3, digits3, workers=0, precision="fp32")
    for name in EVAL_PLOTS:
        assert_png(run3 / "plots" / f"evaluation_{name}.png")
    assert_ap_matches_sklearn(m, run3, ["0", "1", "2"])
    rows, probs = saved_predictions(run3)
    assert len(rows) == m["n"] == 24 and probs.shape == (24, 3)
    y = np.array([int(r["label"]) for r in rows])
    assert [r["predicted"] for r in rows] == [str(p) for p in probs.argmax(1)]
    losses = np.array([float(r["loss"]) for r in rows])
    assert losses.mean() == pytest.approx(m["loss"], rel=1e-4)
    assert losses == pytest.approx(-np.log(probs[np.arange(24), y]), rel=1e-4)


@pytest.mark.slow
def test_evaluate_out_elsewhere_puts_plots_beside_it(run3, digits3, tmp_path):
    evaluate_run(run3, digits3, workers=0, precision="fp32", out=tmp_path / "test.json")
    assert (tmp_path / "test_predictions.csv").is_file() and (tmp_path / "test_probs.npy").is_file()
    for name in EVAL_PLOTS:
        assert_png(tmp_path / "plots" / f"test_{name}.png")


@pytest.mark.slow
def test_binary_task_from_the_cli_without_tensorboard(tmp_path):
    from typer.testing import CliRunner

    import tlkit.cli.evaluate  # noqa: F401
    import tlkit.cli.finetune  # noqa: F401
    from tlkit.cli._app import app

    data = make_digits(tmp_path / "binary", classes=(0, 1), per_class=8)
    out = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(app, ["finetune", "--data", str(data), "--out", str(out), "--backbone", "test_resnet",
                            "--no-pretrained", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                            "--workers", "0", "--precision", "fp32", "--no-tensorboard"])
    assert r.exit_code == 0, r.output
    assert read_json(out / "best.json")["config"]["tensorboard"] is False
    assert not (out / "tb").exists()
    for name in ("roc", "pr", "reliability"):
        assert_png(out / "plots" / f"{name}.png")
    r = runner.invoke(app, ["evaluate", str(out), "--data", str(data), "--workers", "0", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "average_precision_macro" in r.output and "AP" in r.output
    m = read_json(out / "evaluation.json")
    assert_ap_matches_sklearn(m, out, ["0", "1"])
    from sklearn.metrics import average_precision_score

    rows, probs = saved_predictions(out)
    y = np.array([int(r["label"]) for r in rows])
    assert m["per_class"]["1"]["average_precision"] == pytest.approx(average_precision_score(y, probs[:, 1]))
    for name in EVAL_PLOTS:
        assert_png(out / "plots" / f"evaluation_{name}.png")


# --------------------------------------------------------------------------- pure parts


def test_reliability_bins_are_the_ece_bins():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, 200)
    bins = calibration_bins(probs, y, bins=15)
    assert bins.counts.sum() == 200 and len(bins.edges) == 16
    conf, correct = probs.max(1), probs.argmax(1) == y
    reference = sum(abs(correct[m].mean() - conf[m].mean()) * m.mean()
                    for lo, hi in zip(bins.edges[:-1], bins.edges[1:]) if (m := (conf > lo) & (conf <= hi)).any())
    assert expected_calibration_error(probs, y) == pytest.approx(reference) == pytest.approx(bins.ece)


def test_average_precision_of_an_absent_class_is_none_and_left_out_of_the_macro():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.5, .4, .1]])
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["c"]["average_precision"] is None
    assert m["average_precision_macro"] == pytest.approx(
        np.mean([m["per_class"][c]["average_precision"] for c in "ab"]))


def test_curves_stay_readable_for_many_classes(tmp_path):
    from tlkit.train.plots import LEGEND_CLASSES, plot_curves, pr_curves, roc_curves

    rng = np.random.default_rng(0)
    k = 40
    y = np.repeat(np.arange(k), 3)
    probs = rng.dirichlet(np.ones(k), size=len(y))
    per, averages = roc_curves(y, probs, [f"c{i}" for i in range(k)])
    assert len(per) == k and [a.label for a in averages] == ["micro-average", "macro-average"]
    plot_curves(per, averages, tmp_path / "roc.png", kind="roc")
    assert_png(tmp_path / "roc.png")
    per, averages = pr_curves(y, probs, [f"c{i}" for i in range(k)])
    assert 0 <= averages[1].area <= 1 and LEGEND_CLASSES < k
    plot_curves(per, averages, tmp_path / "pr.png", kind="pr")
    assert_png(tmp_path / "pr.png")
