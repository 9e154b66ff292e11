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
from tlkit.errors import TlkitError
from tlkit.io import read_csv, write_csv

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
    from tlkit.extract import extract_features

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
