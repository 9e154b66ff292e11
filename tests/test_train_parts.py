"""Unit tests of the fine-tuning parts that need no training run: config/recipes, schedules,
losses, parameter groups, metrics, checkpoint files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from tlkit.core.errors import TlkitError
from tlkit.train import checkpoint as ckpt
from tlkit.train.config import TrainConfig, list_recipes, load_recipe, make_config, parse_overrides
from tlkit.train.losses import build_loss, build_mixup, class_weights
from tlkit.train.metrics import compute_metrics, expected_calibration_error
from tlkit.train.optim import build_optimizer, head_param_names, set_body_trainable
from tlkit.train.schedule import PhasedSchedule, ScheduleSpec, list_schedules, lr_factor

# --------------------------------------------------------------------------- config and recipes


@pytest.mark.parametrize("name", [n for n, _ in list_recipes()])
def test_bundled_recipes_load_and_describe_themselves(name):
    changed = load_recipe(name)
    assert changed, "a recipe lists what it changes"
    cfg = make_config(name)
    defaults = TrainConfig()
    for key, value in changed.items():
        assert getattr(cfg, key) != getattr(defaults, key) or value == getattr(defaults, key)
    assert dict(list_recipes())[name], "first line comment says when to use it"


def test_expected_recipes_exist():
    assert {"linear-probe", "finetune-fast", "finetune-full"} <= {n for n, _ in list_recipes()}
    full = make_config("finetune-full")
    assert (full.optimizer, full.schedule, full.label_smoothing, full.auto_augment, full.ema) == (
        "adamw", "cosine", 0.1, "rand-m9-mstd0.5", True)


def test_precedence_defaults_recipe_flags_set(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("epochs: 7\nlr: 0.01\nema: true\n")
    cfg = make_config(recipe, epochs=3, overrides=["lr=3e-4", "auto_augment=rand-m9-mstd0.5", "layer_decay=null"])
    assert (cfg.epochs, cfg.lr, cfg.ema, cfg.auto_augment, cfg.layer_decay) == (3, 3e-4, True, "rand-m9-mstd0.5", None)
    assert make_config(recipe).epochs == 7


def test_unknown_key_names_it_suggests_and_lists_valid_keys(tmp_path):
    with pytest.raises(TlkitError, match=r"unknown config key 'lable_smoothing'.*did you mean 'label_smoothing'.*valid keys:.*epochs"):
        make_config(overrides=["lable_smoothing=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(TlkitError, match=r"'epochz' in recipe bad.yaml.*did you mean 'epochs'"):
        make_config(bad)


@pytest.mark.parametrize("item, message", [
    ("epochs=many", "is not a int"),
    ("mode=half", "choose one of: full, linear-probe, freeze-unfreeze"),
    ("noequals", "write key=value"),
    ("val_fraction=1.5", "between 0 and 1"),
    ("drop_rate=2", r"drop_rate=2.0: must be between 0.0 and 1.0"),
    ("hflip=-1", "hflip=-1.0: must be between"),
    ("image_size=8", "image_size=8: must be at least 16"),
    ("class_weights=[a, b]", "give one non-negative number per class"),
    ("class_weights=[1, -2]", "give one non-negative number per class"),
    ("sampler=weighted", "choose one of: uniform, balanced"),
])
def test_bad_override_values(item, message):
    with pytest.raises(TlkitError, match=message):
        make_config(overrides=[item])


def test_unknown_recipe_suggests():
    with pytest.raises(TlkitError, match="did you mean 'finetune-fast'"):
        make_config("finetune-fats")


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["ema=true", "class_weights=[1, 2]", "lr=1e-3", "weights="]) == {
        "ema": True, "class_weights": [1, 2], "lr": "1e-3", "weights": None}
    assert make_config(overrides=["lr=1e-3"]).lr == 1e-3


# --------------------------------------------------------------------------- schedules


def test_warmup_then_cosine_shape():
    spec = ScheduleSpec(total_steps=100, warmup_steps=10, steps_per_epoch=10, min_ratio=0.01)
    f = [lr_factor("cosine", s, spec) for s in range(100)]
    assert f[0] < 0.05 and math.isclose(f[10], 1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:11])), "linear warmup increases"
    assert all(a >= b for a, b in zip(f[10:], f[11:])), "cosine decays monotonically"
    assert math.isclose(f[-1], 0.01, rel_tol=1e-6)
    assert math.isclose(f[55], 0.505, abs_tol=0.02), "half way down at the middle of the decay"


@pytest.mark.parametrize("name", [s.name for s in list_schedules()])
def test_every_schedule_is_positive_and_peaks_at_one(name):
    spec = ScheduleSpec(total_steps=60, warmup_steps=6, steps_per_epoch=6, step_epochs=2, gamma=0.5)
    f = [lr_factor(name, s, spec) for s in range(60)]
    assert all(0 < v <= 1.0 + 1e-9 for v in f)
    assert max(f) == pytest.approx(1.0, abs=0.05)


def test_onecycle_rises_then_falls():
    spec = ScheduleSpec(total_steps=100, warmup_steps=0)
    f = [lr_factor("onecycle", s, spec) for s in range(100)]
    peak = int(np.argmax(f))
    assert 25 <= peak <= 35 and f[0] < 0.1 and f[-1] < 0.02


def test_freeze_unfreeze_phases_restart_at_lower_lr():
    sched = PhasedSchedule("cosine", ((20, 1.0), (80, 0.1)), ScheduleSpec(total_steps=100, warmup_steps=5))
    assert sched(5) == pytest.approx(1.0)
    assert sched(19) < 0.05
    assert sched(25) == pytest.approx(0.1)
    assert sched(99) == pytest.approx(0.001, rel=1e-3)


# --------------------------------------------------------------------------- losses


def test_label_smoothing_and_weights_match_torch():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = build_loss(make_config(label_smoothing=0.1), 5)
    assert ce(x, y).item() == pytest.approx(F.cross_entropy(x, y, label_smoothing=0.1).item(), rel=1e-5)
    w = [1.0, 2.0, 0.5, 1.0, 3.0]
    wce = build_loss(make_config(class_weights=w), 5)
    assert wce(x, y).item() == pytest.approx(F.cross_entropy(x, y, weight=torch.tensor(w)).item(), rel=1e-5)


def test_focal_loss_downweights_easy_examples():
    focal0 = build_loss(make_config(loss="focal", focal_gamma=0.0), 3)
    focal = build_loss(make_config(loss="focal", focal_gamma=2.0), 3)
    easy, hard = torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    y = torch.tensor([0])
    assert focal0(easy, y).item() == pytest.approx(F.cross_entropy(easy, y).item(), rel=1e-5)
    assert focal(easy, y) < 0.01 * focal0(easy, y)
    assert focal(hard, y) > 0.3 * focal0(hard, y)
    assert focal(easy, y) > 0


def test_class_weights_balanced_and_checked():
    assert class_weights("balanced", [30, 10]).tolist() == pytest.approx([2 / 3, 2.0])
    with pytest.raises(TlkitError, match="give 3 non-negative numbers"):
        class_weights([1, 2], [5, 5, 5])


def test_mixup_gives_soft_targets():
    mix = build_mixup(make_config(mixup=0.2, cutmix=1.0, label_smoothing=0.1), 4)
    x, t = mix(torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert t.shape == (6, 4) and torch.allclose(t.sum(1), torch.ones(6))
    assert build_loss(make_config(), 4)(torch.randn(6, 4), t).item() > 0
    assert build_mixup(make_config(), 4) is None


# --------------------------------------------------------------------------- parameter groups


def test_param_groups_no_decay_on_norms_and_biases_and_layer_decay():
    model = timm.create_model("test_resnet", num_classes=3)
    opt = build_optimizer(model, make_config(lr=0.01, weight_decay=0.05, layer_decay=0.5))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            if p.ndim <= 1:
                assert g["weight_decay"] == 0.0, names[id(p)]
            else:
                assert g["weight_decay"] == 0.05, names[id(p)]
    head = head_param_names(model)
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[n] == pytest.approx(0.01) for n in head)
    assert lr_of["conv1.0.weight"] < lr_of["layer4.0.conv1.weight"] < 0.01
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("opt_name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                           ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad),
                                           ("adam", torch.optim.Adam)])
def test_optimizers(opt_name, cls):
    model = timm.create_model("test_resnet", num_classes=3)
    opt = build_optimizer(model, make_config(optimizer=opt_name, nesterov=True))
    assert isinstance(opt, cls)
    if opt_name == "sgd":
        assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_linear_probe_trains_only_the_head():
    model = timm.create_model("test_resnet", num_classes=3)
    set_body_trainable(model, False)
    opt = build_optimizer(model, make_config(mode="linear-probe"))
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(model.fc.weight), id(model.fc.bias)}
    with pytest.raises(TlkitError, match="unknown optimizer 'adamx'"):
        build_optimizer(model, make_config(optimizer="adamx"))


# --------------------------------------------------------------------------- metrics and checkpoints


def test_metrics_keys_and_values():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 5)
    probs = rng.dirichlet(np.ones(6), size=30)
    probs[np.arange(30), y] += 1.0
    probs /= probs.sum(1, keepdims=True)
    m = compute_metrics(y, probs, [f"c{i}" for i in range(6)])
    assert m["accuracy"] == 1.0 and m["top5_accuracy"] == 1.0 and m["f1_macro"] == 1.0
    assert {"f1_weighted", "precision_macro", "recall_macro", "roc_auc_ovr", "ece", "per_class",
            "confusion_matrix", "n"} <= set(m)
    assert np.trace(np.array(m["confusion_matrix"])) == 30
    assert m["per_class"]["c3"]["support"] == 5
    assert "top5_accuracy" not in compute_metrics(np.array([0, 1]), np.eye(2), ["a", "b"])


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[1.0, 0.0]] * 10)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.ones(10, dtype=int)) == pytest.approx(1.0)


def test_checkpoint_roundtrip_and_weights_only_state(tmp_path):
    model = timm.create_model("test_resnet", num_classes=3).to(memory_format=torch.channels_last)
    ckpt.save_weights(tmp_path / "best.safetensors", model.state_dict(), {"backbone": "test_resnet", "classes": ["a"]})
    sd, meta = ckpt.load_weights(tmp_path / "best.safetensors")
    assert meta["backbone"] == "test_resnet" and meta["format"] == ckpt.FORMAT
    assert (tmp_path / "best.json").is_file()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    ckpt.save_train_state(tmp_path / "s.pt", {"optimizer": opt.state_dict(), "rng": ckpt.rng_state()})
    state = ckpt.load_train_state(tmp_path / "s.pt")  # weights_only=True inside
    ckpt.set_rng_state(state["rng"])
    a = (torch.rand(1), np.random.rand())
    ckpt.set_rng_state(state["rng"])
    assert (torch.rand(1), np.random.rand()) == a
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_balanced_sampler_draws_classes_equally_and_shards_by_rank():
    from tlkit.train.loaders import BalancedSampler, FeatureBatches

    targets = [0] * 90 + [1] * 10
    s = BalancedSampler(targets, seed=0)
    s.set_epoch(3)
    draws = list(s)
    assert len(draws) == len(s) == 100
    share = np.mean(np.asarray(targets)[draws])
    assert 0.35 < share < 0.65  # uniform shuffling would give 0.10
    s.set_epoch(4)
    assert list(s) != draws  # a new draw every epoch, the same for the same (seed, epoch)
    ranks = [BalancedSampler(targets, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(3)
    assert len(list(ranks[0])) == 50 and sorted(list(ranks[0]) + list(ranks[1])) == sorted(draws)

    fb = FeatureBatches(torch.zeros(100, 4), torch.tensor(targets), 10, shuffle=True, seed=0, balanced=True)
    seen = torch.cat([b.targets for b in fb]).float().mean().item()
    assert 0.35 < seen < 0.65
