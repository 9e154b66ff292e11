"""tlkit.data: discovery, decoding of odd files, loaders that skip bad files, transforms.

Every image is a real file written with PIL into ``tmp_path``; photos come from scikit-image
(``chelsea``) and scikit-learn (``load_digits``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.core.errors import TlkitError
from tlkit.data import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageDecodeError,
    ImageRecord,
    build_transform,
    collate_skipping,
    load_image,
    make_loader,
    scan_images,
    size_hint_for,
    summarize_failures,
    write_skipped,
)
import tlkit.data.decode as decode


# ------------------------------------------------------------------------------------ helpers


def _put(path: Path, img: Image.Image | None = None, data: bytes | None = None, **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    else:
        (img if img is not None else Image.new("RGB", (8, 6), (10, 20, 30))).save(path, **save_kw)
    return path


@pytest.fixture(scope="module")
def data_chelsea() -> Image.Image:
    from skimage.data import chelsea

    return Image.fromarray(chelsea())  # 451 x 300 RGB photo


@pytest.fixture(scope="module")
def data_digits() -> list[Image.Image]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return [Image.fromarray((d.images[i] * 15).astype(np.uint8), "L").resize((16, 16))
            for i in range(6)]


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _reason(path: Path, **kw) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, **kw)
    return info.value.reason


# ---------------------------------------------------------------------------------- discovery


def test_class_tree_discovery(tmp_path, data_digits):
    root = tmp_path / "train"
    _put(root / "dog" / "b.JPG", data_digits[0])
    _put(root / "cat" / "sub" / "deep" / "z.Png", data_digits[1])
    _put(root / "cat" / "a.jpeg", data_digits[2])
    _put(root / "cat" / "notes.txt", data=b"not an image")
    _put(root / "cat" / ".hidden.png", data_digits[3])
    _put(root / ".git" / "x.png", data_digits[3])
    _put(root / "__MACOSX" / "cat" / "._a.jpeg", data=b"\0")
    _put(root / "bird" / "readme.md", data=b"# nothing")
    (root / "fish").mkdir()

    src = scan_images(root)

    assert src.kind == "folders" and src.root == root.resolve()
    assert [r.rel for r in src.records] == ["cat/a.jpeg", "cat/sub/deep/z.Png", "dog/b.JPG"]
    assert [r.label for r in src.records] == ["cat", "cat", "dog"]
    assert all(r.path.is_absolute() and r.path == src.root / r.rel for r in src.records)
    assert src.classes == ("bird", "cat", "dog", "fish")
    assert src.empty_classes == ("bird", "fish")
    assert src.class_to_idx == {"bird": 0, "cat": 1, "dog": 2, "fish": 3}
    assert scan_images(str(root), labeled=True) == src  # deterministic
    flat = scan_images(root, labeled=False)
    assert flat.kind == "flat" and flat.classes == () and {r.label for r in flat.records} == {None}


def test_every_extension_any_case_and_nested_flat_pool(tmp_path):
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        name = f"d{i % 2}/img{i}{ext.upper() if i % 2 else ext}"
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext)
        _put(tmp_path / "pool" / name, format=fmt)
    _put(tmp_path / "pool" / "root.png")
    _put(tmp_path / "pool" / "d0" / "thumbs.db", data=b"x")

    src = scan_images(tmp_path / "pool")

    assert src.kind == "flat"  # an image at the root: unlabeled pool, not a class tree
    assert len(src.records) == len(IMAGE_EXTENSIONS) + 1
    assert [r.rel for r in src.records] == sorted(r.rel for r in src.records)
    assert all(r.label is None for r in src.records)


def test_root_images_in_class_tree(tmp_path, caplog):
    _put(tmp_path / "cat" / "a.png")
    _put(tmp_path / "stray.png")
    with caplog.at_level(logging.WARNING, logger="tlkit.data"):
        src = scan_images(tmp_path)
    assert src.kind == "flat" and src.classes == ()
    assert "unlabeled pool" in caplog.text
    with pytest.raises(TlkitError, match=r"1 images sit directly.*'stray.png'"):
        scan_images(tmp_path, labeled=True)


@pytest.mark.parametrize("setup, match", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), _put(p / "a.txt", data=b"x"), p)[-1], "no images found"),
    (lambda p: _put(p.with_suffix(".png")), "is a file, not a folder"),
])
def test_bad_sources(tmp_path, setup, match):
    with pytest.raises(TlkitError, match=match):
        scan_images(setup(tmp_path / "src"))


# ---------------------------------------------------------------------------------- manifests


def _manifest(folder: Path, rows: list[list[str]], header=("path", "label")) -> Path:
    path = folder / "list.csv"
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(header), *rows])
    return path


def test_manifest(tmp_path):
    root = tmp_path / "ds"
    for name in ("b.png", "imgs/a.png", "imgs/c.png"):
        _put(root / name)
    csv_path = _manifest(root, [["imgs/c.png", "dog"], ["./b.png", "cat"],
                                [str(root / "imgs" / "a.png"), ""], ["", ""]])

    src = scan_images(csv_path)

    assert src.kind == "manifest" and src.root == root.resolve()
    assert [(r.rel, r.label) for r in src.records] == [
        ("imgs/c.png", "dog"), ("b.png", "cat"), ("imgs/a.png", None)]  # row order kept
    assert src.classes == ("cat", "dog") and src.empty_classes == ()
    assert all(r.path.is_file() for r in src.records)
    assert {r.label for r in scan_images(csv_path, labeled=False).records} == {None}
    with pytest.raises(TlkitError, match=r"line 4: '.*a\.png' has no label"):
        scan_images(csv_path, labeled=True)


@pytest.mark.parametrize("path_cell, match", [
    ("../outside.png", r"line 3: path '\.\./outside\.png' is outside the manifest's folder"),
    ("sub/../../outside.png", r"line 3: .* is outside"),
    ("ABSOLUTE", r"line 3: .* is outside"),
    ("missing.png", r"line 3: path 'missing.png' does not exist"),
    ("sub", r"line 3: path 'sub' is not a file"),
    ("ok.png", r"line 3: 'ok.png' is already listed on line 2"),
])
def test_manifest_bad_rows(tmp_path, path_cell, match):
    outside = _put(tmp_path / "outside.png")
    root = tmp_path / "ds"
    _put(root / "ok.png")
    (root / "sub").mkdir()
    cell = str(outside) if path_cell == "ABSOLUTE" else path_cell
    with pytest.raises(TlkitError, match=match):
        scan_images(_manifest(root, [["ok.png", "a"], [cell, "b"]]))


def test_manifest_header_problems(tmp_path):
    _put(tmp_path / "a.png")
    with pytest.raises(TlkitError, match=r"no 'path' column \(found columns: 'file', 'class'\)"):
        scan_images(_manifest(tmp_path, [["a.png", "x"]], header=("file", "class")))
    with pytest.raises(TlkitError, match="lists no images"):
        scan_images(_manifest(tmp_path, []))
    with pytest.raises(TlkitError, match="no 'label' column"):
        scan_images(_manifest(tmp_path, [["a.png"]], header=("Path",)), labeled=True)


# ----------------------------------------------------------------------------------- decoding


def _odd_modes():
    """name -> (image to save, save kwargs, suffix, expected RGB at (0, 0), expected at (1, 0))."""
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (60, 255)])
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(0, 0, 0, 0), (200, 0, 0, 255)])
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1])
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 255, 255, 0), (0, 0, 0, 255)])
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 255])
    return {
        "L": (Image.new("L", (2, 1), 100), {}, ".png", (100,) * 3, (100,) * 3),
        "LA": (la, {}, ".png", (255,) * 3, (60,) * 3),
        "P": (pal, {}, ".png", (0, 0, 0), (0, 0, 255)),
        "P+transparency": (pal, {"transparency": 0}, ".png", (255,) * 3, (0, 0, 255)),
        "P+transparency gif": (pal, {"transparency": 0}, ".gif", (255,) * 3, (0, 0, 255)),
        "RGBA": (rgba, {}, ".png", (255,) * 3, (200, 0, 0)),
        "RGBA webp": (rgba, {"lossless": True}, ".webp", (255,) * 3, (200, 0, 0)),
        "CMYK": (cmyk, {}, ".tiff", (255, 0, 0), (0, 0, 0)),
        "1": (bilevel, {}, ".bmp", (0, 0, 0), (255,) * 3),
        "I;16": (Image.fromarray(np.array([[32768, 65535]], np.uint16)), {}, ".png",
                 (128,) * 3, (255,) * 3),
        "I": (Image.fromarray(np.array([[1000, 40000]], np.int32)), {}, ".tif", (4,) * 3,
              (156,) * 3),
        "F": (Image.fromarray(np.array([[0.5, 1.0]], np.float32)), {}, ".tiff", (128,) * 3,
              (255,) * 3),
    }


@pytest.mark.parametrize("name", list(_odd_modes()))
def test_odd_modes_become_rgb(tmp_path, name):
    img, kw, suffix, first, second = _odd_modes()[name]
    out = load_image(_put(tmp_path / f"img{suffix}", img, **kw))
    assert out.mode == "RGB" and out.size == (2, 1)
    assert out.getpixel((0, 0)) == first and out.getpixel((1, 0)) == second


def test_16bit_mid_grey_is_mid_grey(tmp_path):
    values = np.tile(np.linspace(0, 65535, 65), (4, 1)).astype(np.uint16)  # 32768 at column 32
    out = np.asarray(load_image(_put(tmp_path / "deep.png", Image.fromarray(values))))
    assert abs(int(out[0, 32, 0]) - 128) <= 2 and out.max() == 255 and out.min() == 0
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # monotone, not clipped


def test_exif_orientation_applied(tmp_path, data_chelsea):
    img = data_chelsea.resize((40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _put(tmp_path / "rot.jpg", img, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = _put(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:],
                duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    assert load_image(path).getpixel((3, 3)) == (255, 0, 0)


def test_decompression_bombs_refused(tmp_path, monkeypatch):
    path = _put(tmp_path / "ok.png", Image.new("RGB", (20, 20)))
    assert load_image(path).size == (20, 20)
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 100)
    assert _reason(path) == "decompression bomb: 400 pixels > limit 100"
    monkeypatch.undo()
    # a real PNG header claiming 20000 x 20000: PIL's own hard limit, refused before decoding
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = _put(tmp_path / "bomb.png", data=bytes(data))
    assert _reason(bomb) == f"decompression bomb: 400000000 pixels > limit {2 * 89_478_485}"


def test_broken_files_have_reasons(tmp_path, data_chelsea):
    jpeg = _jpeg_bytes(data_chelsea)
    png = io.BytesIO()
    data_chelsea.save(png, "PNG")
    assert _reason(_put(tmp_path / "empty.jpg", data=b"")) == "empty file"
    assert _reason(_put(tmp_path / "cut.jpg", data=jpeg[: len(jpeg) // 2])) == "truncated"
    assert _reason(_put(tmp_path / "cut.png", data=png.getvalue()[:3000])) == "truncated"
    text = _put(tmp_path / "notes.jpg", data=b"hello, I am a text file\n" * 10)
    assert _reason(text) == "not an image (cannot identify image file)"
    assert _reason(tmp_path / "gone.png") == "file not found"
    err = pickle.loads(pickle.dumps(ImageDecodeError(text, "truncated")))
    assert err.reason == "truncated" and str(text) in str(err) and isinstance(err, TlkitError)


def test_draft_decodes_big_jpeg_smaller(tmp_path, data_chelsea):
    path = _put(tmp_path / "big.jpg", data_chelsea.resize((1600, 1064)), quality=90)
    full = load_image(path)
    small = load_image(path, size_hint=300)
    assert full.size == (1600, 1064)
    assert small.size == (800, 532)  # 1/2 scale: 1/4 would make the short side < 300
    assert min(load_image(path, size_hint=200).size) == 266  # 1/4 scale, still >= 200
    assert load_image(path, size_hint=2000).size == full.size  # never below the hint
    png = _put(tmp_path / "big.png", data_chelsea)
    assert load_image(png, size_hint=50).size == data_chelsea.size  # draft is JPEG-only


# ------------------------------------------------------------------------------------ loading


@pytest.fixture
def data_broken_tree(tmp_path, data_digits, data_chelsea) -> Path:
    root = tmp_path / "tree"
    for i, img in enumerate(data_digits):
        _put(root / ("even" if i % 2 == 0 else "odd") / f"{i}.png", img)
    _put(root / "even" / "x_empty.png", data=b"")
    _put(root / "odd" / "x_text.jpg", data=b"plain text")
    _put(root / "odd" / "x_cut.jpg", data=_jpeg_bytes(data_chelsea)[:2000])
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_skips_broken_files(data_broken_tree, tmp_path, workers):
    src = scan_images(data_broken_tree)
    tf = build_transform({"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    ds = ImageDataset(src.records, tf, src.class_to_idx)
    loader = make_loader(ds, batch_size=4, workers=workers, device="cpu")
    assert not loader.pin_memory and loader.persistent_workers == (workers > 0)

    batches = list(loader)

    images = torch.cat([b.images for b in batches if b.images is not None])
    indices = torch.cat([b.indices for b in batches]).tolist()
    failures = [f for b in batches for f in b.failures]
    assert images.shape == (6, 3, 16, 16)
    assert [src.records[i].rel for i in indices] == [f"{p}/{i}.png" for p, i in
                                                    [("even", 0), ("even", 2), ("even", 4),
                                                     ("odd", 1), ("odd", 3), ("odd", 5)]]
    assert torch.cat([b.targets for b in batches]).tolist() == [0, 0, 0, 1, 1, 1]
    by_rel = {src.records[i].rel: reason for i, reason in failures}
    assert by_rel == {"even/x_empty.png": "empty file", "odd/x_cut.jpg": "truncated",
                      "odd/x_text.jpg": "not an image (cannot identify image file)"}
    assert summarize_failures(failures + failures) == (
        "3 files skipped (1 empty file, 1 not an image (cannot identify image file), 1 truncated)")

    out = tmp_path / "report" / "skipped.csv"
    write_skipped(out, src.records, reversed(failures))
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["path", "reason"] and sorted(rows[1:]) == sorted(map(list, by_rel.items()))


def test_collate_all_failed_and_mixed():
    empty = collate_skipping([(None, 1, 0, "empty file"), (None, -1, 3, "truncated")])
    assert empty.images is None and empty.targets.shape == (0,) and empty.indices.dtype == torch.long
    assert empty.failures == [(0, "empty file"), (3, "truncated")]
    mixed = collate_skipping([(torch.ones(3, 2, 2), 2, 5, None), (None, 0, 6, "truncated")])
    assert mixed.images.shape == (1, 3, 2, 2) and mixed.targets.tolist() == [2]
    assert summarize_failures([]) == "no files skipped"
    assert summarize_failures([(1, "corrupt: OSError: x"), (2, "corrupt: y")]) == (
        "2 files skipped (2 corrupt)")


def test_dataset_targets_and_unknown_labels(tmp_path):
    recs = [ImageRecord(_put(tmp_path / f"{i}.png"), f"{i}.png", lab)
            for i, lab in enumerate(["a", None, "b"])]
    ds = ImageDataset(recs, None, {"a": 0, "b": 1})
    img, target, i, reason = ds[1]
    assert img.shape == (3, 6, 8) and 0 <= img.min() <= img.max() <= 1
    assert (target, i, reason) == (-1, 1, None) and ds.targets == [0, -1, 1]
    assert ImageDataset(recs, None).targets == [-1, -1, -1]
    with pytest.raises(TlkitError, match=r"'b' \(1 images\)"):
        ImageDataset(recs, None, {"a": 0})


def test_shuffle_is_seeded(tmp_path):
    recs = [ImageRecord(_put(tmp_path / f"{i}.png", Image.new("RGB", (2, 2))), f"{i}.png", None)
            for i in range(12)]
    ds = ImageDataset(recs, None)

    def order(seed):
        loader = make_loader(ds, batch_size=5, workers=0, device="cpu", shuffle=True, seed=seed)
        return [i for b in loader for i in b.indices.tolist()]

    assert order(3) == order(3) != list(range(12))
    assert sorted(order(4)) == list(range(12))
    with pytest.raises(ValueError):
        make_loader(ds, batch_size=2, workers=0, device="cpu", shuffle=True,
                    sampler=torch.utils.data.SequentialSampler(ds))


# --------------------------------------------------------------------------------- transforms


def test_build_transform_uses_config_mean_std_and_size():
    cfg = {"input_size": (3, 32, 32), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.25),
           "interpolation": "bilinear", "crop_pct": 0.8, "crop_mode": "center", "num_classes": 7}
    white = Image.new("RGB", (50, 40), (255, 255, 255))

    x = build_transform(cfg)(white)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([1.8, 1.6, 2.8]), atol=1e-4)
    assert build_transform(cfg, image_size=48)(white).shape == (3, 48, 48)
    train = build_transform(cfg, training=True, image_size=24, hflip=0.5, color_jitter=None)
    assert train(white).shape == (3, 24, 24)
    assert torch.allclose(train(white).mean(dim=(1, 2)), torch.tensor([1.8, 1.6, 2.8]), atol=1e-3)
    assert size_hint_for(cfg) == 40 and size_hint_for(cfg, image_size=48) == 60
    assert size_hint_for(cfg, training=True) is None
    with pytest.raises(TlkitError, match="lacks mean, std"):
        build_transform({"input_size": (3, 8, 8)})


# --------------------------------------------------------------------------------- data config


def test_data_config_reads_an_old_file_dict_and_round_trips():
    from tlkit.data import DataConfig

    # meta.json / checkpoint metadata written before DataConfig: lists for tuples, timm's keys
    old = {"input_size": [3, 64, 64], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225], "crop_pct": 0.875, "crop_mode": "center"}
    cfg = DataConfig.from_dict(old)
    assert cfg.input_size == (3, 64, 64) and cfg.mean == (0.485, 0.456, 0.406) and cfg.crop_pct == 0.875
    assert cfg.to_dict() == old and list(cfg.to_dict()) == list(old)
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DataConfig.from_dict(cfg) is cfg
    assert cfg["input_size"] == (3, 64, 64) and dict(cfg)["mean"] == (0.485, 0.456, 0.406)


def test_data_config_at_size_and_mapping_view():
    from tlkit.data import DataConfig

    cfg = DataConfig.from_dict({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "num_classes": 7})
    assert "crop_pct" not in cfg and cfg.get("crop_pct") is None and set(cfg) == {"input_size", "mean", "std"}
    assert cfg.at_size(None) is cfg and cfg.at_size(48).input_size == (3, 48, 48)
    assert cfg.at_size(48).mean == cfg.mean and cfg.input_size == (3, 32, 32)  # frozen: a new config
    assert cfg.at_size(48).size_hint() == 48 and cfg.size_hint(training=True) is None
    with pytest.raises(TlkitError, match="positive number of pixels"):
        cfg.at_size(0)
    with pytest.raises(TlkitError, match=r"input_size must be \(C, H, W\)"):
        DataConfig.from_dict({"input_size": [32, 32], "mean": [0.5], "std": [0.5]})
    x = build_transform(cfg)(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert x.shape == (3, 32, 32) and torch.allclose(x, torch.ones_like(x))
