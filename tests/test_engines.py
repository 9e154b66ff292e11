"""Inference engines: OpenVINO parity with PyTorch fp32, fallback, the compiled-model cache, telemetry,
resume with the OpenVINO engine, and the export round trip (ONNX / OpenVINO IR vs PyTorch)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import REPO
from tlkit.core.errors import TlkitError
from tlkit.engines import ModelSpec, create_engine, engine_names, resolve_engine
from tlkit.engines import openvino_engine as ove
from tlkit.features.extract import extract_features

pytest.importorskip("openvino")

CPU = torch.device("cpu")
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _photos(names=("chelsea", "coffee", "rocket", "astronaut"), size=None):
    """Real photos (scikit-image) preprocessed as the backbone wants: [n, 3, H, W]."""
    import skimage.data
    from PIL import Image

    from tlkit.data import build_transform
    from tlkit.models.backbones import create_backbone

    bb = create_backbone("efficientnet_lite0", num_classes=1000)
    tf = build_transform(bb.data_config, image_size=size)
    x = torch.stack([tf(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")) for n in names])
    return bb, x


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ov-cache")
    old = os.environ.get("TLKIT_CACHE_DIR")
    os.environ["TLKIT_CACHE_DIR"] = str(path)
    yield path / "openvino"
    if old is None:
        os.environ.pop("TLKIT_CACHE_DIR", None)
    else:
        os.environ["TLKIT_CACHE_DIR"] = old


@pytest.mark.slow
def test_openvino_matches_pytorch_fp32_on_real_photos(cache_dir):
    bb, x = _photos()
    spec = ModelSpec.of(bb.model, (3, 224, 224), backbone=bb.name)
    ov_eng = create_engine(spec, engine="openvino", device="cpu")
    assert ov_eng.name == "openvino"
    with torch.inference_mode():
        ref = bb.model(x).numpy()
    got = ov_eng(x)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert cos.min() >= 0.998, cos  # 1000 logits, bf16 on this CPU: 0.9987-0.9998
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert got.argmax(1)[0] in CAT_CLASSES  # chelsea is still a cat


def test_auto_picks_openvino_on_a_cpu_and_torch_when_forced():
    assert engine_names() == ("auto", "torch", "openvino")
    assert resolve_engine("auto", CPU) == "openvino"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", CPU) == "torch"
    with pytest.raises(TlkitError, match="choose one of: auto, torch, openvino"):
        resolve_engine("onnx", CPU)
    with pytest.raises(TlkitError, match="CPUs only"):
        resolve_engine("openvino", torch.device("cuda"))


def test_not_installed_openvino_means_torch(monkeypatch):
    from tlkit import engines

    info = engines.ENGINES["openvino"]
    monkeypatch.setitem(engines.ENGINES, "openvino", engines.EngineInfo(info.name, info.description, lambda: False,
                                                                        info.builder))
    assert resolve_engine("auto", CPU) == "torch"
    with pytest.raises(TlkitError, match="pip install openvino"):
        resolve_engine("openvino", CPU)


class _Unconvertible(nn.Module):
    """A real forward pass OpenVINO has no converter for (torch.special.zeta)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.special.zeta(self.conv(x).mean((2, 3)).abs() + 2, torch.tensor(2.0))


def test_a_model_that_fails_conversion_falls_back_to_torch_with_one_line(cache_dir, caplog):
    spec = ModelSpec.of(_Unconvertible().eval(), (3, 16, 16), backbone="zeta")
    with caplog.at_level(logging.WARNING, logger="tlkit.engines"):
        eng = create_engine(spec, engine="auto", device="cpu", precision="fp32")
    assert eng.name == "torch"
    lines = [r.getMessage() for r in caplog.records if r.name == "tlkit.engines"]
    assert len(lines) == 1 and "conversion failed" in lines[0] and "PyTorch engine" in lines[0]
    x = torch.randn(2, 3, 16, 16)
    np.testing.assert_allclose(eng(x), spec.model(x).detach().numpy(), rtol=1e-5)
    caplog.clear()  # the failure is remembered: no second conversion attempt
    with caplog.at_level(logging.WARNING, logger="tlkit.engines"):
        assert create_engine(spec, engine="openvino", device="cpu", precision="fp32").name == "torch"
    assert "remembered" in caplog.records[0].getMessage()


