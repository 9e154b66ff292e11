"""benchmarks/gpu_check.sh cannot run without a GPU; its shell parses and its Python helper's steps run on the
CPU in --tiny mode (synthetic data, a tiny project, bounds with tiny models, the report over what exists)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

HELPER = REPO / "benchmarks" / "gpu_helper.py"


def _helper(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLKIT_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=REPO)


def test_gpu_check_parses():
    res = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_gpu_helper_steps_run_tiny_on_the_cpu(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    for args in (("info", "--out", str(work / "info.json")),
                 ("make-data", "--out", str(data), "--n", "40", "--size", "40"),
                 ("make-project", "--data", str(data), "--work", str(work), "--per-class", "4"),
                 ("bounds", "--data", str(data), "--out", str(work / "bounds.json"), "--tiny")):
        res = _helper(*args)
        assert res.returncode == 0, (args, res.stderr[-2000:])
    bounds = json.loads((work / "bounds.json").read_text())
    assert bounds["tiny"] and not bounds.get("errors"), bounds.get("errors")
    for key in ("decode_eval_b64_wdef", "decode_train_b128_wall", "decode_train_dev_b128_wdef", "train_b32"):
        assert bounds[key] > 0, key
    assert len(list((work / "al_pool").iterdir())) == 40
    res = _helper("report", "--work", str(work))
    assert res.returncode == 0, res.stderr
    for line in ("-- (2) tlkit finetune", "--decode device vs cpu at b128", "round 2 (--new, store reused)",
                 "FAIL  #29 al_round GPU idle < 30 % of wall time"):
        assert line in res.stdout, line
