"""`tlkit extract`: outputs, skipped files, strict mode, resume after SIGKILL, bf16 fidelity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from tlkit.core.io import read_csv
from tlkit.features.extract import extract_features, load_features


def test_cli_end_to_end(tmp_path, digits_dir):
    out = tmp_path / "feats"
    res = run_cli("extract", str(digits_dir), "--out", str(out), "--image-size", "64", "--batch-size", "16")
    assert res.returncode == 0, res.stderr
    assert "img/s" in res.stdout
    feats = np.load(out / "features.npy")
    index = read_csv(out / "index.csv")
    meta = json.loads((out / "meta.json").read_text())
    assert feats.shape == (60, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert [r["path"] for r in index] == sorted(r["path"] for r in index)
    assert {r["label"] for r in index} == {str(d) for d in range(10)}
    assert meta["weights"]["source"] == "package" and len(meta["weights"]["sha256"]) == 64
    assert meta["count"] == 60 and meta["dim"] == 1280 and meta["data_config"]["input_size"] == [3, 64, 64]
    assert not (out / "skipped.csv").exists() and not (out / "progress.json").exists()
    # Features carry the class signal: nearest neighbour on them beats chance (0.1) by far (fp32: 0.53
    # at 64 px, bf16 0.50-0.53: one neighbour of 60 flips with rounding).
    labels = np.array([int(r["label"]) for r in index])
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -1)
    assert (labels[sim.argmax(1)] == labels).mean() > 0.35


def _broken_copy(src, dst):
    shutil.copytree(src, dst)
    (dst / "3" / "empty.png").write_bytes(b"")
    (dst / "5" / "notes.jpg").write_text("not an image")
    good = next((dst / "7").glob("*.png")).read_bytes()
    (dst / "7" / "truncated.png").write_bytes(good[: len(good) // 2])
    (dst / "README.txt").write_text("ignored: not an image extension")
    return dst


def test_broken_files_are_skipped_and_rows_stay_aligned(tmp_path, digits_dir):
    images = _broken_copy(digits_dir, tmp_path / "imgs")
    clean = extract_features(digits_dir, tmp_path / "clean", image_size=48, workers=0, precision="fp32")
    res = extract_features(images, tmp_path / "dirty", image_size=48, workers=0, precision="fp32")
    assert res.skipped == 3 and res.count == clean.count == 60
    skipped = {r["path"]: r["reason"] for r in read_csv(tmp_path / "dirty" / "skipped.csv")}
    assert set(skipped) == {"3/empty.png", "5/notes.jpg", "7/truncated.png"}
    assert all(skipped.values())
    a, ia, _ = load_features(tmp_path / "clean")
    b, ib, _ = load_features(tmp_path / "dirty")
    assert [r["path"] for r in ia] == [r["path"] for r in ib]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_strict_fails_with_one_line_and_writes_no_final_output(tmp_path, digits_dir):
    images = _broken_copy(digits_dir, tmp_path / "imgs")
    out = tmp_path / "o"
    res = run_cli("extract", str(images), "--out", str(out), "--image-size", "32", "--strict")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "--strict" in res.stderr
    assert not (out / "features.npy").exists()


def test_bad_input_is_one_line_error(tmp_path):
    res = run_cli("extract", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.strip()


def test_resume_after_sigkill(tmp_path):
    from tlkit.demo import make_digits_folder

    images = make_digits_folder(tmp_path / "imgs", per_class=30)
    out = tmp_path / "o"
    env = {**os.environ, "TLKIT_OFFLINE": "1", "TLKIT_COMMIT_EVERY_S": "0"}
    cmd = [sys.executable, "-m", "tlkit", "extract", str(images), "--out", str(out), "--image-size", "64",
           "--batch-size", "4", "--workers", "0", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = json.loads((out / "progress.json").read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 40:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extract finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "features.npy").exists()
    res = extract_features(images, out, image_size=64, batch_size=4, workers=0, precision="fp32")
    assert res.resumed_from >= 40 and res.count == 300
    ref = extract_features(images, tmp_path / "ref", image_size=64, batch_size=4, workers=0, precision="fp32")
    assert ref.resumed_from == 0
    np.testing.assert_allclose(np.load(out / "features.npy"), np.load(tmp_path / "ref" / "features.npy"),
                               rtol=1e-4, atol=1e-4)


def test_finished_run_is_reused(tmp_path, digits_dir):
    out = tmp_path / "o"
    first = extract_features(digits_dir, out, image_size=32, workers=0)
    mtime = (out / "features.npy").stat().st_mtime_ns
    again = extract_features(digits_dir, out, image_size=32, workers=0)
    assert again.resumed_from == 60 and again.count == first.count
    assert (out / "features.npy").stat().st_mtime_ns == mtime


def test_changed_settings_start_over(tmp_path, digits_dir):
    out = tmp_path / "o"
    extract_features(digits_dir, out, image_size=32, workers=0)
    res = extract_features(digits_dir, out, image_size=48, workers=0)
    assert res.resumed_from == 0 and json.loads((out / "meta.json").read_text())["data_config"]["input_size"][1] == 48


def test_bf16_features_close_to_fp32(tmp_path, photos_dir):
    from tlkit.core.cpuinfo import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():  # OpenVINO runs (and records) fp32 there
        pytest.skip("this CPU has no native bf16")
    extract_features(photos_dir, tmp_path / "a", precision="fp32", image_size=128, workers=0)
    b16 = extract_features(photos_dir, tmp_path / "b", precision="bf16", image_size=128, workers=0)
    assert b16.meta["precision"] == "bf16"
    a, b = np.load(tmp_path / "a" / "features.npy"), np.load(tmp_path / "b" / "features.npy")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99, cos.min()


def test_flat_folder_and_manifest(tmp_path, digits_dir):
    manifest = tmp_path / "m.csv"
    rows = sorted(p.relative_to(digits_dir).as_posix() for p in digits_dir.rglob("*.png"))[:8]
    manifest.write_text("path,label\n" + "".join(f"digits/{r},{r.split('/')[0]}\n" for r in rows))
    shutil.copytree(digits_dir, tmp_path / "digits")
    res = extract_features(manifest, tmp_path / "o", image_size=32, workers=0)
    assert res.count == 8
    assert [r["path"] for r in read_csv(tmp_path / "o" / "index.csv")] == [f"digits/{r}" for r in rows]


def test_settings_key_of_features_made_before_data_config_is_unchanged(tmp_path, digits_dir, monkeypatch):
    """Folders written with the old dict data config keep their settings key (their rows are reused), and
    images are decoded at the size hint every other caller uses (size / crop_pct)."""
    from tlkit.data import size_hint_for
    from tlkit.features import extract as ex
    from tlkit.models.backbones import create_backbone

    bb = create_backbone()
    old = dict(bb.data_config, input_size=(3, 48, 48))  # the dict (tuples) the settings key was made from
    assert json.dumps(old, sort_keys=True) == json.dumps(bb.data_config.at_size(48).to_dict(), sort_keys=True)
    hints = []
    from tlkit.data import numpy_transform as nt

    for owner, name in ((ex.tdata, "ImageDataset"), (nt, "ArrayImages")):  # torch / OpenVINO decoding
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, **k: hints.append(k["size_hint"]) or _real(*a, **k))
    res = extract_features(digits_dir, tmp_path / "f", backbone=bb, image_size=48, workers=0, precision="fp32")
    assert hints == [size_hint_for(old)] and res.meta["data_config"] == json.loads(json.dumps(old))