def test_a_failed_parity_check_falls_back(cache_dir, monkeypatch):
    monkeypatch.setitem(ove.PARITY_COSINE, "fp32", 1.5)  # nothing can pass
    model = _tiny_cnn()
    eng = create_engine(ModelSpec.of(model, (3, 32, 32), backbone="tiny"), device="cpu", precision="fp32")
    assert eng.name == "torch"


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_cache_is_reused_and_a_corrupt_entry_is_rebuilt(cache_dir, caplog):
    spec = ModelSpec.of(_tiny_cnn(1), (3, 32, 32), backbone="tiny-cache")
    first = ove.build_openvino(spec, CPU, "fp32")
    second = ove.build_openvino(spec, CPU, "fp32")
    assert first.built and not second.built and first.entry == second.entry
    assert (first.entry / "entry.json").is_file() and any((first.entry / "blobs").iterdir())
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32), dtype=np.float32)
    ref = spec.model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(second(x), ref, rtol=1e-4, atol=1e-5)
    for damage in ("model.bin", "entry.json", "blobs"):
        target = first.entry / damage
        if target.is_dir():
            for blob in target.iterdir():
                blob.chmod(0o600)
                blob.write_bytes(b"garbage")
        else:
            target.write_bytes(target.read_bytes()[: 100] + b"garbage")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tlkit.engines.openvino_engine"):
            again = ove.build_openvino(spec, CPU, "fp32")
        np.testing.assert_allclose(again(x), ref, rtol=1e-4, atol=1e-5)
        if damage != "blobs":  # OpenVINO itself recompiles over a bad blob
            assert again.built and "damaged" in caplog.text, damage
    assert not list(cache_dir.glob("*.tmp"))  # no half-built entry left behind


def test_cache_key_separates_weights_precision_and_size():
    a, b = _tiny_cnn(1), _tiny_cnn(2)
    key = lambda m, size=32, prec="fp32": ove.cache_key(ModelSpec.of(m, (3, size, size)), prec, "v")  # noqa: E731
    assert key(a) == key(_tiny_cnn(1))
    assert len({key(a), key(b), key(a, 48), key(a, prec="bf16")}) == 4


