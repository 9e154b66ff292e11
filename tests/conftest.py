"""Shared fixtures: small real image folders made from data that ships with installed packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TLKIT_OFFLINE", "1")  # never wait on the network in tests

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """10 classes x 6 real handwritten digits as 32 px PNGs."""
    from tlkit.demo import make_digits_folder

    return make_digits_folder(tmp_path_factory.mktemp("digits") / "digits", per_class=6, seed=0)


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """4 photos x 5 random crops (JPEG, 96 px)."""
    from tlkit.demo import make_photo_crops_folder

    return make_photo_crops_folder(
        tmp_path_factory.mktemp("photos") / "photos", per_class=5, photos=("chelsea", "coffee", "rocket", "coins")
    )


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m tlkit ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, "TLKIT_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO
    )
