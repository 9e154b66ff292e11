"""Backbones: bundled weights, local files, caches, torchvision, and the offline error."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import run_cli
from tlkit.core.errors import TlkitError, WeightsNotFoundError
from tlkit.models.backbones import create_backbone, list_backbones, read_state_dict

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _top1(bb, img: Image.Image) -> int:
    t = timm.data.create_transform(**bb.data_config)
    with torch.no_grad():
        return int(bb.model(t(img)[None]).argmax())


def test_bundled_weights_classify_real_photos():
    from skimage import data

    bb = create_backbone("efficientnet_lite0", num_classes=1000)
    assert bb.weights.source == "package"
    assert len(bb.weights.sha256) == 64
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)  # TF-Lite input scaling, from the weights
    assert _top1(bb, Image.fromarray(data.chelsea())) in CAT_CLASSES
    assert _top1(bb, Image.fromarray(data.coffee())) in COFFEE_CLASSES


def test_default_is_feature_extractor():
    bb = create_backbone()
    assert bb.name == "efficientnet_lite0"
    assert bb.model(torch.randn(2, 3, 64, 64)).shape == (2, bb.num_features) == (2, 1280)


def _body(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_with_prefix_and_other_head(tmp_path, suffix):
    src = timm.create_model("test_resnet", num_classes=1000)
    sd = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, str(path))
    bb = create_backbone("test_resnet", weights=path, num_classes=5)
    assert bb.weights.source == "file" and bb.weights.sha256
    got = bb.model.state_dict()
    for k, v in _body(src.state_dict()).items():
        assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape[0] == 5  # head re-initialised for the new class count


def test_wrapped_checkpoint_is_unwrapped(tmp_path):
    src = timm.create_model("test_resnet", num_classes=0)
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    assert set(read_state_dict(tmp_path / "ckpt.pth")) == set(src.state_dict())


def test_weights_for_another_architecture_is_a_clear_error(tmp_path):
    save_file(timm.create_model("test_efficientnet").state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(TlkitError, match="do not fit|do not match"):
        create_backbone("test_resnet", weights=tmp_path / "other.safetensors")


def test_pickle_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(TlkitError, match=r"evil.pth is not a plain state dict \(torch.load\(weights_only=True\) refused it: [^\n]*\); save the weights"):
        create_backbone("test_resnet", weights=tmp_path / "evil.pth")


def test_torchvision_prefix_and_native_state_dict(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    bb = create_backbone("tv:resnet18", weights=tmp_path / "r18.pth", num_classes=3)
    assert bb.num_features == 512 and bb.data_config["interpolation"] == "bilinear"
    assert torch.equal(bb.model.body.conv1.weight, net.conv1.weight)
    assert bb.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_hf_cache_is_used_offline(tmp_path, monkeypatch):
    src = timm.create_model("test_resnet")
    snap = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(src.state_dict(), str(snap / "model.safetensors"))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    bb = create_backbone("test_resnet")
    assert bb.weights.source == "cache"
    assert torch.equal(bb.model.conv1[0].weight, src.conv1[0].weight)


def test_torch_home_cache_for_torchvision(tmp_path, monkeypatch):
    import torchvision

    net = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    bb = create_backbone("tv:resnet18")
    assert bb.weights.source == "cache"
    assert torch.equal(bb.model.body.conv1.weight, net.conv1.weight)


def test_hub_only_backbone_offline_error_is_fast_and_actionable():
    t = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        create_backbone("resnet18")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "--weights" in msg and "--no-pretrained" in msg and "resnet18" in msg and "\n" not in msg


def test_unknown_backbone_suggests_names():
    with pytest.raises(TlkitError, match="did you mean.*resnet50"):
        create_backbone("resnet5O")


def test_random_init_only_when_asked():
    bb = create_backbone("test_resnet", pretrained=False)
    assert bb.weights.source == "none"


def test_listing_reports_offline_availability():
    rows = {r.name: r for r in list_backbones()}
    assert rows["efficientnet_lite0"].offline == "package"
    assert rows["resnet50"].offline is None and rows["resnet50"].num_features == 2048


def test_cli_offline_error_is_one_line(tmp_path, digits_dir):
    res = run_cli("extract", str(digits_dir), "--out", str(tmp_path / "o"), "--backbone", "resnet18")
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) <= 2 and "--weights" in err
    assert not (tmp_path / "o" / "features.npy").exists()
