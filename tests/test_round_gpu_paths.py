"""Active-learning rounds on a GPU host (#29), tested on the CPU: the pool scored from a cached uint8 pixel
store instead of decoding it each round, the embedding cache keyed by device + engine + precision, and a
finetune round that writes only what evaluate/predict need."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.data.config import DataConfig

#: the store path against today's path (same uint8 pixels, same float32 normalisation; the model in fp32 on the
#: CPU): only the batch composition differs, so probabilities agree to float32 rounding
PROB_TOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos_dir):
    """Real JPEGs (the demo's crops and skimage photos, some large enough for PIL's draft), PNGs (RGB and
    grayscale), a CMYK JPEG and two broken files."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("poolfiles")
    out = []
    for f in sorted(photos_dir.rglob("*.jpg"))[::2]:
        out.append(root / f"crop_{f.parent.name}_{f.name}")
        out[-1].write_bytes(f.read_bytes())
    for name in ("astronaut", "chelsea", "coffee"):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        photo.save(root / f"{name}.jpg", quality=90)
        photo.resize((photo.width // 4, photo.height // 3)).save(root / f"{name}_small.png")
        out += [root / f"{name}.jpg", root / f"{name}_small.png"]
    Image.fromarray(skdata.camera()).save(root / "camera_gray.png")
    Image.fromarray(skdata.chelsea()).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    (root / "broken.png").write_bytes(b"not a png")
    buf = io.BytesIO()
    Image.fromarray(skdata.rocket()).save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return out + [root / "camera_gray.png", root / "cmyk.jpg", root / "broken.png", root / "truncated.jpg"]


def _run_folder(folder, size=48, interpolation="bicubic", crop_pct=0.875):
    """A run of an untrained test_resnet (3 classes) at ``size`` px: what Predictor.load reads."""
    from tlkit.models.backbones import create_backbone
    from tlkit.train.checkpoint import RunMeta, save_weights

    torch.manual_seed(0)
    bb = create_backbone("test_resnet", pretrained=False, num_classes=3)
    cfg = DataConfig((3, size, size), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation, crop_pct, "center")
    meta = RunMeta("test_resnet", ("a", "b", "c"), cfg, {}, weights_origin={"source": "none"}, train="finetune")
    save_weights(folder / "best.safetensors", bb.model.state_dict(), meta.to_dict())
    return folder


@pytest.mark.parametrize("size,interpolation,crop_pct", [(48, "bicubic", 0.875), (64, "bilinear", 1.0)])
def test_store_scores_equal_todays_path_and_only_new_files_are_decoded(files, tmp_path, size, interpolation, crop_pct):
    from tlkit.train.predictor import Predictor

    run = _run_folder(tmp_path / "run", size, interpolation, crop_pct)
    predictor = Predictor.load(run, device="cpu", precision="fp32", engine="torch")
    store = tmp_path / "pixels"
    today = predictor.score_files(files)
    first = predictor.score_files(files, pixel_store=store)
    assert today.decode == "cpu" and first.decode == "store"
    np.testing.assert_allclose(first.probs, today.probs, rtol=0, atol=PROB_TOL)
    broken = [i for i, f in enumerate(files) if f.name in ("broken.png", "truncated.jpg")]
    assert not first.probs[broken].any() and np.allclose(np.delete(first.probs, broken, 0).sum(1), 1, atol=1e-5)
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    (array,) = folder.glob("pixels-*.npy")
    assert np.load(array, mmap_mode="r").dtype == np.uint8 and np.load(array, mmap_mode="r").shape[1:] == (3, size, size)

    # a later round: nothing decoded, the same array read again
    from tlkit.data.pixel_store import pool_pixels

    again = pool_pixels(store, files, predictor.data_config)
    assert again.decoded == 0 and again.folder == folder and len(again.failures) == 2
    assert list(folder.glob("pixels-*.npy")) == [array]

    # a changed file, a new one and one gone: only the changed and new ones decoded; scores still equal
    changed, new = files[0], tmp_path / "new.jpg"
    Image.open(files[3]).convert("RGB").rotate(90).save(changed.with_name("tmp.jpg"), quality=80)
    os.replace(changed.with_name("tmp.jpg"), changed)
    Image.open(files[4]).convert("RGB").save(new, quality=70)
    later = files[1:] + [changed, new]
    grown = pool_pixels(store, later, predictor.data_config)
    assert grown.decoded == 2 and len(list(folder.glob("pixels-*.npy"))) == 1 and not list(folder.glob(".*.tmp"))
    np.testing.assert_allclose(predictor.score_files(later, pixel_store=store).probs, predictor.score_files(later).probs,
                               rtol=0, atol=PROB_TOL)


def test_geometries_the_store_does_not_cover_fall_back_to_decoding(files, tmp_path, monkeypatch):
    from tlkit.data import pixel_store
    from tlkit.train.predictor import Predictor

    predictor = Predictor.load(_run_folder(tmp_path / "run"), device="cpu", precision="fp32", engine="torch")
    monkeypatch.setattr(pixel_store, "STORE_LIMIT_BYTES", 10 * 48 * 48 * 3)  # ten images
    scored = predictor.score_files(files, pixel_store=tmp_path / "pixels")
    assert scored.decode == "cpu" and not list((tmp_path / "pixels").rglob("*.npy"))
    cfg = DataConfig((3, 48, 48), (0.5,) * 3, (0.5,) * 3, "bicubic", 0.875, "squash")
    assert pixel_store.pool_pixels(tmp_path / "pixels", files, cfg) is None


# --------------------------------------------------------------------------- rounds


CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from tests.test_active import flat_digits_pool

    return flat_digits_pool(tmp_path_factory, per_class=6, seed=3)


def _project(tmp_path, pool_dir):
    from tlkit.active.project import Project

    return Project.create(tmp_path / "proj", pool=pool_dir, classes=CLASSES, image_size=32)


def _label_all_queried(project, rows, truth, tmp_path):
    from tlkit.active.labels import import_labels
    from tlkit.core.io import write_csv

    write_csv(tmp_path / "l.csv", ["path", "label"], [(r["path"], truth[r["path"]]) for r in rows])
    import_labels(project, tmp_path / "l.csv")


@pytest.mark.slow
def test_finetune_rounds_score_from_the_store_and_write_no_training_state(tmp_path, pool):
    from tlkit.active.round import run_round
    from tlkit.train.predictor import Predictor

    pool_dir, truth = pool
    project = _project(tmp_path, pool_dir)
    res = run_round(project.root, batch=30, engine="torch")  # one engine throughout: one embedding cache
    assert res.metrics["embeddings"]["device"] == "cpu"
    _label_all_queried(project, res.query, truth, tmp_path)
    res = run_round(project.root, batch=5, train="finetune", epochs=1, device="cpu", engine="torch")
    metrics = json.loads((res.dir / "metrics.json").read_text())
    assert metrics["pool_decode"] == "store" and metrics["pool_score_s"] >= 0
    model = res.dir / "model"
    # what evaluate and predict need, and no per-epoch training state, last weights or plots
    assert (model / "best.safetensors").is_file() and (model / "metrics.json").is_file()
    assert not (model / "train_state.pt").exists() and not (model / "last.safetensors").exists()
    assert not (model / "plots").exists() and not (model / "tb").exists()
    # the round's saved scores are the model's probabilities on today's path
    from tlkit.active.round import SCORES, load_scores

    paths, probs, _ = load_scores(res.dir / SCORES)
    predictor = Predictor.load(model, device="cpu", engine="torch")  # as the round scored: the CPU's precision
    expected = predictor.predict_files([project.pool_root / p for p in paths])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=PROB_TOL if predictor.engine.precision == "fp32" else 1e-3)
    store = project.cache_dir / "pixels"
    (array,) = store.rglob("pixels-*.npy")
    mtime = array.stat().st_mtime_ns
    res2 = run_round(project.root, batch=5, train="finetune", epochs=1, device="cpu", engine="torch", new=True)
    assert res2.metrics["pool_decode"] == "store" and array.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_evaluate_and_predict_work_on_a_rounds_model(tmp_path, pool):
    """A round's model folder without train_state.pt or last.safetensors is a run evaluate/predict accept."""
    from tests.conftest import run_cli
    from tlkit.active.finetune import FinetuneLearner

    pool_dir, truth = pool
    paths = sorted(pool_dir.glob("*.png"))
    y = np.array([CLASSES.index(truth[p.name]) for p in paths])
    run = tmp_path / "round" / "model"
    learner = FinetuneLearner(paths, tuple(CLASSES), device="cpu", run_dir=run,
                              config={"backbone": "test_resnet", "pretrained": False, "image_size": 32, "epochs": 2,
                                      "workers": 0, "precision": "fp32"})
    result = learner.fit(np.ones(len(paths), bool), y, seed=0)
    assert result.notes["pool_decode"] == "cpu"  # no store given: decoded as before
    assert not (run / "train_state.pt").exists() and (run / "best.safetensors").exists()
    labeled = tmp_path / "labeled"
    for p in paths[:20]:
        (labeled / truth[p.name]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, labeled / truth[p.name] / p.name)
    ev = run_cli("evaluate", str(run), "--data", str(labeled), "--device", "cpu", "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr
    pr = run_cli("predict", str(run), str(pool_dir), "--device", "cpu", "--out", str(tmp_path / "p.csv"))
    assert pr.returncode == 0, pr.stderr
    assert (tmp_path / "p.csv").read_text().count("\n") == len(paths) + 1


def test_embedding_cache_is_keyed_by_device_engine_and_precision(tmp_path, pool, caplog):
    """A cache made on a CUDA machine (simulated: a folder with that key and meta.json) is not mixed into the
    CPU's: the CPU embeds into its own folder with one warning naming the other; an old cache named before the
    rule is renamed after its meta.json and reused."""
    from tlkit.active.round import embedding_cache, run_round
    from tlkit.core.io import read_json, write_json

    pool_dir, _ = pool
    project = _project(tmp_path, pool_dir)
    run_round(project.root, batch=5)
    mine = embedding_cache(project, device="cpu")
    assert mine.folder.name.endswith(f"-cpu-{mine.engine}-{mine.precision}") and mine.folder.is_dir()
    meta = read_json(mine.folder / "meta.json")
    assert (meta["device"], meta["engine"]) == ("cpu", mine.engine)

    # the same project after a GPU machine ran it: its folder carries the CUDA key
    base = mine.folder.name[: -len(f"-cpu-{mine.engine}-{mine.precision}")]  # float32: no dtype part
    cuda = project.cache_dir / f"{base}-cuda-torch-bf16"
    os.replace(mine.folder, cuda)
    write_json(cuda / "meta.json", {**meta, "device": "cuda:0", "engine": "torch", "precision": "bf16"})
    before = (cuda / "features.npy").read_bytes()
    with caplog.at_level(logging.WARNING, logger="tlkit.active.round"):
        res = run_round(project.root, batch=5, new=True)
    assert any(cuda.name in r.getMessage() and "not mixed in" in r.getMessage() for r in caplog.records)
    assert res.metrics["embeddings"]["other_caches"] == [cuda.name]
    assert res.metrics["embeddings"]["cache"] == mine.folder.name and (mine.folder / "features.npy").is_file()
    assert (cuda / "features.npy").read_bytes() == before  # the other device's cache is kept as it was

    # a cache named before the rule (no device part) is renamed after what made it, and reused
    shutil.rmtree(cuda)
    legacy = project.cache_dir / base
    os.replace(mine.folder, legacy)
    mtime = (legacy / "features.npy").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tlkit.active.round"):
        res = run_round(project.root, batch=5, new=True)
    assert not legacy.exists() and (mine.folder / "features.npy").stat().st_mtime_ns == mtime
    assert res.metrics["embeddings"]["other_caches"] == [] and not caplog.records


def test_other_caches_are_those_of_the_same_backbone_size_and_dtype(tmp_path, pool):
    from tlkit.active.project import Project
    from tlkit.active.round import embedding_cache

    pool_dir, _ = pool
    project = Project.create(tmp_path / "p16", pool=pool_dir, classes=CLASSES, image_size=32, embedding_dtype="float16")
    mine = embedding_cache(project, device="cpu")
    assert mine.folder.name.endswith(f"-cpu-{mine.engine}-{mine.precision}-float16") and mine.others == ()
    stem = mine.folder.name[: -len(f"-cpu-{mine.engine}-{mine.precision}-float16")]
    for name in (f"{stem}-cuda-torch-bf16-float16", f"{stem}-cuda-torch-bf16", f"{stem[:-2]}64-cuda-torch-bf16-float16"):
        (project.cache_dir / name).mkdir(parents=True)
        (project.cache_dir / name / "meta.json").write_text("{}")
    assert embedding_cache(project, device="cpu").others == (f"{stem}-cuda-torch-bf16-float16",)
