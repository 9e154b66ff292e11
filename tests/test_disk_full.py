"""A full disk during al-round and finetune: one line, exit 2, and what was written before is intact.

Uses a real small tmpfs, filled to the last byte by a filler file (skipped where mounting is not
allowed). Extract's disk-full cases are in tests/test_extract_safety.py.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli, tmpfs

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A real 48 MiB tmpfs (skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "disk", "48m") as mnt:
        yield mnt


def _fill(disk: Path) -> Path:
    """Write a filler file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _one_line_disk_full(res) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0] and res.stderr.rstrip().endswith(errors[0].rstrip()), res.stderr


def test_al_round_on_a_full_disk_keeps_the_project(small_disk, tmp_path):
    from tlkit.demo import make_digits_folder

    src = make_digits_folder(tmp_path / "src", per_class=3, seed=4)
    pool = small_disk / "pool"
    pool.mkdir()
    for f in sorted(src.rglob("*.png")):
        shutil.copy(f, pool / f"{f.parent.name}-{f.name}")
    proj = small_disk / "proj"
    assert run_cli("al-init", str(proj), "--pool", str(pool), "--classes", "0,1,2,3,4,5,6,7,8,9",
                   "--image-size", "64").returncode == 0
    res = run_cli("al-round", str(proj), "--batch", "10", "--strategy", "random")
    assert res.returncode == 0, res.stderr
    query = (proj / "rounds" / "0001" / "query.csv").read_text().splitlines()[1:]
    rows = [f"{line.split(',')[0]},{line.split(',')[0].split('-')[0]}" for line in query]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    assert run_cli("al-import", str(proj), str(tmp_path / "l.csv")).returncode == 0
    before = _snapshot(proj)
    filler = _fill(small_disk)
    res = run_cli("al-round", str(proj), "--batch", "5")
    _one_line_disk_full(res)
    assert {k: v for k, v in _snapshot(proj).items() if not k.startswith("rounds/0002")} == before
    filler.unlink()
    res = run_cli("al-round", str(proj), "--batch", "5")  # space again: the round completes
    assert res.returncode == 0, res.stderr
    assert (proj / "rounds" / "0002" / "query.csv").is_file() and not (proj / "rounds" / "0002.tmp").exists()


@pytest.mark.parametrize("slack", [0, 64 << 10], ids=["full", "full-at-checkpoint"])
def test_finetune_on_a_full_disk_keeps_its_checkpoints(small_disk, tmp_path, slack):
    from tests.test_train import make_digits

    data = make_digits(tmp_path / "digits")
    out = small_disk / "run"
    args = ["finetune", "--data", str(data), "--out", str(out), "--backbone", "test_resnet", "--no-pretrained",
            "--image-size", "32", "--batch-size", "8", "--workers", "0", "--precision", "fp32"]
    res = run_cli(*args, "--epochs", "1")
    assert res.returncode == 0, res.stderr
    before = _snapshot(out)
    filler = _fill(small_disk)
    os.truncate(filler, filler.stat().st_size - slack)  # room for the small files, not for a checkpoint
    res = run_cli(*args, "--epochs", "2", "--resume")
    _one_line_disk_full(res)
    after = _snapshot(out)
    for name in ("best.safetensors", "last.safetensors", "train_state.pt", "metrics.json"):
        assert after[name] == before[name], name
    filler.unlink()
    res = run_cli(*args, "--epochs", "2", "--resume")
    assert res.returncode == 0, res.stderr
    assert os.path.getsize(out / "last.safetensors") > 0
