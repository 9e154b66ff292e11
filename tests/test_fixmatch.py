"""FixMatch consistency training (tlkit.train.consistency) and finetune rounds that use the unlabeled pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import flatten_class_tree, run_cli
from tests.test_train import make_digits, tiny_config
from tlkit.core.errors import TlkitError
from tlkit.train import fit
from tlkit.train.consistency import ConsistencyConfig, UnlabeledSet, consistency_loss, two_views


def test_the_loss_masks_weak_predictions_below_the_threshold():
    weak = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 6.0], [0.0, 3.0, 2.9]])
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    term = consistency_loss(weak, strong, threshold=0.95, weight=2.0)
    conf = torch.softmax(weak, -1).max(-1).values
    assert term.mask.tolist() == (conf >= 0.95).tolist() == [True, False, True, False]
    assert term.pseudo.tolist() == [0, 0, 2, 1]
    ce = torch.nn.functional.cross_entropy(strong, term.pseudo, reduction="none")
    assert torch.isclose(term.loss, 2.0 * (ce[0] + ce[2]) / 4)  # mean over all four, masked ones count as 0
    term.loss.backward()
    assert strong.grad[[1, 3]].abs().sum() == 0 and strong.grad[[0, 2]].abs().sum() > 0
    assert consistency_loss(weak, strong, threshold=1.0).mask.sum() == 0  # nothing reaches 1: no term
    assert float(consistency_loss(weak, strong, threshold=0.0).mask.float().mean()) == 1.0


def test_strong_and_weak_views_differ_and_repeat_under_a_seed():
    from PIL import Image
    from skimage import data

    from tlkit.core.runtime import seed_everything

    img = Image.fromarray(data.chelsea())
    views = two_views({"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}, ConsistencyConfig(),
                      scale_min=0.7, hflip=0.5, vflip=0.0)

    def draw(seed: int):
        seed_everything(seed)  # what the loop does per epoch (torch, random and numpy: RandAugment uses all)
        return views(img)

    (w1, s1), (w2, s2), (w3, _) = draw(0), draw(0), draw(1)
    assert w1.shape == s1.shape == (3, 64, 64)
    assert torch.equal(w1, w2) and torch.equal(s1, s2)  # deterministic under a seed
    assert not torch.equal(w1, s1)  # the strong view is another image
    assert not torch.equal(w1, w3)
    # the strong view starts from the weak view's crop: without RandAugment and erasing they are equal
    plain = two_views({"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3},
                      ConsistencyConfig(augment="", reprob=0.0), scale_min=0.7, hflip=0.5, vflip=0.0)
    torch.manual_seed(3)
    w, s = plain(img)
    assert torch.equal(w, s)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    return make_digits(root / "train", per_class=6), make_digits(root / "unlabeled", per_class=12, seed=1)


@pytest.mark.slow
def test_fit_with_an_unlabeled_set_records_what_the_consistency_part_did(digits, tmp_path):
    from tlkit.data import scan_images

    train, unl = digits
    recs = scan_images(unl).records
    truth = UnlabeledSet(tuple(r.path for r in recs), tuple(r.label for r in recs))
    cfg = tiny_config(epochs=2, fixmatch_threshold=0.0, fixmatch_per_epoch=20, fixmatch_mu=2)
    res = fit(cfg, data=train, out=tmp_path / "run", unlabeled=truth)
    # 15 labeled training images = 1 full batch of 8; 20 unlabeled per epoch at 16 a step = 2 steps
    for row in res.history:
        assert row["unlabeled_images"] == 2 * 16 and row["pseudo_labels"] == 32 and row["mask_rate"] == 1.0
        assert 0.0 <= row["pseudo_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][0]["mask_rate"] == 1.0
    # a threshold nothing reaches: no pseudo-label, and no truth: no accuracy
    blind = UnlabeledSet.from_folder(unl)
    res = fit(tiny_config(epochs=1, fixmatch_threshold=1.0, fixmatch_per_epoch=20), data=train,
              out=tmp_path / "run2", unlabeled=blind)
    assert res.history[0]["pseudo_labels"] == 0 and res.history[0]["pseudo_accuracy"] is None
    # more unlabeled images per epoch (capped at the 36 there are): 3 steps, the labeled batch cycled 3 times
    seen = []
    res = fit(tiny_config(epochs=1, fixmatch_threshold=0.5, fixmatch_per_epoch=64), data=train,
              out=tmp_path / "run3", unlabeled=blind, progress=seen.append)
    assert res.history[0]["unlabeled_images"] == 3 * 16 and seen == [8, 8, 8]


def test_unlabeled_runs_refuse_cached_features_and_bad_settings(digits, tmp_path):
    train, unl = digits
    with pytest.raises(TlkitError, match="precompute_features"):
        fit(tiny_config(mode="linear-probe", precompute_features=True), data=train, out=tmp_path / "a",
            unlabeled=UnlabeledSet.from_folder(unl))
    with pytest.raises(TlkitError, match="fixmatch_mu"):
        tiny_config(fixmatch_mu=0)
    with pytest.raises(TlkitError, match="fixmatch_threshold"):
        tiny_config(fixmatch_threshold=1.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TlkitError, match="no images found"):
        UnlabeledSet.from_folder(empty)
    with pytest.raises(TlkitError, match="unlabeled set is empty"):
        UnlabeledSet(())


@pytest.mark.slow
def test_cli_finetune_with_unlabeled_images(digits, tmp_path):
    train, unl = digits
    res = run_cli("finetune", "--data", str(train), "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
                  "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                  "--unlabeled", str(unl), "--set", "fixmatch_per_epoch=16", "--set", "fixmatch_threshold=0.2")
    assert res.returncode == 0, res.stderr
    assert "pseudo-labels" in res.stderr  # the epoch lines, printed with the progress bar
    row = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][0]
    assert row["unlabeled_images"] == 16
    bad = run_cli("finetune", "--data", str(train), "--out", str(tmp_path / "run2"), "--backbone", "test_resnet",
                  "--no-pretrained", "--unlabeled", str(tmp_path / "nowhere"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- rounds


def _flat_pool(tmp_path: Path, per_class: int = 8) -> tuple[Path, dict[str, str]]:

    src = make_digits(tmp_path / "src", per_class=per_class, seed=2)
    pool = tmp_path / "pool"
    truth = flatten_class_tree(src, pool)
    return pool, truth


@pytest.mark.slow
def test_finetune_rounds_with_fixmatch_leave_labels_alone_and_report_it(tmp_path):
    from tlkit.active.labels import import_seed_labels
    from tlkit.active.project import Project
    from tlkit.core.io import write_csv

    pool, truth = _flat_pool(tmp_path)
    seed = sorted(truth)[::2][:12]
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, truth[n]) for n in seed])
    recipe = tmp_path / "small.yaml"
    recipe.write_text("batch_size: 8\nworkers: 0\nfixmatch_per_epoch: 16\nfixmatch_threshold: 0.3\ntensorboard: false\n")
    project = Project.create(tmp_path / "proj", pool=pool, classes=("0", "1", "2"), image_size=32, recipe=str(recipe))
    import_seed_labels(project, tmp_path / "seed.csv")
    before = project.labels_csv.read_bytes()
    res = run_cli("al-round", str(project.root), "--batch", "4", "--train", "finetune", "--epochs", "2",
                  "--ssl", "fixmatch", "--device", "cpu", timeout=1800)
    assert res.returncode == 0, res.stderr
    assert project.labels_csv.read_bytes() == before  # pseudo-labels never reach labels.csv
    m = json.loads((project.round_dir(1) / "metrics.json").read_text())
    cons = m["consistency"]
    assert m["learner"] == "finetune+fixmatch" and m["train"] == "finetune"
    assert cons["unlabeled_pool"] == len(truth) - 12 and cons["unlabeled_images"] == 2 * 16
    assert 0.0 <= cons["mask_rate"] <= 1.0 and m["pseudo_labels"] == round(cons["mask_rate"] * 32)
    assert cons["pseudo_label_accuracy"] is None  # a real round does not know the truth
    assert cons["threshold"] == 0.3 and cons["per_epoch"] == 16
    # the project's default (ssl: self-training) means the finetune default for finetune rounds: off, today's
    # learner, with no consistency record
    res = run_cli("al-round", str(project.root), "--batch", "4", "--train", "finetune", "--epochs", "1",
                  "--new", "--device", "cpu", timeout=1800)
    assert res.returncode == 0, res.stderr
    m2 = json.loads((project.round_dir(2) / "metrics.json").read_text())
    assert m2["learner"] == "finetune" and "consistency" not in m2 and "pseudo_labels" not in m2
    status = run_cli("al-status", str(project.root), env={"COLUMNS": "200"})
    assert status.returncode == 0 and "finetune+fixmatch" in " ".join(status.stdout.split())
    rounds = json.loads(run_cli("al-status", str(project.root), "--json").stdout)["rounds"]
    assert [r["learner"] for r in rounds] == ["finetune+fixmatch", "finetune"]
    assert project.labels_csv.read_bytes() == before
    wrong = run_cli("al-round", str(project.root), "--train", "finetune", "--ssl", "self-training", "--new")
    assert wrong.returncode == 2 and "--ssl self-training is for --train head rounds" in wrong.stderr
    wrong = run_cli("al-round", str(project.root), "--ssl", "fixmatch", "--new")
    assert wrong.returncode == 2 and "--train finetune takes" not in wrong.stderr and "fixmatch is for" in wrong.stderr


def test_the_finetune_learner_measures_pseudo_labels_against_the_simulators_truth(tmp_path):
    from tlkit.active.finetune import FinetuneLearner

    pool, truth = _flat_pool(tmp_path, per_class=6)
    paths = sorted(pool.iterdir())
    classes = ("0", "1", "2")
    y = np.array([classes.index(truth[p.name]) for p in paths])  # the simulator knows every label
    labeled = np.zeros(len(y), bool)
    labeled[::3] = True
    config = {"backbone": "test_resnet", "pretrained": False, "image_size": 32, "epochs": 1, "batch_size": 4,
              "workers": 0, "tensorboard": False, "fixmatch_threshold": 0.0, "fixmatch_per_epoch": 8}
    res = FinetuneLearner(paths, classes, config=config, device="cpu", ssl="fixmatch", engine="torch").fit(
        labeled, y, seed=0)
    cons = res.notes["consistency"]
    assert cons["unlabeled_pool"] == int((~labeled).sum()) and cons["mask_rate"] == 1.0
    assert cons["pseudo_label_accuracy"] is not None and 0.0 <= cons["pseudo_label_accuracy"] <= 1.0
    assert res.probs.shape == (len(y), 3)
    with pytest.raises(TlkitError, match="unknown --ssl 'self-training'"):
        FinetuneLearner(paths, classes, config=config, ssl="self-training").fit(labeled, y, seed=0)


@pytest.mark.slow
def test_al_simulate_finetune_with_fixmatch(tmp_path):

    pool = make_digits(tmp_path / "pool", per_class=6, seed=3)
    test = make_digits(tmp_path / "test", per_class=3, seed=4)
    res = run_cli("al-simulate", "--pool", str(pool), "--test", str(test), "--out", str(tmp_path / "sim"),
                  "--strategies", "random", "--seeds", "1", "--start", "6", "--batch", "3", "--rounds", "1",
                  "--image-size", "32", "--train", "finetune", "--epochs", "1", "--ssl", "fixmatch", "--engine", "torch")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["budgets"] == [6, 9]
    wrong = run_cli("al-simulate", "--pool", str(pool), "--test", str(test), "--out", str(tmp_path / "sim2"),
                    "--strategies", "random", "--train", "head", "--ssl", "fixmatch")
    assert wrong.returncode == 2 and "--ssl fixmatch is for --train finetune rounds" in wrong.stderr
