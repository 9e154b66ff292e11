"""Labels and pool files that stay readable whatever the file names, class names, timestamps or file
system: odd names round-trip through labels.csv, reserved and control-character class names are
refused, a relabel is seen by a restarted server, a read-only project or a file-size limit is one
line (issue #27)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tmpfs
from tlkit.active.labels import _resolve, import_seed_labels
from tlkit.active.labelstudio import Vote
from tlkit.active.poolpath import pool_file, pool_relpath
from tlkit.active.project import Project
from tlkit.core.io import write_csv

CLASSES = [str(d) for d in range(10)]
#: Real file names that str.splitlines() splits, csv quotes, or str.strip() changes.
ODD_NAMES = ["a\u2028b.png", "x\x1cy.png", "new\nline.png", " space first.png", "tab\tin.png", "quote\"d,comma.png",
             "cr\rname.png", "para\u2029graph.png", "trailing space .png"]


def _one_line_error(res, expect: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], res.stderr


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> list[tuple[Path, str]]:
    from tlkit.demo import make_digits_folder

    src = make_digits_folder(tmp_path_factory.mktemp("src") / "d", per_class=3, seed=4)
    return [(f, f.parent.name) for f in sorted(src.rglob("*.png"))]


def _odd_pool(root: Path, digits) -> tuple[Path, dict[str, str]]:
    pool = root / "pool"
    pool.mkdir(parents=True)
    truth = {}
    for (f, label), name in zip(digits, ODD_NAMES + [f"plain{i}.png" for i in range(len(digits))]):
        shutil.copy(f, pool / name)
        truth[name] = label
    return pool, truth


def _json_export(truth: dict[str, str], names: list[str]) -> list[dict]:
    """A Label Studio JSON export labeling ``names`` (tasks carry tlkit_path, as tlkit's tasks do)."""
    return [{"id": i, "data": {"image": "/data/local-files/?d=x", "tlkit_path": n},
             "annotations": [{"id": 100 + i, "was_cancelled": False, "result": [
                 {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [truth[n]]}}]}]}
            for i, n in enumerate(names)]


def test_odd_file_names_round_trip_through_labels_csv(tmp_path, digits):
    pool, truth = _odd_pool(tmp_path, digits)
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES, image_size=32)
    assert set(project.pool_paths()) == set(truth)  # every odd name is a pool file, exactly
    (tmp_path / "export.json").write_text(json.dumps(_json_export(truth, ODD_NAMES + ["plain0.png"])))
    res = run_cli("al-import", str(project.root), str(tmp_path / "export.json"))
    assert res.returncode == 0, res.stderr
    labels = Project.open(project.root).labels()
    assert labels == {n: truth[n] for n in ODD_NAMES + ["plain0.png"]}
    # every command still reads the project, and a second import merges into the same file
    assert run_cli("al-status", str(project.root)).returncode == 0
    write_csv(tmp_path / "more.csv", ["path", "label"], [("plain1.png", truth["plain1.png"])])
    res = run_cli("al-import", str(project.root), str(tmp_path / "more.csv"))
    assert res.returncode == 0, res.stderr
    res = run_cli("al-round", str(project.root), "--batch", "3", "--strategy", "random")
    assert res.returncode == 0, res.stderr
    assert len(Project.open(project.root).labels()) == len(ODD_NAMES) + 2


def test_hand_padded_paths_still_match_and_exact_names_win(tmp_path, digits):
    pool, truth = _odd_pool(tmp_path, digits)
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES)
    # a hand-written CSV with padding around a plain name, and Windows separators: still the pool file
    (tmp_path / "hand.csv").write_text(f"path,label\n  plain2.png ,{truth['plain2.png']}\n.\\plain3.png,"
                                       f"{truth['plain3.png']}\n")
    assert run_cli("al-import", str(project.root), str(tmp_path / "hand.csv")).returncode == 0
    assert Project.open(project.root).labels() == {"plain2.png": truth["plain2.png"], "plain3.png": truth["plain3.png"]}


@pytest.mark.parametrize("classes", ["skip,cat", "cat,Skip", "__skip__", "dog,UNLABELABLE", "ca\u2028t,dog",
                                     "c\x1cat"])
def test_reserved_and_control_character_class_names_are_refused_at_al_init(tmp_path, digits, classes):
    pool, _ = _odd_pool(tmp_path, digits)
    res = run_cli("al-init", str(tmp_path / "proj"), "--pool", str(pool), "--classes", classes)
    _one_line_error(res, "class")
    assert not (tmp_path / "proj" / "project.yaml").exists()


