"""Atomic writes: all or nothing, and files get the usual permissions."""

from __future__ import annotations

import os

import pytest

from tlkit.core.io import atomic_write, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "labels.csv"], "temp file left behind"


def test_written_files_have_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
