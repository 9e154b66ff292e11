"""Training-speed module tweaks: they must keep the math (outputs, gradients, state-dict keys) and
rest on facts about torch that these tests check, so a torch upgrade that changes them shows here."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tlkit.train.speedups import CLONING_INPLACE, keep_depthwise_fp32, outplace_activations


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _ops_of_inplace(act: nn.Module) -> list[str]:
    x = torch.randn(4, 8, requires_grad=True)
    with _OpLog() as log:
        act(x * 1.0)  # a non-leaf input, as inside a network
    return log.ops


@pytest.mark.parametrize("cls", CLONING_INPLACE)
def test_inplace_form_of_listed_activations_clones_under_autograd(cls):
    assert "clone.default" in _ops_of_inplace(cls(inplace=True))
    assert "clone.default" not in _ops_of_inplace(cls(inplace=False))


@pytest.mark.parametrize("cls", [nn.ReLU, nn.LeakyReLU, nn.ELU])
def test_activations_left_in_place_do_not_clone(cls):
    assert "clone.default" not in _ops_of_inplace(cls(inplace=True))


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_outplace_activations_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=5).train()  # ReLU6 inside BatchNormAct2d
    ref = copy.deepcopy(model)
    n = outplace_activations(model)
    assert n == sum(isinstance(m, nn.ReLU6) for m in model.modules()) > 20
    assert not any(getattr(m, "inplace", False) for m in model.modules() if isinstance(m, CLONING_INPLACE))
    x = torch.randn(4, 3, 64, 64)
    out, grads = _grads(model, x)
    ref_out, ref_grads = _grads(ref, x)
    torch.testing.assert_close(out, ref_out)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], msg=k)
    assert outplace_activations(model) == 0  # idempotent


def test_keep_depthwise_fp32_converts_only_the_slow_shapes():
    model = timm.create_model("efficientnet_lite0", num_classes=5)
    keys = list(model.state_dict())
    depthwise = [m for m in model.modules() if type(m) is nn.Conv2d and m.groups == m.in_channels > 1]
    slow = [m for m in depthwise if m.kernel_size != (3, 3) or m.stride != (1, 1)]
    assert 0 < len(slow) < len(depthwise) == 16
    assert keep_depthwise_fp32(model) == len(slow)
    assert all(type(m) is not nn.Conv2d for m in slow)
    assert all(type(m) is nn.Conv2d for m in depthwise if m not in slow)
    assert list(model.state_dict()) == keys  # checkpoints unchanged
    assert keep_depthwise_fp32(model) == 0  # idempotent
    with torch.autocast("cpu", torch.bfloat16):
        y = slow[0](torch.randn(2, slow[0].in_channels, 16, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16  # autocast's dtype flows on to the BatchNorm after it


def test_depthwise_fp32_training_step_is_as_close_to_fp32_as_plain_bf16(photos_dir):
    """Pretrained weights, real photos, a train-mode step: loss and head gradient vs full fp32."""
    from tlkit.data import ImageDataset, build_transform, scan_images
    from tlkit.models.backbones import create_backbone
    from tlkit.train.model import init_head

    torch.manual_seed(0)
    bb = create_backbone("efficientnet_lite0", num_classes=4)
    init_head(bb.model)  # as a fine-tuning run starts
    src = scan_images(photos_dir)
    tf = build_transform(dict(bb.data_config, input_size=(3, 96, 96)))
    ds = ImageDataset(src.records, tf, src.class_to_idx)
    x = torch.stack([ds[i][0] for i in range(0, 20, 2)]).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([ds[i][1] for i in range(0, 20, 2)])
    fp32 = bb.model.train()
    converted = copy.deepcopy(fp32)
    assert keep_depthwise_fp32(converted) > 0

    def step(model, bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.get_classifier().parameters()])

    ref_loss, ref_grad = step(fp32, bf16=False)
    plain_loss, plain_grad = step(copy.deepcopy(fp32), bf16=True)
    loss, grad = step(converted, bf16=True)
    cos, plain_cos = (float(F.cosine_similarity(g, ref_grad, dim=0)) for g in (grad, plain_grad))
    assert cos > 0.98 and cos >= plain_cos - 0.01  # measured: 0.989 and 0.991
    assert abs(loss - ref_loss) <= max(0.02, 1.5 * abs(plain_loss - ref_loss))