def test_telemetry_is_disabled_before_openvino_is_imported(tmp_path):
    code = r"""
import socket, sys
tried = []
def refuse(self, address, *a, **k):
    tried.append(address)
    raise OSError("network refused by the test")
socket.socket.connect = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)
import torch
from tlkit.engines import ModelSpec
from tlkit.engines.openvino_engine import build_openvino
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
build_openvino(ModelSpec.of(model, (3, 16, 16)), torch.device("cpu"), "fp32")
import openvino.tools.ovc.telemetry_utils as tu, openvino.tools.ovc.convert_impl as ci
print(tu.tm.__name__, ci.tm.__name__, tried)
"""
    env = {**os.environ, "TLKIT_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["openvino.tools.ovc.telemetry_stub"] * 2 + ["[]"]
    assert not (tmp_path / "intel").exists()  # no consent/client-id files written


SIGNAL_SCRIPT = r"""
import faulthandler, gc, signal, subprocess, sys
faulthandler.enable()  # as pytest and `python -X faulthandler` do: an alternate signal stack of its own
import torch
from tlkit.engines import ModelSpec, create_engine
from tlkit.engines.sigstack import ensure_signal_stack
def tiny(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
mode = sys.argv[1]
if mode == "tlkit":  # two engines, built and dropped in the same order (what the old test suite did)
    a = create_engine(ModelSpec.of(tiny(1), (3, 16, 16)), engine="openvino", device="cpu")
    b = create_engine(ModelSpec.of(tiny(2), (3, 16, 16)), engine="openvino", device="cpu")
    assert a.name == b.name == "openvino"
    del a; gc.collect(); del b; gc.collect()
else:  # the user's own cores, torn down in creation order: the thread's altstack is left unmapped
    from tlkit.engines.openvino_engine import import_openvino
    import numpy as np, openvino.opset13 as ops
    ov = import_openvino()
    def model():
        p = ops.parameter([1, 4], np.float32)
        return ov.Model([ops.relu(p)], [p])
    a = ov.Core(); ca = a.compile_model(model(), "CPU")
    b = ov.Core(); cb = b.compile_model(model(), "CPU")
    del a, ca; gc.collect(); del b, cb; gc.collect()
    print("repaired", ensure_signal_stack())
class Items(torch.utils.data.Dataset):
    def __len__(self): return 32
    def __getitem__(self, i): return torch.zeros(3)
for _ in range(3):  # worker processes exit: SIGCHLD, handled by torch's Python-level handler (SA_ONSTACK)
    for _batch in torch.utils.data.DataLoader(Items(), batch_size=8, num_workers=2): pass
subprocess.run(["true"])
signal.raise_signal(signal.SIGCHLD)
print("ok")
"""


@pytest.mark.parametrize("mode", ["tlkit", "foreign-cores"])
def test_signals_after_openvino_do_not_kill_the_process(tmp_path, mode):
    """The old full-suite segfault (rc 139): OpenVINO CPU plugins torn down in creation order left the
    thread's alternate signal stack unmapped, and the next SIGCHLD (a DataLoader worker exiting) killed
    the process. tlkit keeps one Core per process, and repairs a stack left dangling by other cores."""
    env = {**os.environ, "TLKIT_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, mode], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert res.stdout.split()[-1] == "ok"


@pytest.mark.slow
def test_extract_records_the_engine_and_does_not_reuse_across_engines(tmp_path, photos_dir, caplog):
    out = tmp_path / "o"
    ov_res = extract_features(photos_dir, out, image_size=64, workers=0)
    assert ov_res.meta["engine"] == "openvino" and ov_res.embedded == 20
    with caplog.at_level(logging.INFO, logger="tlkit.features.extract"):
        tv_res = extract_features(photos_dir, out, image_size=64, workers=0, engine="torch")
    assert tv_res.meta["engine"] == "torch" and tv_res.embedded == 20 and tv_res.reused == 0
    assert "made with engine openvino; re-embedding with torch" in caplog.text
    again = extract_features(photos_dir, out, image_size=64, workers=0, engine="torch")
    assert again.embedded == 0 and again.resumed_from == 20


@pytest.mark.slow
def test_resume_after_sigkill_with_openvino_gives_the_same_features(tmp_path):
    from tlkit.demo import make_digits_folder

    images = make_digits_folder(tmp_path / "imgs", per_class=30)
    out = tmp_path / "o"
    env = {**os.environ, "TLKIT_OFFLINE": "1", "TLKIT_COMMIT_EVERY_S": "0"}
    cmd = [sys.executable, "-m", "tlkit", "extract", str(images), "--out", str(out), "--image-size", "64",
           "--batch-size", "2", "--engine", "openvino"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None and done < 40:
        try:
            done = json.loads((out / "progress.json").read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = 0
        time.sleep(0.01)
    assert proc.poll() is None, "extract finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = extract_features(images, out, image_size=64, batch_size=2, engine="openvino")
    assert res.resumed_from >= 40 and res.count == 300 and res.meta["engine"] == "openvino"
    assert extract_features(images, tmp_path / "ref", image_size=64, batch_size=2, engine="openvino").embedded == 300
    np.testing.assert_allclose(np.load(out / "features.npy"), np.load(tmp_path / "ref" / "features.npy"),
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory, photos_dir):
    """A tiny classifier fine-tuned on the photo crops (4 classes: chelsea, coffee, rocket, coins)."""
    from tlkit.train import fit, make_config

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=64, batch_size=8, workers=0,
                      precision="fp32", epochs=2)
    fit(cfg, data=photos_dir, out=out)
    return out


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=pytest.mark.slow)])
def test_export_round_trip_matches_pytorch_on_real_images(tmp_path, photo_run, photos_dir, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from tlkit.data import ImageDataset, build_transform, collate_skipping, scan_images
    from tlkit.train.export import export_model, run_exported
    from tlkit.train.model import load_run

    res = export_model(photo_run, format=fmt, out=tmp_path / fmt)
    meta = json.loads((tmp_path / fmt / "preprocess.json").read_text())
    model, classes, data_config = load_run(photo_run)
    assert res.kind == "logits" and meta["classes"] == classes and res.parity_cosine >= 0.9999
    assert meta["input"]["shape"] == [-1, 3, 64, 64] and meta["preprocess"]["mean"] == list(data_config["mean"])
    records = scan_images(photos_dir).records
    x = collate_skipping([ImageDataset(records, build_transform(data_config))[i] for i in range(len(records))]).images
    with torch.inference_mode():
        ref = model(x).numpy()
    got = run_exported(tmp_path / fmt, x.numpy())
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


def test_predict_with_openvino_agrees_with_torch(tmp_path, photo_run, photos_dir):
    from tlkit.core.io import read_csv
    from tlkit.train import predict

    a = predict(photo_run, photos_dir, out=tmp_path / "ov.csv", engine="openvino")
    b = predict(photo_run, photos_dir, out=tmp_path / "pt.csv", engine="torch", precision="fp32")
    la = [r["label"] for r in read_csv(tmp_path / "ov.csv")]
    lb = [r["label"] for r in read_csv(tmp_path / "pt.csv")]
    assert a.count == b.count == 20 and la == lb
