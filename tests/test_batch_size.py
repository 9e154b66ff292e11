"""`--batch-size auto` (#29): the search for the largest power of two that fits, the training probe, the
lr rule, and the CPU default end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from tests.conftest import run_cli
from tlkit.core.batch_size import BatchChoice, inference_batch, largest_fitting, parse_batch_size
from tlkit.core.errors import TlkitError
from tlkit.core.runtime import oom_errors

OOM = oom_errors()[0]  # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError before torch 2.5)


class FakeCard:
    """A real forward pass of a small conv net whose activations must fit in ``budget`` bytes; above
    that it raises torch's own out-of-memory error, as the CUDA caching allocator does."""

    def __init__(self, budget: int):
        self.budget, self.sizes = budget, []
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def __call__(self, b: int) -> torch.Tensor:
        self.sizes.append(b)
        x = torch.randn(b, 3, 16, 16)
        need = x.numel() * 4 + b * 8 * 16 * 16 * 4  # input + the conv's activations, float32
        if need > self.budget:
            raise OOM(f"CUDA out of memory. Tried to allocate {need} bytes (budget {self.budget})")
        return self.net(x)


PER_IMAGE = 3 * 16 * 16 * 4 + 8 * 16 * 16 * 4


@pytest.mark.parametrize("fits, start, cap, expected, tried", [
    (100, 32, 1024, 64, [(32, True), (64, True), (128, False)]),      # grows from the start
    (20, 32, 1024, 16, [(32, False), (16, True)]),                     # backs off
    (5, 32, 1024, 4, [(32, False), (16, False), (8, False), (4, True)]),
    (10_000, 32, 300, 256, [(32, True), (64, True), (128, True), (256, True)]),  # capped at the data
    (10_000, 32, 10**6, 1024, [(32, True), (64, True), (128, True), (256, True), (512, True), (1024, True)]),
])
def test_search_finds_the_largest_power_of_two_that_fits(fits, start, cap, expected, tried):
    card = FakeCard(fits * PER_IMAGE)
    choice = largest_fitting(card, cap=cap, start=start)
    assert choice == BatchChoice(expected, "probed", tuple(tried))
    assert choice.to_dict() == {"size": expected, "how": "probed", "tried": [list(t) for t in tried]}


def test_search_propagates_other_errors_and_refuses_when_one_image_does_not_fit():
    def broken(b):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        largest_fitting(broken, cap=64)
    with pytest.raises(TlkitError, match="1 image runs out of GPU memory; lower --image-size"):
        largest_fitting(FakeCard(PER_IMAGE // 2), cap=64)
    # a RuntimeError that says so counts too (torch's older messages)
    def old_style(b):
        if b > 2:
            raise RuntimeError("CUDA error: out of memory")

    assert largest_fitting(old_style, cap=64).size == 2


def test_parse_batch_size():
    assert parse_batch_size(None) is None and parse_batch_size("auto") is None and parse_batch_size("AUTO") is None
    assert parse_batch_size("64") == 64 and parse_batch_size(16) == 16
    for bad in ("0", "-3", "many", "1.5", 0, True):
        with pytest.raises(TlkitError, match="give a whole number >= 1 or auto"):
            parse_batch_size(bad)


def test_inference_batch_on_a_cpu_keeps_the_default_and_never_probes():
    def forward(x):
        raise AssertionError("probed on a CPU")

    cpu = torch.device("cpu")
    assert inference_batch("auto", cpu, forward, (3, 32, 32), 1000) == BatchChoice(8, "cpu default")
    assert inference_batch(None, cpu, forward, (3, 32, 32), 1000) == BatchChoice(8, "cpu default")
    assert inference_batch(24, cpu, forward, (3, 32, 32), 1000) == BatchChoice(24, "given")


def test_training_probe_leaves_the_model_as_it_was():
    """The probe runs real forward + backward passes in training mode; BatchNorm's running statistics,
    the weights and the gradients are as before, whatever the probe did."""
    from tlkit.train.autobatch import _train_probe
    from tlkit.train.config import make_config
    from tlkit.train.loaders import Runtime
    from tlkit.train.model import create_classifier

    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, ema=True)
    model = create_classifier(cfg, 3)[0].model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rt = Runtime(torch.device("cpu"), None, True, _single(), 0)
    choice = largest_fitting(_train_probe(model, rt, cfg, (3, 32, 32), 3), cap=8, start=2)
    assert choice.size == 8 and [b for b, _ in choice.tried] == [2, 4, 8]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters()) and not model.training


