"""Label files in and out: hand-edited labels.csv, malformed exports, the annotator rule, image URLs,
the pool (symlinks, growth, deleted images). The round trip against a real Label Studio is in
tests/test_labelstudio.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import flatten_class_tree, run_cli
from tlkit.active.labels import _resolve
from tlkit.active.labelstudio import ImageUrls, Vote, label_config
from tlkit.active.project import Project
from tlkit.core.io import read_csv, write_csv

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    from tlkit.demo import make_digits_folder

    src = make_digits_folder(tmp_path_factory.mktemp("src") / "d", per_class=4, seed=2)
    pool = tmp_path_factory.mktemp("pool") / "pool"
    truth = flatten_class_tree(src, pool)
    return pool, truth


@pytest.fixture
def project(tmp_path, pool) -> Project:
    pool_dir, truth = pool
    p = Project.create(tmp_path / "proj", pool=pool_dir, classes=CLASSES, image_size=64)
    names = sorted(truth)[:3]
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, truth[n]) for n in names])
    assert run_cli("al-import", str(p.root), str(tmp_path / "seed.csv")).returncode == 0
    return p


def _one_line_error(res, expect: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], res.stderr


@pytest.mark.parametrize("edit, expect", [
    (lambda rows, names: rows + [[rows[1][0], "3" if rows[1][1] != "3" else "4"]], "earlier line"),
    (lambda rows, names: rows + [[names[5], "cat"]], "is not a project class"),
    (lambda rows, names: rows + [[names[5] + "6"]], "must be path,label"),
    (lambda rows, names: rows + [["nowhere.png", "1"]], "is not in the pool"),
    (lambda rows, names: [["file", "class"]] + rows[1:], "header path,label"),
])
def test_hand_edited_labels_csv_is_refused_by_every_command(tmp_path, project, pool, edit, expect):
    names = sorted(pool[1])
    rows = [line.split(",") for line in project.labels_csv.read_text().splitlines()]
    project.labels_csv.write_text("\n".join(",".join(r) for r in edit(rows, names)) + "\n")
    files = ("project.yaml", "pool.csv", "labels.csv", "label_config.xml")
    before = {f: (project.root / f).read_bytes() for f in files}
    write_csv(tmp_path / "more.csv", ["path", "label"], [(names[9], "1")])
    for args in (["al-status", str(project.root)], ["al-round", str(project.root), "--batch", "2"],
                 ["al-import", str(project.root), str(tmp_path / "more.csv")]):
        res = run_cli(*args)
        _one_line_error(res, expect)
        assert "labels.csv line" in res.stderr or "labels.csv" in res.stderr
    assert {f: (project.root / f).read_bytes() for f in files} == before
    assert not project.rounds_dir.exists() or not list(project.rounds_dir.iterdir())


@pytest.mark.parametrize("content, expect", [
    ("[1, 2, 3]", "not a task object"),
    ('["a.png"]', "not a task object"),
    ('[{"id": 1, "data": "a.png", "annotations": []}]', "must be objects"),
    ('{"tasks": []}', "expected a JSON list"),
    ('[{"id": 1, "data": {"image": "x"}, "annotations": "yes"}]', "must be a list"),
    ("[]", "holds no labels"),
])
def test_malformed_label_studio_exports_give_one_line(tmp_path, project, content, expect):
    (tmp_path / "x.json").write_text(content)
    before = project.labels_csv.read_bytes()
    _one_line_error(run_cli("al-import", str(project.root), str(tmp_path / "x.json")), expect)
    assert project.labels_csv.read_bytes() == before


def test_non_utf8_label_file_gives_one_line(tmp_path, project):
    (tmp_path / "x.csv").write_bytes("path,label\nnaïve.png,1\n".encode("cp1252"))
    _one_line_error(run_cli("al-import", str(project.root), str(tmp_path / "x.csv")), "UTF-8")


def test_annotator_rule():
    def v(label, **kw):
        return Vote("a.png", label, "w", **kw)

    assert _resolve([v("1"), v("1")], "agree") == "1"
    assert _resolve([v("1"), v("2")], "agree") is None  # disagreement: not imported
    assert _resolve([v("1"), v("2", ground_truth=True)], "agree") == "2"  # ground truth first
    assert _resolve([v("1", ground_truth=True), v("2", ground_truth=True)], "majority") is None
    assert _resolve([v("1"), v("2"), v("2")], "majority") == "2"
    assert _resolve([v("1"), v("2")], "majority") is None  # a tie stays a disagreement
    assert _resolve([v("1", time="2026-01-02"), v("2", time="2026-01-01")], "latest") == "1"
    assert _resolve([v("", cancelled=True), v("3")], "agree") == "3"  # a label beats a skip
    assert _resolve([v("", cancelled=True)], "agree") == "__skip__"


def test_image_urls_round_trip_and_refuse_escapes(tmp_path):
    urls = ImageUrls("/data/local-files/?d=", tmp_path, tmp_path / "my pool é")
    for path in ("a.png", "sub dir/ü (1).png", "x%20y.png"):
        assert urls.path(urls.url(path)) == path
    assert urls.url("a b.png") == "/data/local-files/?d=my%20pool%20%C3%A9/a%20b.png"
    for bad in ("/data/local-files/?d=my%20pool%20%C3%A9/../../etc/passwd", "/data/local-files/?d=other/a.png",
                "/data/upload/1/a.png", "/data/local-files/?d=../a.png"):
        assert urls.path(bad) is None, bad


def test_label_config_escapes_class_names_and_follows_new_classes(tmp_path, project, pool):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(label_config(["cat & dog", 'say "hi"', "<b>"]))
    assert [c.get("value") for c in root.iter("Choice")] == ["cat & dog", 'say "hi"', "<b>"]
    assert root.find("Choices").get("name") == "choice" and root.find("Image").get("value") == "$image"
    names = sorted(pool[1])
    write_csv(tmp_path / "new.csv", ["path", "label"], [(names[7], "blurry")])
    assert run_cli("al-import", str(project.root), str(tmp_path / "new.csv"), "--add-classes").returncode == 0
    values = [c.get("value") for c in ET.parse(project.label_config_xml).getroot().iter("Choice")]
    assert values == CLASSES + ["blurry"]


def test_symlinks_are_one_pool_entry(tmp_path, pool):
    pool_dir, truth = pool
    linked = tmp_path / "linked"
    shutil.copytree(pool_dir, linked)
    first = sorted(truth)[0]
    os.symlink(linked / first, linked / "zz-link.png")
    p = Project.create(tmp_path / "p", pool=linked, classes=CLASSES)
    assert "zz-link.png" not in p.pool_paths() and len(p.pool_paths()) == len(truth)
    write_csv(tmp_path / "l.csv", ["path", "label"], [("zz-link.png", "1")])
    res = run_cli("al-import", str(p.root), str(tmp_path / "l.csv"))
    assert res.returncode == 2 and "not in the pool" in res.stderr


def test_al_add_grows_the_pool_and_deleted_images_are_skipped(tmp_path, pool):
    pool_dir, truth = pool
    mine = tmp_path / "mine"
    shutil.copytree(pool_dir, mine)
    p = Project.create(tmp_path / "p", pool=mine, classes=CLASSES, image_size=64)
    names = sorted(truth)
    (mine / "new").mkdir()
    shutil.copy(mine / names[0], mine / "new" / "copy.png")  # a copy, not a link: a new image
    os.symlink(mine / names[1], mine / "new" / "link.png")  # a link to a pool image: left out
    res = run_cli("al-add", str(p.root), str(mine / "new"))
    assert res.returncode == 0 and "added 1 images" in res.stdout and "links to pool files" in res.stdout, res.stdout
    rows = read_csv(p.pool_csv)
    assert rows[-1] == {"id": str(len(truth)), "path": "new/copy.png"}
    assert run_cli("al-add", str(p.root)).stdout.startswith("added 0 images")  # idempotent
    res = run_cli("al-add", str(p.root), str(tmp_path))  # outside the pool folder
    _one_line_error(res, "outside the pool folder")
    (mine / names[2]).unlink()  # deleted between rounds: left out with a warning, no crash
    res = run_cli("al-round", str(p.root), "--batch", "3", "--strategy", "random")
    assert res.returncode == 0, res.stderr
    assert "gone from disk" in res.stderr
    metrics = json.loads((p.round_dir(1) / "metrics.json").read_text())
    assert metrics["pool"] == len(truth)  # + 1 new - 1 deleted


def test_ls_root_must_contain_the_pool(tmp_path, pool):
    res = run_cli("al-init", str(tmp_path / "p"), "--pool", str(pool[0]), "--ls-root", str(tmp_path / "elsewhere"))
    _one_line_error(res, "does not contain the pool")
    assert not (tmp_path / "p" / "project.yaml").exists()
    res = run_cli("al-init", str(tmp_path / "p"), "--pool", str(pool[0]), "--classes", "0,1")
    assert res.returncode == 0 and "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" + str(pool[0].parent) in res.stdout


def test_create_only_creates_and_seed_labels_are_a_separate_import(tmp_path, pool):
    from tlkit.active.labels import import_seed_labels

    pool_dir, truth = pool
    names = sorted(truth)[:4]
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, truth[n]) for n in names])
    p = Project.create(tmp_path / "p", pool=pool_dir)
    assert p.labels() == {} and p.config.classes == ()
    report = import_seed_labels(p, tmp_path / "seed.csv")  # a project without classes takes the file's
    assert report.added == 4 and set(p.config.classes) == {truth[n] for n in names}
    assert p.labels() == {n: truth[n] for n in names} and Project.open(p.root).config.classes == p.config.classes