@pytest.mark.parametrize("label, expect", [("new\nclass", "control character"), ("tab\tclass", "control character"),
                                           ("line\u2028sep", "control character")])
def test_add_classes_refuses_control_characters(tmp_path, digits, label, expect):
    pool, truth = _odd_pool(tmp_path, digits)
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES)
    before = {f: (project.root / f).read_bytes() for f in ("labels.csv", "project.yaml", "label_config.xml")}
    export = [{"id": 1, "data": {"tlkit_path": "plain0.png"}, "annotations": [{"result": [
        {"type": "choices", "value": {"choices": [label]}}]}]}]
    (tmp_path / "e.json").write_text(json.dumps(export))
    _one_line_error(run_cli("al-import", str(project.root), str(tmp_path / "e.json"), "--add-classes"), expect)
    assert {f: (project.root / f).read_bytes() for f in before} == before


def test_latest_compares_times_not_strings():
    def v(label, t):
        return Vote("a.png", label, "w", time=t)

    # 12:00+05:00 is 07:00 UTC: earlier than 10:00Z, though it sorts later as a string
    assert _resolve([v("old", "2026-03-01T12:00:00+05:00"), v("new", "2026-03-01T10:00:00Z")], "latest") == "new"
    assert _resolve([v("new", "2026-03-01T10:00:00.123456Z"), v("old", "2026-03-01T10:00:00.1Z")], "latest") == "new"
    assert _resolve([v("known", "2026-03-01T10:00:00"), v("unknown", "")], "latest") == "known"
    assert _resolve([v("a", "2026-03-01T10:00:00+00:00"), v("b", "2026-03-01T11:00:00+01:00")], "latest") == "b"


def test_pool_relpath_is_the_one_gate(tmp_path):
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "a.png").write_bytes(b"x")
    (pool / "sub" / "b.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", pool / "out-link.png")
    os.symlink(tmp_path, pool / "out-dir")
    os.symlink(pool / "a.png", pool / "in-link.png")
    assert pool_relpath(pool, "a.png") == "a.png" and pool_relpath(pool, "./sub//b.png") == "sub/b.png"
    assert pool_relpath(pool, str(pool / "sub" / "b.png")) == "sub/b.png"
    assert pool_file(pool, "in-link.png") == "in-link.png" and pool_file(pool, "missing.png") is None
    for bad in ("../secret.png", "sub/../../secret.png", "sub/../a.png", str(tmp_path / "secret.png"), "/etc/passwd",
                "out-link.png", "out-dir/secret.png", "", ".", "a.png\x00", None, 5, ["a.png"], {"p": 1}):
        assert pool_relpath(pool, bad) is None and pool_file(pool, bad) is None, bad


def test_symlinks_out_of_the_pool_never_join_it(tmp_path, digits):
    pool, truth = _odd_pool(tmp_path, digits)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(digits[0][0], outside / "secret.png")
    os.symlink(outside / "secret.png", pool / "link-out.png")
    os.symlink(outside, pool / "dir-out")
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES)
    assert not any(p.startswith(("link-out", "dir-out")) for p in project.pool_paths())
    os.symlink(outside / "secret.png", pool / "later-link.png")
    res = run_cli("al-add", str(project.root))
    assert res.returncode == 0 and "added 0 images" in res.stdout and "outside the pool folder" in res.stderr, res
    assert "later-link.png" not in Project.open(project.root).pool_paths()


def test_restart_retrains_after_a_relabel_that_keeps_the_counts(tmp_path, digits):
    from tlkit.serve.backend import Backend

    pool, truth = _odd_pool(tmp_path, digits)
    names = sorted(truth)
    seed = {n: truth[n] for n in names[:12]}
    write_csv(tmp_path / "seed.csv", ["path", "label"], seed.items())
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES, image_size=32)
    import_seed_labels(project, tmp_path / "seed.csv")
    assert run_cli("al-round", str(project.root), "--batch", "4").returncode == 0
    assert not Backend(project.root)._labels_changed_since_last_round()
    relabel = names[0], next(c for c in CLASSES if c != truth[names[0]])
    write_csv(tmp_path / "fix.csv", ["path", "label"], [relabel])  # same count, another label
    assert run_cli("al-import", str(project.root), str(tmp_path / "fix.csv"), "--overwrite").returncode == 0
    backend = Backend(project.root)
    backend.start()  # a server restarted after a kill -9 during the retrain that followed the relabel
    try:
        deadline = time.monotonic() + 300
        while backend.version != "tlkit-0002" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert backend.version == "tlkit-0002", backend.last_error
    finally:
        backend.stop()
    assert not Backend(project.root)._labels_changed_since_last_round()


