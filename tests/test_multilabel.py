"""Multi-label data, fine-tuning, evaluate and predict (issue #30): real tiny images, a real CLI run of a tiny
timm model, metrics checked against scikit-learn, the asymmetric loss against BCE, the one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, read_json
from tlkit.data import ImageDataset, collate_skipping, scan_images
from tlkit.train.multilabel import (
    AsymmetricLoss, BCEWithLogits, choose_thresholds, multilabel_metrics, pos_weights, quick_multilabel_metrics,
)

SHAPES = {"red": ((2, 2, 14, 14), (230, 20, 20)), "green": ((0, 22, 32, 32), (20, 220, 20)),
          "blue": ((18, 2, 30, 14), (20, 20, 230))}


def draw(labels, rng) -> Image.Image:
    """A 32 px grey image with a red square, a green bar and a blue square for the labels it has."""
    a = (120 + rng.integers(0, 30, (32, 32, 3))).astype(np.uint8)
    for name in labels:
        (x0, y0, x1, y1), color = SHAPES[name]
        a[y0:y1, x0:x1] = color
    return Image.fromarray(a)


def make_set(root: Path, n: int = 32, seed: int = 0, header: str = "labels", delim: str = ";") -> Path:
    """``n`` PNGs under ``root/img`` and ``root/train.csv`` (``path,<header>``): each shape present with
    probability 1/2, so some rows have no label (all negative) and most have several."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        labels = [c for c in SHAPES if rng.random() < 0.5]
        if i == 0:
            labels = []  # always one all-negative row
        if i == 1:
            labels = ["blue", "red"]
        draw(labels, rng).save(root / "img" / f"{i:03d}.png")
        rows.append((f"img/{i:03d}.png", delim.join(labels)))
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", header])
        w.writerows(rows)
    return root / "train.csv"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("ml") / "shapes")


# --------------------------------------------------------------------------- data


def test_manifest_reads_label_sets_and_empty_rows(shapes):
    src = scan_images(shapes, labeled=True)
    assert src.task == "multilabel" and src.classes == ("blue", "green", "red")
    assert src.records[0].labels == () and src.records[0].label is None
    assert src.records[1].labels == ("blue", "red")
    ds = ImageDataset(src.records[:4], None, src.class_to_idx)
    b = collate_skipping([ds[i] for i in range(4)])
    assert b.targets.dtype == torch.float32 and b.targets.shape == (4, 3)
    assert b.targets[0].tolist() == [0, 0, 0] and b.targets[1].tolist() == [1, 0, 1]


def test_detection_from_a_label_cell_and_other_delimiters(tmp_path):
    f = make_set(tmp_path / "a", n=6, header="label", delim="|")
    assert scan_images(f).task == "single", "a '|' is not the default delimiter"
    src = scan_images(f, label_delim="|")
    assert src.task == "multilabel" and src.records[1].labels == ("blue", "red")
    single = tmp_path / "s"
    single.mkdir()
    Image.new("RGB", (8, 8)).save(single / "x.png")
    (single / "m.csv").write_text("path,label\nx.png,cat\n")
    assert scan_images(single / "m.csv").task == "single"
    assert scan_images(single / "m.csv", task="multilabel").records[0].labels == ("cat",)


