"""GPU JPEG decoding (#29): its CPU twin (``decode_jpeg`` on the CPU + the same tensor steps) against today's
PIL path on real JPEGs; every file it does not take goes through the PIL path unchanged."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.core.errors import TlkitError
from tlkit.data import scan_images
from tlkit.data.config import DataConfig
from tlkit.data.device_decode import EncodedJpeg, device_jpeg, eval_loader, resolve_decode

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIGS = {
    "lite0-224-bicubic": DataConfig((3, 224, 224), MEAN, STD, "bicubic", 0.875, "center"),
    "160-bilinear-crop1": DataConfig((3, 160, 160), MEAN, STD, "bilinear", 1.0, "center"),
    "96-bicubic": DataConfig((3, 96, 96), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9, "center"),
}
#: pixel values (0-255) of the twin vs PIL: libjpeg-turbo both, so 2 apart at most (the resizes round differently);
#: where PIL decodes at a reduced scale (draft), libjpeg's scaled IDCT vs an f x f block average: a few
#: pixels at sharp edges up to 27 apart here, the mean difference at most 0.62 (measured on these files)
TOL_MAX, TOL_MAX_DRAFT, TOL_MEAN = 2.0, 32.0, 1.0


def _jpeg(path, img: Image.Image, **kw):
    img.save(path, "JPEG", **kw)
    return path


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, photos_dir):
    """Real photo JPEGs: the demo's crops (96 px), skimage photos at several qualities and sizes, an
    EXIF-rotated one, grayscale, CMYK, a PNG and a truncated JPEG."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("jpegs")
    for f in sorted(photos_dir.rglob("*.jpg"))[::3]:
        (root / f"crop_{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        for quality, scale in ((60, 1.0), (90, 1.0), (95, 0.4), (85, 2.5)):
            size = (max(16, int(photo.width * scale)), max(16, int(photo.height * scale)))
            _jpeg(root / f"{name}_q{quality}_x{scale}.jpg", photo.resize(size, Image.BICUBIC), quality=quality)
    chelsea = Image.fromarray(skdata.chelsea())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _jpeg(root / "rotated.jpg", chelsea, quality=90, exif=exif.tobytes())
    _jpeg(root / "gray.jpg", chelsea.convert("L"), quality=90)
    _jpeg(root / "cmyk.jpg", chelsea.convert("CMYK"), quality=90)
    chelsea.save(root / "lossless.png")
    buf = io.BytesIO()
    chelsea.save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return scan_images(root, labeled=False).records


def _run(records, cfg, decode):
    loader, path = eval_loader(records, cfg, batch_size=8, workers=0, device="cpu", decode=decode)
    images, indices, failures = [], [], []
    for b in loader:
        if b.images is not None:
            images.append(b.images)
        indices += b.indices.tolist()
        failures += b.failures
    return torch.cat(images), indices, failures, path, loader


def _pixels(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    return (x * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)) * 255


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_twin_gives_the_cpu_paths_tensors_on_real_jpegs(jpegs, name):
    cfg = CONFIGS[name]
    ref, ref_idx, ref_fail, ref_path, _ = _run(jpegs, cfg, "cpu")
    twin, idx, fail, path, loader = _run(jpegs, cfg, "device")
    assert (ref_path, path) == ("cpu", "device")
    assert idx == ref_idx and fail == ref_fail and [jpegs[i].rel for i, _ in fail] == ["truncated.jpg"]
    assert twin.dtype == ref.dtype == torch.float32 and twin.shape == ref.shape
    hint = cfg.size_hint()
    on_device = 0
    for row, i in enumerate(idx):
        rel, enc = jpegs[i].rel, device_jpeg(jpegs[i].path, hint)
        diff = (_pixels(twin[row:row + 1], cfg) - _pixels(ref[row:row + 1], cfg)).abs()
        if enc is None:  # the CPU path, bit for bit
            assert rel.startswith(("rotated", "gray", "cmyk", "lossless")), rel
            assert torch.equal(twin[row], ref[row]), rel
            continue
        on_device += 1
        with Image.open(jpegs[i].path) as im:
            drafted = enc.size != im.size
        assert float(diff.max()) <= (TOL_MAX_DRAFT if drafted else TOL_MAX) + 1e-3, (rel, float(diff.max()))
        assert float(diff.mean()) <= TOL_MEAN, (rel, float(diff.mean()))
    assert on_device == len(idx) - 4
    assert loader.decoder.fallbacks == 0


def test_files_the_device_does_not_take_go_to_the_cpu_path(jpegs):
    by_name = {r.rel: r for r in jpegs}
    for rel in ("rotated.jpg", "gray.jpg", "cmyk.jpg", "lossless.png", "truncated.jpg"):
        assert device_jpeg(by_name[rel].path, 256) is None, rel
    enc = device_jpeg(by_name["chelsea_q85_x2.5.jpg"].path, 256)
    assert isinstance(enc, EncodedJpeg) and enc.data.dtype == torch.uint8
    with Image.open(by_name["chelsea_q85_x2.5.jpg"].path) as im:
        assert enc.size == ((im.width + 1) // 2, (im.height + 1) // 2)  # PIL's draft: 1/2 scale


def test_a_jpeg_the_device_fails_to_decode_falls_back_to_the_cpu_path(jpegs, monkeypatch):
    from tlkit.data import device_decode

    cfg = CONFIGS["96-bicubic"]
    real = device_decode._decode_jpegs

    def flaky(data, device):
        if any(len(d) == len(bad) for d in data):
            raise RuntimeError("nvjpeg: bitstream not supported")
        return real(data, device)

    bad = device_jpeg(jpegs[0].path, cfg.size_hint()).data
    monkeypatch.setattr(device_decode, "_decode_jpegs", flaky)
    ref, ref_idx, _, _, _ = _run(jpegs, cfg, "cpu")
    twin, idx, _, _, loader = _run(jpegs, cfg, "device")
    assert idx == ref_idx and loader.decoder.fallbacks == 1
    assert torch.equal(twin[0], ref[0])  # decoded by PIL
    assert float((twin[1:] - ref[1:]).abs().max()) < 0.1


def test_resolve_decode():
    assert resolve_decode("auto", "cpu") == "cpu" and resolve_decode("device", "cpu") == "device"
    assert resolve_decode("auto", torch.device("cuda", 0)) == "device"
    with pytest.raises(TlkitError, match="unknown --decode 'gpu'; choose one of: auto, cpu, device"):
        resolve_decode("gpu", "cpu")


def test_configs_the_device_path_does_not_cover_use_the_cpu_path(jpegs):
    lanczos = DataConfig((3, 64, 64), MEAN, STD, "lanczos", 0.875, "center")
    _, _, _, path, _ = _run(jpegs[:3], lanczos, "device")
    assert path == "cpu"
    assert np.isfinite(_run(jpegs[:3], lanczos, "device")[0].numpy()).all()


@pytest.mark.slow
def test_extract_and_finetune_say_which_decoding_path_ran(photos_dir, tmp_path):
    import json

    import yaml

    from tests.conftest import run_cli

    for decode, key_differs in (("cpu", False), ("device", True)):
        out = tmp_path / decode
        res = run_cli("extract", str(photos_dir), "--out", str(out), "--image-size", "64", "--engine", "torch",
                      "--decode", decode)
        assert res.returncode == 0, res.stderr
        meta = json.loads((out / "meta.json").read_text())
        assert meta["decode"] == decode and meta["count"] == 20
    cpu, dev = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("cpu", "device"))
    assert cpu["settings_key"] != dev["settings_key"]  # device rows are never reused as PIL rows
    feats = [np.load(tmp_path / d / "features.npy") for d in ("cpu", "device")]
    cos = (feats[0] * feats[1]).sum(1) / np.linalg.norm(feats[0], axis=1) / np.linalg.norm(feats[1], axis=1)
    assert cos.min() > 0.99
    res = run_cli("finetune", "--data", str(photos_dir), "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
                  "--no-pretrained", "--image-size", "32", "--epochs", "1", "--decode", "device", "--no-tensorboard")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["decode"] == "device" and cfg["chosen"]["decode"] == {"train": "device", "val": "device"}
    res = run_cli("extract", str(photos_dir), "--out", str(tmp_path / "x"), "--decode", "gpu")
    assert res.returncode == 2 and "unknown --decode 'gpu'; choose one of: auto, cpu, device" in res.stdout + res.stderr


# --------------------------------------------------------------------------- training images (device_augment)


#: tlkit's training augmentation keyword arguments (tlkit.train.loaders.image_loaders) with photo flips on
AUG = {"scale": (0.7, 1.0), "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.0, "auto_augment": None, "re_prob": 0.0}
#: mean pixel difference (0-255) of the device resize of a whole JPEG against PIL's resize (0.005 measured)
TRAIN_TOL_MEAN = 0.05
TRAIN_CFG = DataConfig((3, 64, 64), MEAN, STD, "bicubic", 0.875, "center")


def _train_batches(records, aug=AUG, decode="device", seed=0, torch_seed=0):
    from tlkit.data import build_transform
    from tlkit.data.device_augment import train_loader

    tf = build_transform(TRAIN_CFG, training=True, **aug)
    loader, path = train_loader(records, TRAIN_CFG, aug, tf, batch_size=8, workers=0, device="cpu",
                                sampler=list(range(len(records))), drop_last=False, decode=decode, seed=seed)
    from tlkit.core.runtime import seed_everything

    seed_everything(torch_seed)  # as the training loop does before each epoch
    return list(loader), path, loader


def test_train_twin_gives_normalised_batches_of_the_right_shape(jpegs):
    from tlkit.data.device_decode import decode_path_of

    batches, path, loader = _train_batches(jpegs)
    assert path == "device" and decode_path_of(loader) == "device"
    images = torch.cat([b.images for b in batches if b.images is not None])
    failures = [f for b in batches for f in b.failures]
    assert [jpegs[i].rel for i, _ in failures] == ["truncated.jpg"]
    assert images.dtype == torch.float32 and images.shape == (len(jpegs) - 1, 3, 64, 64)
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = images.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
    # every value is an (uint8 / 255 - mean) / std: the normalisation of uint8 pixels
    pixels = images * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    assert float((pixels - pixels.round()).abs().max()) < 1e-3


def test_train_twin_crop_of_the_whole_image_matches_pils_resize(jpegs):
    """No crop, no flip: the device resize (antialiased, the config's filter) against PIL's, on real JPEGs."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from tlkit.data.device_augment import DeviceTrainTransform, TrainAugment

    augment, _ = TrainAugment.of(TRAIN_CFG, AUG)
    tf = DeviceTrainTransform(augment)
    checked = 0
    for r in jpegs:
        enc = device_jpeg(r.path, None)
        if enc is None:
            continue
        x = decode_jpeg(enc.data, mode=ImageReadMode.RGB)
        ours = tf.apply(x, (0, 0, x.shape[1], x.shape[2]), False, False).float()
        with Image.open(r.path) as im:
            pil = torch.from_numpy(np.array(im.convert("RGB").resize((64, 64), Image.BICUBIC))).permute(2, 0, 1)
        diff = (ours - pil.float()).abs()
        # the same libjpeg-turbo decode; the antialiased tensor resize against PIL's: 1 apart at most, mean
        # under 0.005 measured on these files
        assert float(diff.max()) <= TOL_MAX and float(diff.mean()) <= TRAIN_TOL_MEAN, (r.rel, float(diff.max()))
        assert torch.equal(tf.apply(x, (0, 0, x.shape[1], x.shape[2]), True, False), tf.apply(x, (0, 0, x.shape[1], x.shape[2]), False, False).flip(-1))
        checked += 1
    assert checked >= 10


def test_train_twin_draws_crops_as_timm_does():
    """The crop sampler is timm's RandomResizedCropAndInterpolation.get_params, draw for draw, and its crops
    stay within the scale and ratio bounds (up to the rounding to whole pixels)."""
    import random

    from timm.data.transforms import RandomResizedCropAndInterpolation

    from tlkit.data.device_augment import TRAIN_RATIO, crop_params

    for (w, h), scale, random_crops in (((96, 96), (0.7, 1.0), 250), ((640, 427), (0.08, 1.0), 250),
                                        ((300, 90), (0.5, 1.0), 0)):  # too wide for any 4:3 crop of half its area
        img = Image.new("RGB", (w, h))
        random.seed(7)
        rng = random.Random(7)
        checked = 0
        for _ in range(300):
            ref = RandomResizedCropAndInterpolation.get_params(img, scale, TRAIN_RATIO)
            top, left, ch, cw = crop_params(w, h, scale, TRAIN_RATIO, rng)
            assert (top, left, ch, cw) == ref
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
            central = (top, left) == ((h - ch) // 2, (w - cw) // 2) and (ch == h or cw == w)
            if not central:  # timm's fallback after 10 misses is the central crop, outside the bounds
                slack = (1 + 0.5 / cw) * (1 + 0.5 / ch)
                assert scale[0] / slack <= ch * cw / (w * h) <= 1.0, (w, h, ch, cw)
                assert TRAIN_RATIO[0] / slack <= cw / ch <= TRAIN_RATIO[1] * slack, (w, h, ch, cw)
                checked += 1
        assert checked >= random_crops, (w, h, checked)


def test_train_twin_flips_with_the_configured_probability():
    from tlkit.data.device_augment import DeviceTrainTransform, TrainAugment

    for hflip in (0.0, 0.5, 0.9):
        augment, _ = TrainAugment.of(TRAIN_CFG, {**AUG, "hflip": hflip})
        tf = DeviceTrainTransform(augment, seed=3)
        draws = [tf.draw(120, 90) for _ in range(4000)]
        rate = np.mean([h for _, h, _ in draws])
        assert abs(rate - hflip) < 0.03, (hflip, rate)
        assert not any(v for _, _, v in draws)  # vflip 0: never


def test_train_twin_is_deterministic_under_a_seed(jpegs):
    first = torch.cat([b.images for b in _train_batches(jpegs, torch_seed=5)[0] if b.images is not None])
    again = torch.cat([b.images for b in _train_batches(jpegs, torch_seed=5)[0] if b.images is not None])
    other = torch.cat([b.images for b in _train_batches(jpegs, torch_seed=6)[0] if b.images is not None])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_train_augmentations_the_device_lacks_use_the_cpu_path(jpegs, caplog):
    import logging

    from tlkit.data.device_augment import train_decode_path

    with caplog.at_level(logging.INFO, logger="tlkit.data.device_augment"):
        _, path, _ = _train_batches(jpegs[:4], aug={**AUG, "color_jitter": 0.4, "auto_augment": "rand-m9-mstd0.5"})
    assert path == "cpu"
    assert [r.getMessage() for r in caplog.records] == [
        "training images decoded on the CPU: the device path does not cover color_jitter, auto_augment"]
    pngs = [r for r in jpegs if r.rel.endswith(".png")]
    jpegs = list(jpegs)
    assert train_decode_path("auto", "cpu", jpegs) == "cpu"
    assert train_decode_path("auto", torch.device("cuda", 0), jpegs) == "device"
    assert train_decode_path("auto", torch.device("cuda", 0), pngs * 3 + jpegs[:1]) == "cpu"
    assert train_decode_path("device", "cpu", pngs) == "device"


@pytest.mark.slow
def test_finetune_with_the_train_twin_learns(photos_dir, tmp_path):
    """A finetune run whose training images take the device path's twin on the CPU trains (the loss falls)
    and says so in config.yaml; the CPU path's run is unaffected by the option's existence."""
    import yaml

    from tlkit.train import fit, make_config

    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=8, workers=0,
                      precision="fp32", device="cpu", epochs=6, lr=3e-3, hflip=0.5, decode="device",
                      tensorboard=False)
    res = fit(cfg, data=photos_dir, out=tmp_path / "run")
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < losses[0], losses
    chosen = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["chosen"]
    assert chosen["decode"] == {"train": "device", "val": "device"}
