"""`tlkit extract` reliability: one writer per folder, content fingerprints, incremental reuse,
disk-full safety, and a final set that is never mixed (real images, the bundled efficientnet_lite0)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_cli
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, write_csv
from tlkit.core.locks import hold_lock
from tlkit.features.extract import extract_features, load_features

FAST = dict(image_size=48, workers=0, precision="fp32", batch_size=16)  # 32 px gives all-zero features


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, except the lock file (its text names the last holder)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --------------------------------------------------------------------------- lock


def test_second_extract_into_a_busy_folder_is_refused(tmp_path, digits_dir, photos_dir):
    out = tmp_path / "o"
    extract_features(digits_dir, out, **FAST)
    before = _snapshot(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tlkit.core.locks import hold_lock\n"
         "with hold_lock(sys.argv[1], 'tlkit extract'):\n    print('held', flush=True); time.sleep(120)",
         str(out / ".lock")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_cli("extract", str(photos_dir), "--out", str(out), "--image-size", "48", "--workers", "0")
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert "is busy" in line and f"tlkit extract (pid {holder.pid})" in line and "run again" in line
    assert _snapshot(out) == before
    # In-process too (flock conflicts between two opens of the lock file), and released after.
    with hold_lock(out / ".lock", "tlkit extract"), pytest.raises(TlkitError, match="is busy"):
        extract_features(photos_dir, out, **FAST)
    assert extract_features(digits_dir, out, **FAST).embedded == 0


def test_out_that_is_a_file_is_one_line_error(tmp_path, digits_dir):
    target = tmp_path / "feats"
    target.write_text("not a folder")
    res = run_cli("extract", str(digits_dir), "--out", str(target))
    assert res.returncode == 2 and "is a file" in _one_line(res.stderr)
    assert target.read_text() == "not a folder"


# --------------------------------------------------------------------------- reuse


def _bmp_pool(folder: Path, digits_dir: Path, n: int) -> list[Path]:
    """``n`` real digit images as BMPs: every file has the same byte size."""
    folder.mkdir(parents=True)
    paths = []
    for i, src in enumerate(sorted(digits_dir.rglob("*.png"))[:n]):
        p = folder / f"{i:03d}.bmp"
        Image.open(src).convert("RGB").save(p)
        paths.append(p)
    assert len({p.stat().st_size for p in paths}) == 1
    return paths


def test_same_size_replacement_is_reembedded_alone(tmp_path, digits_dir):
    paths = _bmp_pool(tmp_path / "pool", digits_dir, 12)
    out = tmp_path / "o"
    first = extract_features(tmp_path / "pool", out, **FAST)
    assert (first.reused, first.embedded) == (0, 12)
    a = np.load(out / "features.npy")
    st = paths[5].stat()
    paths[5].write_bytes(paths[9].read_bytes())  # another image, same size, and the old mtime kept
    os.utime(paths[5], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert paths[5].stat().st_size == st.st_size and paths[5].stat().st_mtime_ns == st.st_mtime_ns
    again = extract_features(tmp_path / "pool", out, **FAST)
    assert (again.reused, again.embedded, again.count) == (11, 1, 12)
    b, index, _ = load_features(out)
    others = [i for i in range(12) if i != 5]
    assert a[others].tobytes() == b[others].tobytes()  # byte-identical: copied, not recomputed
    np.testing.assert_allclose(b[5], a[9], rtol=1e-4, atol=1e-4)  # now the features of image 9
    assert not np.allclose(b[5], a[5], rtol=1e-3, atol=1e-3)
    assert [r["path"] for r in index] == [p.name for p in paths]


def test_pool_growth_embeds_only_new_images_in_source_order(tmp_path):
    from tlkit.demo import make_digits_folder

    full = make_digits_folder(tmp_path / "full", per_class=31, seed=1)
    pool = tmp_path / "pool"
    shutil.copytree(full, pool)
    later = sorted(pool.rglob("*.png"))[3::31][:10]  # ten images spread over the classes
    for p in later:
        p.unlink()
    out = tmp_path / "o"
    assert extract_features(pool, out, **FAST).count == 300
    first, first_index, _ = load_features(out, mmap=False)
    for p in later:
        shutil.copy2(full / p.relative_to(pool), p)
    grown = extract_features(pool, out, **FAST)
    assert (grown.reused, grown.embedded, grown.count) == (300, 10, 310)
    feats, index, meta = load_features(out)
    assert [r["path"] for r in index] == sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*.png"))
    old_rows = {r["path"]: i for i, r in enumerate(first_index)}
    kept = [i for i, r in enumerate(index) if r["path"] in old_rows]
    assert feats[kept].tobytes() == first[[old_rows[index[i]["path"]] for i in kept]].tobytes()
    fresh = extract_features(pool, tmp_path / "fresh", **FAST)
    assert fresh.embedded == 310
    np.testing.assert_allclose(feats, np.load(tmp_path / "fresh" / "features.npy"), rtol=1e-4, atol=1e-4)
    assert meta["reused"] == 300 and {r["label"] for r in index} == {str(d) for d in range(10)}
    # Images that are gone are dropped; nothing is embedded.
    for p in later[:4]:
        p.unlink()
    shrunk = extract_features(pool, out, **FAST)
    assert (shrunk.reused, shrunk.embedded, shrunk.count) == (306, 0, 306)


def test_changed_settings_reuse_nothing(tmp_path, digits_dir):
    out = tmp_path / "o"
    extract_features(digits_dir, out, **FAST)
    res = extract_features(digits_dir, out, **{**FAST, "image_size": 64})
    assert (res.reused, res.embedded) == (0, 60)


# --------------------------------------------------------------------------- disk full


def _assert_intact(out: Path, before: dict[str, bytes]) -> None:
    after = _snapshot(out)
    for name in ("features.npy", "index.csv", "meta.json"):
        assert after[name] == before[name], name
    assert not (out / ".next").exists()
    feats, index, meta = load_features(out)
    assert feats.shape == (meta["count"], meta["dim"]) == (len(index), meta["dim"])


@pytest.fixture()
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (skipped where mounting is not allowed)."""
    from tests.conftest import tmpfs

    with tmpfs(tmp_path / "small", "2m") as mnt:
        yield mnt