@pytest.mark.parametrize("content, kwargs, needle", [
    ("path,labels\nx.png,cat;;dog\n", {}, "empty label between ';'"),
    ("path,labels\nx.png,cat\n", {"task": "single"}, "task is single-label"),
    ("path,labels\nx.png,\n", {"labeled": True}, "no row has a label"),
    ("path,label,labels\nx.png,a,b\n", {}, "both a 'label' and a 'labels' column"),
    ("path,labels\nx.png,a;b\n", {"label_delim": ","}, "--label-delim ','"),
    ("path,labels\nx.png,a;b\n", {"label_delim": ""}, "--label-delim ''"),
    ("path,labels\nx.png,a;b\n", {"task": "many"}, "--task 'many'"),
])
def test_one_line_errors(tmp_path, content, kwargs, needle):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(TlkitError) as err:
        scan_images(tmp_path / "m.csv", **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_class_tree_is_not_multilabel_data(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "x.png")
    with pytest.raises(TlkitError, match="one label per image, but the task is multi-label"):
        scan_images(tmp_path, task="multilabel")


def test_unknown_labels_and_mixed_records_are_refused(shapes):
    src = scan_images(shapes, labeled=True)
    with pytest.raises(TlkitError, match="not among the model's classes: 'red'"):
        ImageDataset(src.records, None, {"blue": 0, "green": 1})
    from tlkit.data import ImageRecord

    mixed = [src.records[1], ImageRecord(src.records[2].path, "x", "red")]
    with pytest.raises(TlkitError, match="single-label and multi-label images mixed"):
        ImageDataset(mixed, None, src.class_to_idx)


# --------------------------------------------------------------------------- metrics and losses


def _fixed_arrays():
    rng = np.random.default_rng(3)
    y = (rng.random((60, 5)) < 0.35).astype(np.uint8)
    y[:, 4] = 0
    y[:3, 4] = 1  # a rare class
    p = np.clip(0.55 * y + 0.6 * rng.random((60, 5)), 0, 1)
    return y, p


def test_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss, roc_auc_score

    y, p = _fixed_arrays()
    th = [0.3, 0.4, 0.5, 0.6, 0.7]
    m = multilabel_metrics(y, p, list("abcde"), th)
    pred = (p >= np.array(th)).astype(int)
    assert m["map_macro"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert m["map_micro"] == pytest.approx(average_precision_score(y, p, average="micro"))
    assert m["per_class"]["e"]["average_precision"] == pytest.approx(average_precision_score(y[:, 4], p[:, 4]))
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["f1_samples"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=0))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    q = quick_multilabel_metrics(y, p)
    assert q["map"] == pytest.approx(m["map_macro"])


def test_thresholds_maximise_each_class_f1():
    from sklearn.metrics import f1_score

    y, p = _fixed_arrays()
    th = choose_thresholds(y, p)
    for k in range(y.shape[1]):
        got = f1_score(y[:, k], p[:, k] >= th[k])
        best = max(f1_score(y[:, k], p[:, k] >= t) for t in np.unique(p[:, k]))
        assert got == pytest.approx(best), k
    assert choose_thresholds(np.zeros((4, 1)), np.full((4, 1), 0.9)) == [0.5], "no positive: sigmoid's midpoint"


def test_asymmetric_loss_reduces_to_bce_and_focuses_negatives():
    torch.manual_seed(0)
    logits, t = torch.randn(16, 6) * 2, (torch.rand(16, 6) < 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
    assert AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, t).item() == pytest.approx(bce.item(), rel=1e-5)
    assert BCEWithLogits()(logits, t).item() == pytest.approx(bce.item(), rel=1e-6)
    pw = pos_weights("balanced", [3, 8, 1, 0, 5, 2], 16)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, pos_weight=pw)
    assert AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, pos_weight=pw)(logits, t).item() == pytest.approx(
        ref.item(), rel=1e-5)
    assert pw.tolist()[:2] == pytest.approx([13 / 3, 1.0]) and pw[3] == 1.0
    asl = AsymmetricLoss()  # the defaults down-weight easy negatives: smaller than BCE on these logits
    assert 0 < asl(logits, t).item() < bce.item()
    x = logits.clone().requires_grad_()
    asl(x, t).backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- finetune / evaluate / predict


TINY = ["--backbone", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8", "--workers", "0",
        "--precision", "fp32", "--no-tensorboard"]


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlrun") / "run"
    r = run_cli("finetune", "--data", str(shapes), "--out", str(out), "--epochs", "2", *TINY,
                "--set", "mixup=0.2", "--set", "class_weights=balanced")
    assert r.returncode == 0, r.stderr + r.stdout
    return out, r


@pytest.mark.slow
def test_finetune_writes_thresholds_and_multilabel_metrics(run):
    out, r = run
    assert "val mAP" in r.stdout
    meta = read_json(out / "best.json")
    assert meta["task"] == "multilabel" and meta["classes"] == ["blue", "green", "red"]
    assert len(meta["thresholds"]) == 3 and all(0 < t < 1 for t in meta["thresholds"])
    assert meta["config"]["monitor"] == "val_map"
    assert len(read_json(out / "last.json")["thresholds"]) == 3
    metrics = read_json(out / "metrics.json")
    assert {"val_map", "val_map_micro", "val_f1_micro", "val_f1_macro"} <= set(metrics["history"][0])
    best = metrics["best"]
    assert best["monitor"] == "val_map" and best["thresholds"] == meta["thresholds"]
    vm = best["val_metrics"]
    for key in ("map_macro", "map_micro", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "roc_auc_macro"):
        assert key in vm, key
    assert set(vm["per_class"]) == {"blue", "green", "red"}
    for name in ("pr.png", "pr_per_class.png", "roc.png", "map.png", "loss.png"):
        assert (out / "plots" / name).is_file(), name
    assert not (out / "plots" / "confusion_matrix.png").exists()
    split = read_csv(out / "split.csv")
    assert set(split[0]) == {"path", "labels", "split"} and any(";" in r["labels"] for r in split)
    assert meta["config"]["val_fraction"] == 0.1 and meta["config"]["scale_min"] == 1.0  # multi-label defaults
    assert 2 <= sum(r["split"] == "val" for r in split) <= 5  # ~10 % of 32