def _single():
    from tlkit.core.dist_env import DistInfo

    return DistInfo()


def test_lr_rule_and_the_resolved_config():
    from tlkit.train import autobatch
    from tlkit.train.config import make_config
    from tlkit.train.loaders import Runtime

    rt = Runtime(torch.device("cpu"), None, True, _single(), 0)
    cfg = make_config(lr=1e-3, lr_scale="linear", batch_size=128, grad_accum=2)
    assert autobatch.scaled_lr(cfg, world_size=2) == pytest.approx((1e-3 * 512 / 32, 512))
    assert autobatch.scaled_lr(cfg.replace(lr_scale="sqrt"), world_size=2)[0] == pytest.approx(1e-3 * 4)
    assert autobatch.scaled_lr(cfg.replace(lr_scale="none"), world_size=2)[0] == 1e-3
    resolved, record = autobatch.resolve(cfg, nn.Linear(2, 2), rt, 100, (3, 32, 32), 2)
    assert (resolved.batch_size, resolved.lr, resolved.lr_scale) == (128, pytest.approx(8e-3), "none")
    assert record == {"batch_size": {"size": 128, "how": "given"},
                      "lr": {"configured": 1e-3, "rule": "linear", "reference_batch": 32, "global_batch": 256,
                             "used": pytest.approx(8e-3)}}
    # auto on a CPU: 32, the lr unchanged at the reference batch, nothing probed
    resolved, record = autobatch.resolve(make_config(lr_scale="sqrt"), None, rt, 100, (3, 32, 32), 2)
    assert (resolved.batch_size, resolved.lr) == (32, 1e-3) and record["batch_size"]["how"] == "cpu default"
    # --resume with auto keeps the batch the run started with
    again, record = autobatch.resumed(make_config(lr_scale="sqrt"), {"batch_size": 512}, world_size=1)
    assert (again.batch_size, again.lr) == (512, pytest.approx(4e-3)) and record["batch_size"]["how"] == "resumed"
    with pytest.raises(TlkitError, match="batch_size='lots': must be a whole number >= 1 or auto"):
        make_config(overrides=["batch_size=lots"])
    with pytest.raises(TlkitError, match="lr_scale='cubic': choose one of: none, linear, sqrt"):
        make_config(lr_scale="cubic")


@pytest.mark.slow
def test_cli_batch_size_auto_on_a_cpu_is_the_default_and_recorded(digits_dir, tmp_path):
    res = run_cli("extract", str(digits_dir), "--out", str(tmp_path / "f"), "--image-size", "32",
                  "--engine", "torch", "--batch-size", "auto")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["batch_size"] == {"size": 8, "how": "cpu default"}
    res = run_cli("extract", str(digits_dir), "--out", str(tmp_path / "g"), "--image-size", "32", "--batch-size", "0")
    assert res.returncode == 2 and "--batch-size '0': give a whole number >= 1 or auto" in res.stdout + res.stderr
    res = run_cli("finetune", "--data", str(digits_dir), "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
                  "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "auto",
                  "--set", "lr_scale=linear", "--no-tensorboard")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (cfg["batch_size"], cfg["lr"], cfg["lr_scale"]) == (32, 1e-3, "none")
    assert cfg["chosen"]["batch_size"] == {"size": 32, "how": "cpu default"}
    assert cfg["chosen"]["lr"] == {"configured": 1e-3, "rule": "linear", "reference_batch": 32, "global_batch": 32,
                                   "used": 1e-3}
    res = run_cli("predict", str(tmp_path / "run"), str(digits_dir), "--out", str(tmp_path / "p.csv"),
                  "--batch-size", "auto", "-v")
    assert res.returncode == 0, res.stderr
    assert "batch size 8 (cpu default)" in res.stderr
