"""Sharded extraction: --shard i/N + --merge, and torchrun with 2 CPU processes (gloo), against one process."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO, run_cli, torchrun
from tests.test_extract import _broken_copy
from tlkit.core.errors import TlkitError
from tlkit.features.store import Shard

ARGS = ["--image-size", "32", "--precision", "fp32", "--workers", "0", "--batch-size", "8"]


@pytest.mark.parametrize("n", [7, 60, 61])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_contiguous_cover_every_record_once_and_differ_by_at_most_one(n, count):
    ranges = [Shard(i, count).bounds(n) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_bad_shard_specs_are_one_line():
    assert Shard.parse(" 1 / 4 ") == Shard(1, 4)
    for spec in ("4/4", "-1/2", "a/b", "1", ""):
        with pytest.raises(TlkitError, match="give i/N with 0 <= i < N"):
            Shard.parse(spec)


def _same(a, b) -> None:
    """Byte-for-byte the same rows, ids and order."""
    assert (a / "index.csv").read_text() == (b / "index.csv").read_text()
    assert (a / "features.npy").read_bytes() == (b / "features.npy").read_bytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory, digits_dir):
    """60 digits plus 3 files that cannot be decoded (in different shards)."""
    return _broken_copy(digits_dir, tmp_path_factory.mktemp("shards") / "imgs")


@pytest.fixture(scope="module")
def single(images):
    out = images.parent / "single"
    res = run_cli("extract", str(images), "--out", str(out), *ARGS)
    assert res.returncode == 0, res.stderr
    return out


def test_shards_merge_into_the_one_process_result(images, single, tmp_path):
    out = tmp_path / "out"
    r = run_cli("extract", str(images), "--out", str(out), "--shard", "0/2", *ARGS)
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", str(images), "--out", str(out), "--merge")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "shard 1/2 has not been extracted" in r.stderr
    assert not (out / "features.npy").exists()
    r = run_cli("extract", str(images), "--out", str(out), "--shard", "1/2", *ARGS)
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", str(images), "--out", str(out), "--merge")
    assert r.returncode == 0 and "merged 2 shards" in r.stdout, r.stderr
    _same(single, out)
    assert (out / "skipped.csv").read_text() == (single / "skipped.csv").read_text()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["run_key"] == json.loads((single / "meta.json").read_text())["run_key"] and meta["shards"] == 2
    r = run_cli("extract", str(images), "--out", str(out), *ARGS)  # one process: the merged result is this run's
    assert r.returncode == 0 and "0 embedded" in r.stdout, r.stdout
    r = run_cli("extract", str(images), "--out", str(out), "--shard", "0/3", *ARGS)
    assert r.returncode == 0, r.stderr
    r = run_cli("extract", str(images), "--out", str(out), "--merge")
    assert r.returncode == 2 and "shards of 2 and 3 runs" in r.stderr, r.stderr


def _torchrun(images, out) -> subprocess.CompletedProcess:
    cmd, env = torchrun(2)
    cmd += ["-m", "tlkit", "extract", str(images), "--out", str(out), *ARGS]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_and_resume_only_what_is_missing(images, single, tmp_path):
    out = tmp_path / "tr"
    r = _torchrun(images, out)
    assert r.returncode == 0 and "merged 2 shards" in r.stdout, r.stderr[-3000:]
    _same(single, out)
    # rank 1 "killed" before it finished: its shard is gone; the relaunch recomputes that shard only
    first = out / "shards" / "00000-of-00002" / "features.npy"
    stamp = first.stat().st_mtime_ns
    second = out / "shards" / "00001-of-00002"
    for f in second.iterdir():
        f.unlink()
    (out / "features.npy").unlink()
    r = _torchrun(images, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp, "the finished shard was not redone"
    assert json.loads((second / "meta.json").read_text())["count"] > 0
    _same(single, out)


def test_float16_storage_is_the_float32_result_rounded_and_merges_as_float16(images, single, tmp_path):
    """--dtype float16: the same rows rounded once, half the bytes; a re-run has nothing to do; shards
    of float16 merge into float16; loading without mmap gives float32."""
    from tlkit.features.extract import load_features

    out = tmp_path / "half"
    r = run_cli("extract", str(images), "--out", str(out), "--dtype", "float16", *ARGS)
    assert r.returncode == 0, r.stderr
    half = np.load(out / "features.npy")
    full = np.load(single / "features.npy")
    assert half.dtype == np.float16 and half.shape == full.shape
    assert np.array_equal(half, full.astype(np.float16))
    assert json.loads((out / "meta.json").read_text())["dtype"] == "float16"
    assert (out / "index.csv").read_text() == (single / "index.csv").read_text()
    mapped, _, _ = load_features(out)
    loaded, _, _ = load_features(out, mmap=False)
    assert mapped.dtype == np.float16 and loaded.dtype == np.float32 and np.array_equal(loaded, half.astype(np.float32))
    again = run_cli("extract", str(images), "--out", str(out), "--dtype", "float16", *ARGS)
    assert again.returncode == 0 and "0 embedded" in again.stdout

    sharded = tmp_path / "half-shards"
    for i in range(2):
        r = run_cli("extract", str(images), "--out", str(sharded), "--shard", f"{i}/2", "--dtype", "float16", *ARGS)
        assert r.returncode == 0, r.stderr
    assert run_cli("extract", str(images), "--out", str(sharded), "--merge").returncode == 0
    _same(sharded, out)


def test_switching_the_storage_dtype_embeds_again_and_a_bad_dtype_is_one_line(images, single, tmp_path):
    import shutil

    out = tmp_path / "switch"
    shutil.copytree(single, out)
    r = run_cli("extract", str(images), "--out", str(out), "--dtype", "float16", *ARGS)
    assert r.returncode == 0, r.stderr
    assert "0 reused" in r.stdout  # rounded rows never stand in for float32 ones, nor the reverse
    assert np.load(out / "features.npy").dtype == np.float16
    bad = run_cli("extract", str(images), "--out", str(tmp_path / "bad"), "--dtype", "int8", *ARGS)
    assert bad.returncode != 0 and "unknown feature dtype 'int8'" in bad.stderr and "Traceback" not in bad.stderr
