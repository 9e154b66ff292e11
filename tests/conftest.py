"""Shared fixtures: small real image folders made from data that ships with installed packages."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TLKIT_OFFLINE", "1")  # never wait on the network in tests
# compiled OpenVINO models of this session go to a fresh folder, not the user's ~/.cache/tlkit
os.environ.setdefault("TLKIT_CACHE_DIR", tempfile.mkdtemp(prefix="tlkit-test-cache-"))

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


def flatten_class_tree(src: Path, pool: Path) -> dict[str, str]:
    """Copy every PNG of the class-folder tree ``src`` into the flat folder ``pool`` (created); returns the
    hidden truth, file name -> class."""
    import shutil

    pool.mkdir(parents=True, exist_ok=True)
    truth = {}
    for f in sorted(src.rglob("*.png")):
        shutil.copy(f, pool / f.name)
        truth[f.name] = f.parent.name
    return truth


def torchrun(nproc: int = 2) -> tuple[list[str], dict[str, str]]:
    """``python -m torch.distributed.run`` for ``nproc`` CPU processes on the loopback, and its environment.

    Loopback only: torch < 2.3's torchrun hands its workers the host's FQDN as MASTER_ADDR, and on a
    machine whose hostname resolves to an unreachable address (CI's once did) they wait there forever.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--local_addr=127.0.0.1"]
    env = {**os.environ, "TLKIT_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": str(REPO)}
    return cmd, env


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on 127.0.0.1 (see tests/labelstudio_server.py), stopped at the end.

    Skipped when ``TLKIT_LABEL_STUDIO`` (its ``label-studio`` executable, in a venv of its own) is
    not set, except where ``TLKIT_REQUIRE_LABEL_STUDIO=1`` (CI), which makes that a failure.
    """
    from tests import labelstudio_server

    exe = os.environ.get("TLKIT_LABEL_STUDIO")
    if not exe or not Path(exe).exists():
        msg = "Label Studio not available: set TLKIT_LABEL_STUDIO to the label-studio executable of its own venv"
        if os.environ.get("TLKIT_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    server = labelstudio_server.start(exe, tmp_path_factory.mktemp("label-studio"))
    yield server
    server.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real small tmpfs mounted at ``path`` (the test is skipped where mounting is not allowed)."""
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


MOSAIC_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def make_mosaics(folder: Path, n: int, *, seed: int = 0, size: int = 64) -> dict[str, set[str]]:
    """``n`` real multi-label images: 2x2 mosaics of crops of ``skimage.data`` photos (a grey tile where
    no photo sits); each image's labels are the photos in it (0 to 3 of :data:`MOSAIC_PHOTOS`).

    Returns ``{file name: set of photo names}``; the files are ``folder/mNNN.png``.
    """
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = {p: Image.fromarray(getattr(skdata, p)()).convert("RGB") for p in MOSAIC_PHOTOS}
    folder.mkdir(parents=True, exist_ok=True)
    half, truth = size // 2, {}
    for i in range(n):
        present = set(rng.choice(MOSAIC_PHOTOS, size=int(rng.integers(0, 4)), replace=False).tolist())
        tiles = list(present) + [None] * (4 - len(present))
        rng.shuffle(tiles)
        img = Image.new("RGB", (size, size), (128, 128, 128))
        for t, name in enumerate(tiles):
            if name is None:
                continue
            photo = photos[name]
            w, h = photo.size
            side = int(min(w, h) * rng.uniform(0.4, 0.8))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            img.paste(photo.crop((x, y, x + side, y + side)).resize((half, half)), ((t % 2) * half, (t // 2) * half))
        img.save(folder / f"m{i:03d}.png")
        truth[f"m{i:03d}.png"] = present
    return truth