def test_import_names_queried_images_left_unlabeled_by_a_json_min_export(tmp_path, digits):
    pool, truth = _odd_pool(tmp_path, digits)
    names = sorted(truth)
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, truth[n]) for n in names[:10]])
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES, image_size=32)
    import_seed_labels(project, tmp_path / "seed.csv")
    assert run_cli("al-round", str(project.root), "--batch", "3", "--strategy", "random").returncode == 0
    query = [r["path"] for r in project.last_query()]
    # JSON_MIN as Label Studio writes it: one item per non-cancelled annotation; the skipped task is absent
    items = [{"image": "/data/local-files/?d=x", "tlkit_path": p, "id": i, "choice": truth[p], "annotator": 1,
              "annotation_id": i, "created_at": "2026-03-01T10:00:00Z", "updated_at": "2026-03-01T10:00:00Z",
              "lead_time": 1.0} for i, p in enumerate(query[1:])]
    (tmp_path / "min.json").write_text(json.dumps(items))
    res = run_cli("al-import", str(project.root), str(tmp_path / "min.json"))
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "1 queried images are still unlabeled" in out and query[0].strip() in out, out
    assert "JSON_MIN export leaves out skipped" in out and "export as JSON" in out, out


def test_nested_json_export_is_one_line(tmp_path, digits):
    pool, _ = _odd_pool(tmp_path, digits)
    project = Project.create(tmp_path / "proj", pool=pool, classes=CLASSES)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(run_cli("al-import", str(project.root), str(tmp_path / "deep.json")), "nested too deeply")


def _ro_project(mount: Path, digits) -> tuple[Project, dict[str, str]]:
    pool, truth = _odd_pool(mount, digits)
    names = sorted(truth)
    write_csv(mount / "seed.csv", ["path", "label"], [(n, truth[n]) for n in names[:10]])
    project = Project.create(mount / "proj", pool=pool, classes=CLASSES, image_size=32)
    import_seed_labels(project, mount / "seed.csv")
    assert run_cli("al-round", str(project.root), "--batch", "3", "--strategy", "random").returncode == 0
    write_csv(mount / "more.csv", ["path", "label"], [(names[11], truth[names[11]])])
    return project, truth


def test_read_only_project_is_one_line_and_status_still_works(tmp_path, digits):
    with tmpfs(tmp_path / "ro", "64m") as mount:
        project, truth = _ro_project(mount, digits)
        files = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}
        res = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {res.stderr.decode().strip()}")
        for args in (["al-import", str(project.root), str(mount / "more.csv")], ["al-add", str(project.root)],
                     ["al-round", str(project.root), "--batch", "2", "--new"]):
            _one_line_error(run_cli(*args), "Read-only file system")
        _one_line_error(run_cli("extract", str(project.pool_root), "--out", str(mount / "feats")),
                        "Read-only file system")
        res = run_cli("al-status", str(project.root))
        assert res.returncode == 0 and "labeled 10" in res.stdout, res.stdout + res.stderr
        # tlkit serve on it: predictions work, a webhook that would write is a 409, not a 500
        from tests.test_serve import Server, _annotation_event, http

        server = Server(project.root, "--retrain-every", "0", log_dir=tmp_path)
        try:
            free = next(p for p in project.pool_paths() if p not in project.labels())
            status, body = http("POST", server.url + "/predict", {"tasks": [{"data": {"tlkit_path": free}}]})
            assert status == 200 and body["results"][0]["model_version"] == "tlkit-0001", body
            status, body = http("POST", server.url + "/webhook", _annotation_event(project, free, truth[free], 1, 1))
            assert status == 409 and "cannot be written" in body["error"], (status, body)
            assert "Traceback" not in server.log.read_text()
        finally:
            server.stop()
        assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == files


def test_file_size_limit_is_one_line(tmp_path, digits):
    pool, truth = _odd_pool(tmp_path, digits)
    out = tmp_path / "feats"
    # the features of 30 images are far over 8 KiB; Python ignores SIGXFSZ, so the write fails with EFBIG
    res = subprocess.run(["bash", "-c", 'ulimit -f 8 && exec "$0" -m tlkit extract "$1" --out "$2" --image-size 32 '
                          "--engine torch",
                          sys.executable, str(pool), str(out)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "TLKIT_OFFLINE": "1"}, timeout=600)
    _one_line_error(res, "File too large: ")
    assert "features.partial.npy" in res.stderr
    assert not (out / "features.npy").exists()
