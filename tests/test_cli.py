"""The CLI as a user runs it: `python -m tlkit`, the demo, help texts."""

from __future__ import annotations

from tests.conftest import run_cli


def test_help_lists_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("demo", "extract", "backbones"):
        assert cmd in res.stdout


def test_help_texts_match_the_library_and_help_stays_light():
    import subprocess
    import sys

    from tlkit.cli.finetune import MODES_HELP, PRECISIONS_HELP
    from tlkit.core.runtime import PRECISIONS
    from tlkit.train.config import MODES

    assert MODES_HELP == " | ".join(MODES) and PRECISIONS_HELP == " | ".join(PRECISIONS)
    # loading the CLI must not import sklearn (1 s) or timm (2 s): extract starts faster
    code = "import sys, tlkit.cli; print(sorted(m for m in ('sklearn', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_runs_offline(tmp_path):
    res = run_cli("demo", "--per-class", "6", "--workdir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout
    assert (tmp_path / "features" / "features.npy").exists()


def test_backbones_listing():
    res = run_cli("backbones", "test_efficientnet")
    assert res.returncode == 0, res.stderr
    assert "efficientnet_lite0" in res.stdout and "yes (package)" in res.stdout and "test_efficientnet" in res.stdout