def test_disk_full_on_a_real_small_disk(tmp_path, small_disk, digits_dir, monkeypatch):
    from tlkit.demo import make_digits_folder

    out = small_disk / "o"
    extract_features(digits_dir, out, **FAST)  # 60 x 1280 float32 fits
    before = _snapshot(out)
    big = make_digits_folder(tmp_path / "big", per_class=60, seed=2)  # 600 rows: 3.1 MB, does not
    res = run_cli("extract", str(big), "--out", str(out), "--image-size", "48", "--workers", "0")
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert "not enough free space" in line and "MiB" in line
    _assert_intact(out, before)
    # Past the early check, the real ENOSPC of the preallocation is one line too, nothing changed.
    monkeypatch.setattr("tlkit.features.extract.ensure_free", lambda *a, **k: None)
    with pytest.raises(TlkitError, match=r"disk full while writing features.partial.npy"):
        extract_features(big, out, **FAST)
    _assert_intact(out, before)


def _enospc_after(limit: int):
    real = os.pwrite
    written = [0]

    def pwrite(fd, data, offset):
        if written[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real(fd, data, offset)

    return pwrite


def test_disk_full_while_streaming_keeps_previous_result_and_resumes(tmp_path, digits_dir, photos_dir, monkeypatch):
    out = tmp_path / "o"
    extract_features(photos_dir, out, **FAST)
    before = _snapshot(out)
    monkeypatch.setattr(os, "pwrite", _enospc_after(150_000))  # 60 rows x 5 KiB: fails mid-stream
    with pytest.raises(TlkitError, match=r"^disk full while writing features.partial.npy in .*free space and re-run"):
        extract_features(digits_dir, out, **FAST)
    monkeypatch.undo()
    _assert_intact(out, before)
    assert json.loads((out / "progress.json").read_text())["done"] > 0
    res = extract_features(digits_dir, out, **FAST)
    assert res.resumed_from > 0 and res.count == 60
    extract_features(digits_dir, tmp_path / "ref", **FAST)
    np.testing.assert_allclose(np.load(out / "features.npy"), np.load(tmp_path / "ref" / "features.npy"),
                               rtol=1e-4, atol=1e-4)


def test_disk_full_in_the_final_step_keeps_previous_result(tmp_path, digits_dir, photos_dir, monkeypatch):
    import tlkit.features.store as store

    out = tmp_path / "o"
    extract_features(photos_dir, out, **FAST)
    before = _snapshot(out)
    real = store.write_json

    def full_disk(path, obj):
        if Path(path).parent.name == ".next":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    monkeypatch.setattr(store, "write_json", full_disk)
    with pytest.raises(TlkitError, match="disk full while writing meta.json"):
        extract_features(digits_dir, out, **FAST)
    monkeypatch.undo()
    _assert_intact(out, before)
    res = extract_features(digits_dir, out, **FAST)  # every row was done: only the final step runs
    assert res.embedded == 0 and res.resumed_from == 60 and res.count == 60


def test_cli_turns_any_enospc_into_one_line(capsys):
    import typer

    from tlkit.cli._app import user_errors

    with pytest.raises(typer.Exit) as exit_info, user_errors():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/r1/best.safetensors")
    assert exit_info.value.exit_code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "disk full while writing best.safetensors: free space and re-run; files already written are unchanged" in err


# --------------------------------------------------------------------------- consistent sets


def test_load_features_names_the_file_that_disagrees(tmp_path, digits_dir, photos_dir):
    out = tmp_path / "o"
    extract_features(digits_dir, out, **FAST)
    rows = read_csv(out / "index.csv")
    good = (out / "index.csv").read_bytes()
    write_csv(out / "index.csv", list(rows[0]), [list(r.values()) for r in rows[:-1]])
    with pytest.raises(TlkitError, match=r"index.csv has 59 rows but features.npy has 60.*re-run"):
        load_features(out)
    (out / "index.csv").write_bytes(good)
    # A same-shape features.npy from another run next to this meta.json (a torn final step).
    other = tmp_path / "other"
    extract_features(digits_dir, other, **{**FAST, "image_size": 64})
    shutil.copy(other / "features.npy", out / "features.npy")
    with pytest.raises(TlkitError, match=r"features.npy is not the features.npy that meta.json describes"):
        load_features(out)


def test_folder_copied_without_mtimes_and_old_folders_still_load(tmp_path, digits_dir):
    out = tmp_path / "o"
    extract_features(digits_dir, out, **FAST)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)  # new mtimes: checked by sha256
    a, index, _ = load_features(copy)
    assert a.shape == (60, 1280) and set(index[0]) == {"path", "label"}
    meta = json.loads((copy / "meta.json").read_text())
    del meta["files"], meta["settings_key"], meta["run_key"]  # as written before these checks
    (copy / "meta.json").write_text(json.dumps(meta))
    write_csv(copy / "index.csv", ["path", "label"], [[r["path"], r["label"]] for r in index])
    b, index_b, _ = load_features(copy)
    assert index_b == index and np.array_equal(a, b)
    assert extract_features(digits_dir, copy, **FAST).embedded == 60  # no fingerprints: embedded again


def test_interrupted_final_swap_is_finished_by_the_next_run(tmp_path, digits_dir, photos_dir, monkeypatch):
    import tlkit.features.store as store

    out = tmp_path / "o"
    extract_features(photos_dir, out, **FAST)
    real, calls = os.replace, []

    def crash_after_first_rename(src, dst):
        if Path(src).parent.name == ".next" and Path(dst).parent == out:
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt  # the process dies between two renames
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        extract_features(digits_dir, out, **FAST)
    monkeypatch.undo()
    assert (out / ".next" / "meta.json").is_file()
    with pytest.raises(TlkitError, match="re-run the same `tlkit extract`"):
        load_features(out)  # new features.npy, old index.csv and meta.json: refused, not returned
    res = extract_features(digits_dir, out, **FAST)
    assert res.embedded == 0 and res.count == 60 and not (out / ".next").exists()
    feats, index, _ = load_features(out)
    assert len(index) == 60 and index[0]["path"].startswith("0/")
