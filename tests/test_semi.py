"""Self-trained head rounds (tlkit.active.semi) on real data: scikit-learn's handwritten digits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tlkit.active import head as heads
from tlkit.active import semi
from tlkit.active.learner import HeadLearner
from tlkit.core.errors import TlkitError

CLASSES = tuple(str(i) for i in range(10))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target


def _labeled(n: int, b: int, seed: int) -> np.ndarray:
    lab = np.zeros(n, bool)
    lab[np.random.default_rng(seed).choice(n, b, replace=False)] = True
    return lab


@pytest.mark.parametrize("split", [0, 1, 2])
def test_self_training_beats_the_plain_head_on_held_out_digits(digits, split):
    x, y = digits
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=split)
    lab = _labeled(len(xtr), 50, split)
    acc = {}
    for ssl in semi.SSL_MODES:
        res = HeadLearner(xtr, CLASSES, x_test=xte, validate=False, ssl=ssl).fit(lab, ytr, seed=0)
        acc[ssl] = float((res.test_probs.argmax(1) == yte).mean())
        assert res.notes["learner"] == ("head" if ssl == "off" else "head+self-training")
    assert acc["self-training"] >= acc["off"] + 0.02, acc


def test_pseudo_labels_are_balanced_right_more_often_than_the_head_and_never_labeled_rows(digits):
    x, y = digits
    lab = _labeled(len(x), 30, 4)
    cfg = semi.SelfTraining()
    scaler = heads.Scaler.fit(x)
    head = heads.fit_head(x[lab], y[lab], CLASSES, scaler=scaler)
    graph = semi.PoolGraph.build(x, semi.graph_rows(len(x), lab, cfg.max_points, np.random.default_rng(0)),
                                 cfg.neighbours)
    rows, pseudo, weight = semi.pseudo_labels(graph, head.predict_proba(x[graph.rows]), lab, y, cfg)
    assert rows.size and not lab[rows].any() and len(set(rows.tolist())) == rows.size
    quota = round(cfg.per_class * 30 / len(np.unique(y[lab])))
    assert np.bincount(pseudo, minlength=10).max() <= quota  # no class swallows the others
    assert np.all((weight > 0) & (weight <= cfg.weight))
    head_acc = (head.predict_proba(x[~lab]).argmax(1) == y[~lab]).mean()
    assert (pseudo == y[rows]).mean() > head_acc + 0.1  # the few chosen are far better than the head's average


def test_big_pools_graph_a_sample_that_holds_every_labeled_row():
    rng = np.random.default_rng(0)
    labeled = np.zeros(50_000, bool)
    labeled[rng.choice(50_000, 300, replace=False)] = True
    rows = semi.graph_rows(50_000, labeled, 2_000, np.random.default_rng(1))
    assert rows.size == 2_000 and np.all(np.diff(rows) > 0) and labeled[rows].sum() == 300
    assert np.array_equal(semi.graph_rows(1_500, labeled[:1_500], 2_000, rng), np.arange(1_500))


def test_ssl_off_is_the_plain_head_and_cross_validation_validates_what_is_used(digits):
    x, y = digits
    lab = _labeled(len(x), 40, 7)
    off = HeadLearner(x, CLASSES, ssl="off").fit(lab, y, seed=0)
    plain = heads.fit_head(x[lab], y[lab], CLASSES, scaler=heads.Scaler.fit(x), seed=0)
    assert np.allclose(off.probs, plain.predict_proba(x), atol=1e-6)
    on = HeadLearner(x, CLASSES).fit(lab, y, seed=0)
    assert on.validation.method == "cv" and on.notes["pseudo_labels"] > 0
    assert on.validation.accuracy != off.validation.accuracy  # each fold self-trains, as the round's model does


def test_unknown_ssl_mode_is_one_line(digits):
    x, y = digits
    with pytest.raises(TlkitError, match="unknown --ssl 'on'.*self-training or off"):
        HeadLearner(x, CLASSES, ssl="on").fit(_labeled(len(x), 20, 0), y, seed=0)


@pytest.mark.slow
def test_rounds_record_their_learner_and_ssl_off_keeps_the_plain_head(tmp_path, digits_dir):
    import json

    from tests.conftest import run_cli
    from tlkit.active.labels import import_seed_labels
    from tlkit.active.project import Project
    from tlkit.core.io import write_csv

    names = sorted(p.relative_to(digits_dir).as_posix() for p in digits_dir.rglob("*.png"))
    seed = [n for n in names if n.endswith(("0.png", "1.png", "2.png"))][:20]
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, n.split("/")[0]) for n in seed])
    project = Project.create(tmp_path / "proj", pool=digits_dir, image_size=32)
    import_seed_labels(project, tmp_path / "seed.csv")
    labels_before = project.labels_csv.read_bytes()
    assert run_cli("al-round", str(project.root), "--batch", "5").returncode == 0
    m1 = json.loads((project.round_dir(1) / "metrics.json").read_text())
    assert m1["learner"] == "head+self-training" and m1["pseudo_labels"] > 0
    assert project.labels_csv.read_bytes() == labels_before  # pseudo-labels never reach labels.csv
    assert run_cli("al-round", str(project.root), "--batch", "5", "--new", "--ssl", "off").returncode == 0
    m2 = json.loads((project.round_dir(2) / "metrics.json").read_text())
    assert m2["learner"] == "head" and "pseudo_labels" not in m2
    status = json.loads(run_cli("al-status", str(project.root), "--json").stdout)
    assert [r["learner"] for r in status["rounds"]] == ["head+self-training", "head"]
    res = run_cli("al-round", str(project.root), "--ssl", "yes")
    assert res.returncode == 2 and "unknown --ssl 'yes'" in res.stderr


# --------------------------------------------------------------------------- --train auto (the learner choice)


def test_the_learner_choice_rules():
    from tlkit.active.learner import (
        CV_MARGIN, FINETUNE_MIN_PER_CLASS, LearnerResult, Validation, choose_head, finetune_rule,
    )

    assert finetune_rule(FINETUNE_MIN_PER_CLASS, gpu=True)[0]
    assert not finetune_rule(FINETUNE_MIN_PER_CLASS - 1, gpu=True)[0]
    ok, why = finetune_rule(10_000, gpu=False)
    assert not ok and "no GPU" in why

    def fits(off, st):
        return {"off": LearnerResult(None, Validation(off, "cv"), 0.0),
                "self-training": LearnerResult(None, Validation(st, "cv"), 0.0)}

    assert choose_head(fits(0.70, 0.60))[0] == "off"
    assert choose_head(fits(0.60 + CV_MARGIN / 2, 0.60))[0] == "self-training"  # within the margin: kept
    assert choose_head(fits(0.50, 0.60))[0] == "self-training"
    assert choose_head(fits(None, None))[0] == "self-training"


@pytest.mark.slow
def test_train_auto_rounds_say_which_learner_and_why(tmp_path, digits_dir):
    import json

    from tests.conftest import run_cli
    from tlkit.active.labels import import_seed_labels
    from tlkit.active.project import Project
    from tlkit.core.io import write_csv

    names = sorted(p.relative_to(digits_dir).as_posix() for p in digits_dir.rglob("*.png"))
    seed = [n for n in names if n.endswith(("0.png", "1.png", "2.png"))][:20]
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, n.split("/")[0]) for n in seed])
    project = Project.create(tmp_path / "proj", pool=digits_dir, image_size=32)
    import_seed_labels(project, tmp_path / "seed.csv")
    before = project.labels_csv.read_bytes()
    res = run_cli("al-round", str(project.root), "--batch", "5", "--train", "auto", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    m = json.loads((project.round_dir(1) / "metrics.json").read_text())
    choice = m["learner_choice"]
    cands = {c["learner"]: c for c in choice["candidates"]}
    assert set(cands) == {"head", "head+self-training", "finetune"}
    assert all(0.0 <= cands[k]["cv_accuracy"] <= 1.0 and cands[k]["seconds"] > 0 for k in ("head", "head+self-training"))
    assert cands["finetune"]["cv_accuracy"] is None and "no GPU" in cands["finetune"]["note"]
    # the round used what it chose, with that learner's own cross-validated accuracy
    assert m["train"] == choice["train"] == "head" and m["learner"] == choice["chosen"]
    assert m["val_accuracy"] == cands[choice["chosen"]]["cv_accuracy"]
    off, st = cands["head"]["cv_accuracy"], cands["head+self-training"]["cv_accuracy"]
    from tlkit.active.learner import CV_MARGIN

    assert choice["chosen"] == ("head" if off > st + CV_MARGIN else "head+self-training")
    assert project.labels_csv.read_bytes() == before
    status = run_cli("al-status", str(project.root), env={"COLUMNS": "200"})
    text = " ".join(status.stdout.split())
    assert status.returncode == 0 and "why this learner" in text and "cv: " in text
    rounds = json.loads(run_cli("al-status", str(project.root), "--json").stdout)["rounds"]
    assert rounds[0]["learner_reason"] == choice["reason"]
    wrong = run_cli("al-round", str(project.root), "--train", "auto", "--ssl", "off", "--new")
    assert wrong.returncode == 2 and "--train auto chooses --ssl too" in wrong.stderr
