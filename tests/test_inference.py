"""BatchNorm folding for inference: exact in fp32, checked, and discarded when it would be wrong."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from tlkit.features.extract import extract_features
from tlkit.models.inference import fold_batchnorm, prepare_for_inference

CPU = torch.device("cpu")


def _randomise_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics, so that a wrong fold cannot pass by accident."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_fold_is_exact_in_fp32(name):
    model = _randomise_bn_stats(timm.create_model(name, num_classes=0))
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        fast = prepare_for_inference(model, CPU, None, input_size=(3, 64, 64))
        out = fast(x.contiguous(memory_format=torch.channels_last))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert n_bn < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_bf16_leaves_depthwise_batchnorm_in_place():
    model = _randomise_bn_stats(timm.create_model("test_efficientnet", num_classes=0))
    depthwise = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    probe = _randomise_bn_stats(timm.create_model("test_efficientnet", num_classes=0))
    folded_all = fold_batchnorm(probe, depthwise=True)
    fast = prepare_for_inference(model, CPU, torch.bfloat16, input_size=(3, 64, 64))
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert depthwise > 0 and left == depthwise
    assert folded_all == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class _BnBeforeConv(nn.Module):
    """Conv then BN as children, but the BN runs first: folding by child order would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_fold_that_changes_the_output_is_discarded():
    model = _randomise_bn_stats(_BnBeforeConv())
    assert fold_batchnorm(_randomise_bn_stats(_BnBeforeConv()), depthwise=True) == 1  # the naive fold happens
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        fast = prepare_for_inference(model, CPU, None, input_size=(3, 16, 16))
        assert isinstance(fast.bn, nn.BatchNorm2d)
        assert torch.allclose(fast(x), model(x), atol=1e-6)


def test_extract_with_and_without_fusing_agree(tmp_path, photos_dir):
    fused = extract_features(photos_dir, tmp_path / "a", precision="fp32", image_size=96, workers=0)
    plain = extract_features(photos_dir, tmp_path / "b", precision="fp32", image_size=96, workers=0, fuse=False)
    assert fused.count == plain.count == 20
    a, b = np.load(tmp_path / "a" / "features.npy"), np.load(tmp_path / "b" / "features.npy")
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
