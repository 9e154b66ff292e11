"""Issue #27: what a hostile client or an odd file finds. Each refusal is one line (exit 2 from the CLI)
and changes nothing already written; each silent oddity is now said or refused.

Real files, real tiny models (timm's ``test_resnet``, the bundled default backbone at 32 px) and real
subprocess runs of the CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, write_csv

SMALL = ["--image-size", "32", "--workers", "0"]


def one_error_line(res, *expected: str) -> str:
    """The CLI run failed with exit 2 and one ``error: ...`` line holding every ``expected`` text."""
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the extract lock excluded: taking it records its holder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def feats(tmp_path_factory, digits_dir) -> Path:
    """A `tlkit extract` folder of the 60 digits (default backbone, 32 px), images still in place."""
    from tlkit.features.extract import extract_features

    out = tmp_path_factory.mktemp("hardening") / "feats"
    extract_features(digits_dir, out, image_size=32, workers=0)
    return out


# --------------------------------------------------------------------------- 1. export parity with NaN


def test_parity_check_fails_non_finite_outputs():
    from tlkit.engines.openvino_engine import parity_cosine

    ref = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    assert parity_cosine(ref, ref) == pytest.approx(1.0)
    nan = np.full_like(ref, np.nan)
    for out, reference in ((nan, ref), (ref, nan), (nan, nan), (ref * np.inf, ref), (ref[:1], ref)):
        assert parity_cosine(out, reference) == -1.0  # below every threshold; NaN never compares below one


@pytest.mark.slow
def test_export_refuses_a_model_that_outputs_nan(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", num_classes=0)
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    for fmt in ("onnx", "openvino"):
        out = tmp_path / f"deploy-{fmt}"
        res = run_cli("export", "test_resnet", "--weights", str(tmp_path / "nan.safetensors"), "--format", fmt,
                      "--out", str(out), "--image-size", "32")
        one_error_line(res, "NaN", "--weights")
        assert not out.exists(), f"{fmt}: nothing exported, no folder left"


# --------------------------------------------------------------------------- 2. audit --pred-probs values


def _probs_rows(feats: Path) -> tuple[list[str], list[list]]:
    rows = read_csv(feats / "index.csv")
    classes = sorted({r["label"] for r in rows})
    probs = [[r["path"], *(0.91 if c == r["label"] else 0.01 for c in classes)] for r in rows]
    return classes, probs


@pytest.mark.slow  # the fixture embeds the digits
@pytest.mark.parametrize("bad", ["nan", "inf", "-0.5", "zeros"])
def test_audit_refuses_pred_probs_that_are_not_probabilities(feats, tmp_path, bad):
    from tlkit.audit import run_audit

    classes, probs = _probs_rows(feats)
    row = probs[7]
    if bad == "zeros":
        row[1:] = [0.0] * len(classes)
    else:
        row[2] = bad
    write_csv(tmp_path / "probs.csv", ["path", *classes], probs)
    with pytest.raises(TlkitError) as e:
        run_audit(feats, out=tmp_path / "out", pred_probs=tmp_path / "probs.csv", sheets=False)
    msg = str(e.value)
    assert "\n" not in msg and repr(row[0]) in msg and "probs.csv" in msg, msg
    assert not (tmp_path / "out" / "issues.csv").exists() and not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.slow
def test_cli_audit_with_nan_pred_probs_is_one_line(feats, tmp_path):
    classes, probs = _probs_rows(feats)
    probs[3][1] = "nan"
    write_csv(tmp_path / "probs.csv", ["path", *classes], probs)
    res = run_cli("audit", "--data", str(feats), "--out", str(tmp_path / "out"), "--pred-probs",
                  str(tmp_path / "probs.csv"), "--no-sheets")
    one_error_line(res, probs[3][0], "finite")
    assert not (tmp_path / "out" / "summary.json").exists()


# --------------------------------------------------------------------------- 3. extract --merge into nowhere


def test_merge_into_a_missing_folder_is_one_line(tmp_path, digits_dir):
    res = run_cli("extract", str(digits_dir), "--out", str(tmp_path / "nowhere"), "--merge")
    one_error_line(res, "nowhere", "does not exist", "--shard")
    assert not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------- 4. non-finite settings


@pytest.mark.parametrize("setting", ["lr=nan", "lr=.inf", "lr=inf", "weight_decay=inf", "warmup_epochs=.nan",
                                     "color_jitter=inf", "clip_grad=nan", "class_weights=[1, .inf]"])
def test_non_finite_settings_are_refused(setting):
    from tlkit.train import make_config

    with pytest.raises(TlkitError) as e:
        make_config(overrides=[setting])
    msg = str(e.value)
    assert msg.startswith(setting.split("=")[0] + "=") and "finite" in msg and "\n" not in msg, msg


def test_finetune_with_lr_nan_is_one_line_and_writes_nothing(tmp_path, digits_dir):
    res = run_cli("finetune", "--data", str(digits_dir), "--out", str(tmp_path / "run"), "--set", "lr=nan",
                  "--epochs", "1", *SMALL)
    one_error_line(res, "lr=nan", "finite")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 5. audit --test of another dimension


@pytest.mark.slow
def test_audit_test_features_of_another_dimension_is_one_line(feats, tmp_path, digits_dir):
    from tlkit.features.extract import extract_features

    other = tmp_path / "resnet-feats"
    extract_features(digits_dir, other, backbone="test_resnet", pretrained=False, image_size=32, workers=0)
    res = run_cli("audit", "--data", str(feats), "--test", str(other), "--out", str(tmp_path / "out"), "--no-sheets")
    one_error_line(res, "96", "1280", "same backbone")
    assert not (tmp_path / "out" / "summary.json").exists()


# --------------------------------------------------------------------------- 6. bf16 asked, fp32 ran


@pytest.mark.slow
def test_openvino_bf16_on_a_cpu_without_native_bf16_reports_fp32(tmp_path, digits_dir):
    pytest.importorskip("openvino")
    out = tmp_path / "feats"
    res = run_cli("extract", str(digits_dir), "--out", str(out), "--engine", "openvino", "--precision", "bf16",
                  *SMALL, env={"TLKIT_CPU_BF16": "0", "COLUMNS": "200"})  # tlkit's switch: this CPU has no bf16
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["engine"], meta["precision"]) == ("openvino", "fp32")
    assert "openvino, fp32 on cpu" in res.stdout, res.stdout
    assert "bf16" in res.stderr and "fp32" in res.stderr, "the switch to fp32 is said once"
    assert len([ln for ln in res.stderr.splitlines() if "bf16" in ln]) == 1, res.stderr


def test_openvino_precision_follows_the_cpu_facts(monkeypatch):
    from tlkit.core.cpuinfo import cpu_has_fast_bf16
    from tlkit.engines.openvino_engine import ov_precision

    for native, expected in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("TLKIT_CPU_BF16", native)
        cpu_has_fast_bf16.cache_clear()
        try:
            assert ov_precision("bf16") == expected and ov_precision("auto") == expected
            assert ov_precision("fp32") == "fp32"
        finally:
            cpu_has_fast_bf16.cache_clear()


# --------------------------------------------------------------------------- 7. --merge with other settings


@pytest.fixture(scope="module")
def shards(tmp_path_factory, digits_dir) -> Path:
    """Two finished shards of the digits (default backbone, 32 px, float32), not merged."""
    from tlkit.features.extract import extract_features
    from tlkit.features.store import Shard

    out = tmp_path_factory.mktemp("merge") / "out"
    for i in range(2):
        extract_features(digits_dir, out, image_size=32, workers=0, precision="fp32", shard=Shard(i, 2))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("option, value, named", [
    ("--image-size", "64", "--image-size 32"),
    ("--dtype", "float16", "--dtype float32"),
    ("--backbone", "test_resnet", "--backbone efficientnet_lite0"),
])
def test_merge_refuses_options_the_shards_were_not_made_with(shards, digits_dir, tmp_path, option, value, named):
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    before = snapshot(out)
    res = run_cli("extract", str(digits_dir), "--out", str(out), "--merge", option, value)
    one_error_line(res, f"{option} {value}", named)
    assert snapshot(out) == before and not (out / "features.npy").exists()


@pytest.mark.slow
def test_merge_accepts_the_options_the_shards_were_made_with(shards, digits_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    res = run_cli("extract", str(digits_dir), "--out", str(out), "--merge", "--image-size", "32", "--dtype",
                  "float32", "--backbone", "efficientnet_lite0")
    assert res.returncode == 0 and "merged 2 shards" in res.stdout, res.stderr


# --------------------------------------------------------------------------- 8. tune --resume checks first


@pytest.mark.slow
def test_tune_resume_with_other_settings_is_refused_before_any_training(digits_dir, tmp_path):
    pytest.importorskip("optuna")
    from tlkit.train import make_config
    from tlkit.train.tune import tune

    base = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=8, workers=0,
                       precision="fp32", hflip=0.0)
    out = tmp_path / "tune"
    kw = dict(data=digits_dir, out=out, budget_s=120, trial_epochs=1, lr_find_steps=20, confirm=False)
    tune(base, max_trials=1, **kw)
    (out / "lr_find.json").unlink()  # the stored range test is gone: a resume would run a new one
    before = snapshot(out)
    steps: list[int] = []
    with pytest.raises(TlkitError, match=r"other settings \(lr\)"):
        tune(base.replace(lr=0.5), max_trials=1, resume=True, progress=steps.append, **kw)
    assert steps == [], "refused before any training step (range test or trial)"
    assert snapshot(out) == before


# --------------------------------------------------------------------------- 9. lr-find on a short or flat curve


def test_lr_find_with_too_few_steps_is_one_line(tmp_path, digits_dir):
    res = run_cli("lr-find", str(digits_dir), "--out", str(tmp_path / "lr"), "--steps", "5", "--image-size", "32",
                  "--set", "workers=0")
    one_error_line(res, "--steps 5", "--steps 20")
    assert not (tmp_path / "lr").exists()


@pytest.mark.slow
def test_a_flat_range_test_keeps_the_configured_lr_and_says_so(digits_dir, caplog):
    from tlkit.train import make_config
    from tlkit.train.lr_find import lr_find

    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=8, workers=0,
                      precision="fp32", lr=2e-3)
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        res = lr_find(cfg, data=digits_dir, steps=20, start_lr=1e-9, end_lr=1e-8)  # too small to move the loss
    assert res.method.startswith("flat") and res.suggestion == 2e-3 and not res.candidates
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--steps" in warnings[0] and "0.002" in warnings[0], warnings


# --------------------------------------------------------------------------- 10. audit of one class


@pytest.mark.slow
def test_audit_of_one_class_runs_the_label_free_checks(tmp_path, digits_dir):
    one = tmp_path / "one"
    shutil.copytree(digits_dir / "3", one / "3")
    shutil.copy(one / "3" / sorted(p.name for p in (one / "3").iterdir())[0], one / "3" / "copy.png")
    res = run_cli("audit", "--data", str(one), "--out", str(tmp_path / "out"), "--image-size", "32", "--no-sheets",
                  env={"COLUMNS": "300"})
    assert res.returncode == 0, res.stderr
    assert "two or more classes" in res.stdout, res.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == 7 and summary["label_issues"] == 0 and summary["duplicate_groups"] == 1
    assert any("two or more classes" in n for n in summary["notes"])
    assert read_csv(tmp_path / "out" / "issues.csv") == []
    assert {r["match"] for r in read_csv(tmp_path / "out" / "duplicates.csv")} == {"", "exact"}
    assert (tmp_path / "out" / "outliers.csv").is_file()