def test_val_fraction_and_crop_defaults_depend_on_the_task(tmp_path, digits_dir):
    """``val_fraction: None`` holds out 20 % of single-label data and 10 % of multi-label data, ``scale_min:
    None`` crops to 70 % / not at all; a value given is kept on both."""
    from tlkit.train.config import TrainConfig, resolve_task_defaults
    from tlkit.train.splits import prepare_splits

    ml = make_set(tmp_path / "ml", n=60)
    n_val = lambda s: len(s.val)  # noqa: E731
    assert n_val(prepare_splits(ml)) == 6 and n_val(prepare_splits(ml, val_fraction=0.5)) == 30
    single = prepare_splits(digits_dir)  # 10 classes x 6: one of each class's 6 (20 % per class, rounded)
    assert single.task == "single" and n_val(single) == n_val(prepare_splits(digits_dir, val_fraction=0.2)) == 10
    cfg = TrainConfig()
    assert cfg.val_fraction is None
    assert resolve_task_defaults(cfg, "multilabel").val_fraction == 0.1
    assert resolve_task_defaults(cfg, "single").val_fraction == 0.2
    assert resolve_task_defaults(cfg.replace(val_fraction=0.3), "multilabel").val_fraction == 0.3
    assert cfg.scale_min is None and resolve_task_defaults(cfg, "single").scale_min == 0.7
    assert resolve_task_defaults(cfg, "multilabel").scale_min == 1.0
    assert resolve_task_defaults(cfg.replace(scale_min=0.5), "multilabel").scale_min == 0.5


@pytest.mark.slow
def test_evaluate_and_predict_use_the_stored_thresholds(run, shapes, tmp_path):
    out, _ = run
    r = run_cli("evaluate", str(out), "--data", str(shapes), "--json", "--workers", "0")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["task"] == "multilabel" and m["n"] == 32
    assert m["thresholds"] == read_json(out / "best.json")["thresholds"]
    probs = np.load(out / "evaluation_probs.npy")
    truth = np.array([[c in row["labels"].split(";") for c in ("blue", "green", "red")]
                      for row in read_csv(shapes)]).astype(int)
    from sklearn.metrics import average_precision_score

    assert m["map_macro"] == pytest.approx(average_precision_score(truth, probs, average="macro"), abs=1e-6)
    rows = read_csv(out / "evaluation_predictions.csv")
    assert rows[0]["labels"] == "" and rows[1]["labels"] == "blue;red"
    assert (out / "plots" / "evaluation_pr_per_class.png").is_file()

    r = run_cli("predict", str(out), str(shapes.parent / "img"), "--out", str(tmp_path / "p.csv"), "--workers", "0")
    assert r.returncode == 0, r.stderr
    pred = read_csv(tmp_path / "p.csv")
    assert list(pred[0]) == ["path", "labels", "probability:blue", "probability:green", "probability:red"]
    assert len(pred) == 32
    th = np.array(m["thresholds"])
    for row, p in zip(pred, probs):  # same images in the same order (sorted names): same sets
        got = np.array([float(row[f"probability:{c}"]) for c in ("blue", "green", "red")])
        assert got == pytest.approx(p, abs=1e-5)
        assert row["labels"] == ";".join(c for c, v, t in zip(("blue", "green", "red"), got, th) if v >= t)


@pytest.mark.slow
def test_cli_errors_are_one_line(run, shapes, tmp_path):
    out, _ = run
    bad = tmp_path / "bad"
    (bad / "img").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32)).save(bad / "img" / f"{i}.png")
    (bad / "m.csv").write_text("path,labels\nimg/0.png,red;purple\nimg/1.png,red\nimg/2.png,\n")
    r = run_cli("evaluate", str(out), "--data", str(bad / "m.csv"), "--workers", "0")
    assert r.returncode == 2 and "'purple'" in r.stderr and "unknown to the model" in r.stderr
    assert "Traceback" not in r.stderr
    tree = tmp_path / "tree"
    (tree / "red").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tree / "red" / "a.png")
    r = run_cli("evaluate", str(out), "--data", str(tree), "--workers", "0")
    assert r.returncode == 2 and "task is multi-label" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("finetune", "--data", str(shapes), "--out", str(tmp_path / "x"), "--epochs", "1", *TINY,
                "--task", "single")
    assert r.returncode == 2 and "task is single-label" in r.stderr
    r = run_cli("finetune", "--data", str(shapes), "--out", str(tmp_path / "y"), "--epochs", "1", *TINY,
                "--set", "loss=focal")
    assert r.returncode == 2 and "loss 'focal' is for single-label data" in r.stderr
    r = run_cli("finetune", "--data", str(shapes), "--out", str(tmp_path / "z"), "--epochs", "1", *TINY,
                "--label-delim", ",")
    assert r.returncode == 2 and "--label-delim ','" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_tune_maximises_validation_map_and_resumes(shapes, tmp_path):
    pytest.importorskip("optuna")
    from tlkit.train import make_config
    from tlkit.train.tune import tune

    base = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=8, workers=0,
                       precision="fp32", tensorboard=False)
    kw = dict(data=shapes, out=tmp_path / "tune", budget_s=300, trial_epochs=1, lr_find_steps=20, confirm=False)
    res = tune(base, max_trials=1, **kw)
    assert res.monitor == "val_map" and res.trials[0].state == "complete"
    assert 0 < res.trials[0].value <= 1
    assert read_json(tmp_path / "tune" / "tune.json")["monitor"] == "val_map"
    again = tune(base, max_trials=1, resume=True, **kw)  # the stored base (monitor val_map) matches
    assert [t.number for t in again.trials] == [0, 1]
