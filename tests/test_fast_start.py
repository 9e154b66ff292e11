"""Extract's warm start (tlkit.features.warm): a cached OpenVINO model used without torch or timm.

The NumPy preprocessing is bit-for-bit timm's; a warm run writes the same features.npy, index.csv and
meta.json keys as the normal path and imports neither torch nor timm; a stale index record (weights
file touched or changed, another image size, versions) sends the run down the normal path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tlkit.data.config import DataConfig
from tlkit.data.numpy_transform import numpy_eval_transform
from tlkit.features.extract import ExtractOptions, extract_features
from tlkit.features.warm import find_warm_start, warm_request

pytest.importorskip("openvino")

HEAVY = ("torch", "timm", "torchvision")
TIMING = ("elapsed_s", "embed_s", "files")  # meta.json keys that differ between any two runs


def _real_images():
    """Real photos (scikit-image) and a handwritten digit (scikit-learn), several sizes and aspect ratios."""
    import skimage.data
    from sklearn.datasets import load_digits

    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("chelsea", "coffee", "astronaut")]
    digit = Image.fromarray((load_digits().images[3] * 16).astype(np.uint8)).convert("RGB")
    return [*photos, digit, photos[0].crop((0, 0, 300, 90)), photos[1].crop((10, 0, 47, 200))]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"])
def test_numpy_preprocessing_is_bit_for_bit_timms(interpolation):
    from tlkit.data import build_transform

    images = _real_images()
    for size in (16, 64, 97, 224):
        for crop_pct in (0.875, 0.95, 1.0, 1.15):  # 1.15: the crop is larger than the resized image (padding)
            cfg = DataConfig((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation, crop_pct,
                             "center").at_size(size)
            timm_tf, np_tf = build_transform(cfg), numpy_eval_transform(cfg)
            for img in images:
                want, got = timm_tf(img).numpy(), np_tf(img)
                assert got.dtype == np.float32 and got.shape == want.shape
                assert np.array_equal(got, want), (interpolation, size, crop_pct, img.size)


def test_configs_the_numpy_preprocessing_does_not_cover_get_none():
    cfg = DataConfig((3, 64, 64), (0.5,) * 3, (0.5,) * 3, "bilinear", 0.9, "center")
    assert numpy_eval_transform(cfg) is not None
    assert numpy_eval_transform(DataConfig((3, 64, 64), (0.5,) * 3, (0.5,) * 3, "bilinear", 0.9, "squash")) is None
    assert numpy_eval_transform(DataConfig((3, 64, 80), (0.5,) * 3, (0.5,) * 3)) is None
    assert numpy_eval_transform(DataConfig((3, 64, 64), (0.5,) * 3, (0.5,) * 3, "random")) is None


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos as JPEG/PNG at several sizes, a digit, and one broken file (skipped.csv on both paths)."""
    folder = tmp_path_factory.mktemp("warm-images")
    for i, img in enumerate(_real_images()):
        img.save(folder / f"img{i}.{'jpg' if i % 2 else 'png'}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


@pytest.fixture()
def weights(tmp_path):
    """A private copy of the bundled efficientnet_lite0 weights (its size and mtime are ours to change)."""
    from tlkit.models.backbones import PACKAGED_WEIGHTS

    dst = tmp_path / "lite0.pth"
    shutil.copyfile(PACKAGED_WEIGHTS["efficientnet_lite0"].path(), dst)
    return dst


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _opts(image_size=64):
    return ExtractOptions(image_size=image_size, device="cpu")


def _same_folders(a, b):
    for name in ("features.npy", "index.csv", "skipped.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}


_WARM_RUN = """
import sys
from tlkit.cli import app
app(sys.argv[1:], standalone_mode=False)
print("HEAVY", *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""


def _cli(*args, env):
    code = _WARM_RUN.format(heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code, "extract", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_warm_run_is_identical_and_imports_neither_torch_nor_timm(tmp_path, images, weights, cache):
    env = {"TLKIT_CACHE_DIR": str(cache)}
    common = [str(images), "--weights", str(weights), "--image-size", "64", "--device", "cpu", "-v"]
    cold = _cli(*common, "-o", str(tmp_path / "cold"), env=env)
    assert cold.returncode == 0, cold.stderr
    assert "torch" in cold.stderr.split("HEAVY")[-1]  # the normal path: creates the model, records the index
    warm = _cli(*common, "-o", str(tmp_path / "warm"), env=env)
    assert warm.returncode == 0, warm.stderr
    loaded = warm.stderr.split("HEAVY")[-1].split()
    assert loaded == [], f"the warm start imported {loaded}"
    assert "warm start" in warm.stderr
    _same_folders(tmp_path / "cold", tmp_path / "warm")


def test_import_of_the_cli_and_extract_loads_neither_torch_nor_timm():
    code = ("import sys, tlkit.cli, tlkit.features.extract, tlkit.data, tlkit.engines.openvino_engine;"
            f"print(*[m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


@pytest.mark.slow
def test_either_path_finishes_or_reuses_the_others_folder(tmp_path, images, weights, cache, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="tlkit")
    extract_features(images, tmp_path / "cold", weights=weights, image_size=64, device="cpu")
    assert find_warm_start(warm_request("efficientnet_lite0", weights, True, _opts())) is not None
    caplog.clear()
    res = extract_features(images, tmp_path / "warm", weights=weights, image_size=64, device="cpu")
    assert "warm start" in caplog.text and res.count == 6 and res.skipped == 1 and res.embedded == 7
    _same_folders(tmp_path / "cold", tmp_path / "warm")
    monkeypatch.setenv("TLKIT_WARM_START", "0")  # the normal path over the warm path's folder: nothing to do
    again = extract_features(images, tmp_path / "warm", weights=weights, image_size=64, device="cpu")
    assert again.embedded == 0 and again.reused == 6
    monkeypatch.delenv("TLKIT_WARM_START")
    (tmp_path / "cold" / "features.npy").unlink()  # the normal path's folder, damaged: the warm path redoes it
    redo = extract_features(images, tmp_path / "cold", weights=weights, image_size=64, device="cpu")
    assert redo.count == 6
    _same_folders(tmp_path / "cold", tmp_path / "warm")


@pytest.mark.slow
def test_stale_records_take_the_normal_path(tmp_path, images, weights, cache, caplog):
    extract_features(images, tmp_path / "a", weights=weights, image_size=64, device="cpu")
    request = warm_request("efficientnet_lite0", weights, True, _opts())
    entry = find_warm_start(request).engine.entry
    caplog.set_level(logging.DEBUG, logger="tlkit.features.warm")
    entry.rename(entry.with_name("moved"))  # the compiled model is gone
    assert find_warm_start(request) is None and "is gone" in caplog.text
    entry.with_name("moved").rename(entry)
    assert find_warm_start(request) is not None
    assert find_warm_start(warm_request("efficientnet_lite0", weights, True, _opts(image_size=96))) is None
    assert "no warm-start record" in caplog.text
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    caplog.clear()
    assert find_warm_start(request) is None and "changed (size or mtime)" in caplog.text
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size and mtime, other content
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    caplog.clear()
    assert find_warm_start(request) is None and "changed (sha256)" in caplog.text
    weights.unlink()
    caplog.clear()
    assert find_warm_start(request) is None and "is gone" in caplog.text


def test_runs_the_warm_start_does_not_cover_get_no_request(weights, monkeypatch):
    assert warm_request("efficientnet_lite0", weights, True, _opts()) is not None
    assert warm_request("efficientnet_lite0", None, False, _opts()) is None  # random init
    assert warm_request("efficientnet_lite0", weights, True, ExtractOptions(engine="torch", device="cpu")) is None
    assert warm_request("efficientnet_lite0", weights, True, ExtractOptions(device="cuda")) is None
    assert warm_request("efficientnet_lite0", weights, True, ExtractOptions(precision="fp16", device="cpu")) is None
    monkeypatch.setenv("TLKIT_WARM_START", "0")
    assert warm_request("efficientnet_lite0", weights, True, _opts()) is None
