"""The labeling round trip against a real Label Studio server (tests/labelstudio_server.py).

pool -> al-init -> al-round -> import the task file unchanged -> annotate through the REST API (a
skip, a label that disagrees with the prediction, several annotators) -> export as JSON, JSON_MIN
and CSV -> al-import -> next round; and pool growth with al-add. Everything goes through the CLI,
as a user would run it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tlkit.active.labelstudio import MODEL_VERSION
from tlkit.core.io import read_csv, write_csv

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

CLASSES = [str(d) for d in range(10)]
ODD_NAMES = {0: "my digit é {}", 7: "ünïcode (copy) {}"}  # names with spaces and unicode


@pytest.fixture(scope="module")
def pool(label_studio) -> tuple[Path, dict[str, str]]:
    """120 real digits in a pool folder (with spaces and unicode in names) under Label Studio's root."""
    from tlkit.demo import make_digits_folder

    src = make_digits_folder(label_studio.document_root.parent / "src", per_class=12, seed=3)
    pool = label_studio.document_root / "digit pool é"
    pool.mkdir()
    truth = {}
    for i, f in enumerate(sorted(src.rglob("*.png"))):
        name = ODD_NAMES.get(i % 10, "{}").format(f.name)
        shutil.copy(f, pool / name)
        truth[name] = f.parent.name
    return pool, truth


def _ok(res) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _ls_project(ls, project: Path, pool_dir: Path) -> int:
    """A Label Studio project set up as README says: tlkit's label config + Local Storage on the pool."""
    pid = ls.api("POST", "/api/projects", {"title": "tlkit digits", "label_config": (project / "label_config.xml").read_text()})["id"]
    ls.api("POST", "/api/storages/localfiles", {"project": pid, "path": str(pool_dir), "title": "pool", "use_blob_urls": False})
    return pid


def _import(ls, pid: int, file: Path) -> None:
    ls.api("POST", f"/api/projects/{pid}/import", raw=file.read_bytes())  # the file, unchanged


def _tasks(ls, pid: int, ordering: str = "tasks:predictions_score") -> list[dict]:
    query = json.dumps({"ordering": [ordering]})
    return ls.api("GET", "/api/tasks", params={"project": pid, "query": query, "fields": "all", "page_size": 1000})["tasks"]


def _annotate(ls, task_id: int, label: str | None, **extra) -> None:
    result = [] if label is None else [{"from_name": "choice", "to_name": "image", "type": "choices",
                                         "value": {"choices": [label]}}]
    ls.api("POST", f"/api/tasks/{task_id}/annotations", {"result": result, **extra})


def _labels(project: Path) -> dict[str, str]:
    return {r["path"]: r["label"] for r in read_csv(project / "labels.csv")}


def _check_round_in_label_studio(ls, pid: int, project: Path, round_no: int) -> list[dict]:
    """Import a round's task file; its images load, predictions show, ascending score = tlkit's rank."""
    query = read_csv(project / "rounds" / f"{round_no:04d}" / "query.csv")
    _import(ls, pid, project / "rounds" / f"{round_no:04d}" / "labelstudio.json")
    assert ls.api("GET", f"/api/projects/{pid}")["model_version"] == MODEL_VERSION
    tasks = [t for t in _tasks(ls, pid) if t["data"].get("tlkit_round") == round_no]
    assert [t["data"]["tlkit_rank"] for t in tasks] == list(range(1, len(query) + 1)), "ascending score != rank"
    assert [t["data"]["tlkit_path"] for t in tasks] == [r["path"] for r in query]
    for t, row in zip(tasks, query):
        assert t["predictions_score"] is not None, f"round {round_no}: prediction not shown"
        pred = t["predictions"][0]["result"]
        assert pred and pred[0]["value"]["choices"] == [row["predicted"]]
        status, body = ls.request("GET", t["data"]["image"])
        assert status == 200, (t["data"]["image"], status)
        assert body == (ls.document_root / "digit pool é" / row["path"]).read_bytes()
    return tasks


def test_round_trip_with_a_real_label_studio(label_studio, pool, tmp_path):
    ls = label_studio
    pool_dir, truth = pool
    names = sorted(truth)
    seed = [n for c in CLASSES for n in names if truth[n] == c][::6]  # 2 per class
    write_csv(tmp_path / "seed.csv", ["path", "label"], [(n, truth[n]) for n in seed])
    project = tmp_path / "proj"
    _ok(run_cli("al-init", str(project), "--pool", str(pool_dir), "--classes", ",".join(CLASSES),
                "--labels", str(tmp_path / "seed.csv"), "--image-size", "64"))
    pid = _ls_project(ls, project, pool_dir)

    # round 1 (auto: typicality at this budget): order, predictions, images
    _ok(run_cli("al-round", str(project), "--batch", "8"))
    tasks = _check_round_in_label_studio(ls, pid, project, 1)
    ls.api("PATCH", f"/api/projects/{pid}", {"sampling": "Uncertainty sampling"})
    assert ls.api("GET", f"/api/projects/{pid}/next")["data"]["tlkit_rank"] == 1  # the labeling queue

    # annotate: a skip, a label that disagrees with the prediction, two annotators (agreeing; one
    # ground truth; disagreeing), the rest as the truth says
    other = ls.api("POST", "/api/users", {"email": "ann2@example.com", "username": "ann2", "password": "ann2-pass-12"})["id"]
    path = [t["data"]["tlkit_path"] for t in tasks]
    predicted = [t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks]
    wrong = next(c for c in CLASSES if c != predicted[1])
    _annotate(ls, tasks[0]["id"], None, was_cancelled=True)
    _annotate(ls, tasks[1]["id"], wrong)
    _annotate(ls, tasks[2]["id"], truth[path[2]])
    _annotate(ls, tasks[2]["id"], truth[path[2]], completed_by=other)
    gt, not_gt = truth[path[3]], next(c for c in CLASSES if c != truth[path[3]])
    _annotate(ls, tasks[3]["id"], gt, ground_truth=True)
    _annotate(ls, tasks[3]["id"], not_gt, completed_by=other)
    first, latest = truth[path[4]], next(c for c in CLASSES if c != truth[path[4]])
    _annotate(ls, tasks[4]["id"], first)
    _annotate(ls, tasks[4]["id"], latest, completed_by=other)
    for t in tasks[5:]:
        _annotate(ls, t["id"], truth[t["data"]["tlkit_path"]])
    # a stray task: an image that is not in the pool, labeled in Label Studio
    stray = ls.document_root / "elsewhere"
    stray.mkdir()
    shutil.copy(pool_dir / names[0], stray / "stray.png")
    ls.api("POST", f"/api/projects/{pid}/import", [{"data": {"image": "/data/local-files/?d=elsewhere/stray.png"}}])
    stray_task = [t for t in _tasks(ls, pid, "tasks:id") if "stray" in t["data"]["image"]][0]
    _annotate(ls, stray_task["id"], "3")

    common = {p: truth[p] for p in seed} | {path[1]: wrong, path[2]: truth[path[2]]}
    common |= {p: truth[p] for p in path[5:]}
    expected = {
        "JSON": common | {path[0]: "__skip__", path[3]: gt},
        "JSON_MIN": common,  # leaves out cancelled annotations and the ground-truth flag
        "CSV": common,
    }
    for fmt, suffix in (("JSON", "json"), ("JSON_MIN", "json"), ("CSV", "csv")):
        status, body = ls.request("GET", f"/api/projects/{pid}/export", params={"exportType": fmt})
        assert status == 200, body[:300]
        export = tmp_path / f"export-{fmt}.{suffix}"
        export.write_bytes(body)
        copy = tmp_path / f"proj-{fmt}"
        shutil.copytree(project, copy)
        before = (copy / "labels.csv").read_bytes()
        res = run_cli("al-import", str(copy), str(export))  # the stray task stops the import, naming the fix
        assert res.returncode == 2 and "stray.png" in res.stderr and "--skip-unknown" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and (copy / "labels.csv").read_bytes() == before
        out = _ok(run_cli("al-import", str(copy), str(export), "--skip-unknown"))
        assert "skipped 1 images that are not in the pool" in out and "stray.png" in out
        assert "annotators disagree" in out and path[4] in out
        assert _labels(copy) == expected[fmt], fmt
        # images of the query still unlabeled are named, with the export format's reason and the fix
        assert "queried images are still unlabeled" in out, out
        if fmt != "JSON":  # the skipped task is missing from these formats
            assert f"{fmt} export leaves out skipped" in out and path[0] in out and "export as JSON" in out, out
    # --resolve latest takes the most recent of disagreeing annotations
    _ok(run_cli("al-import", str(tmp_path / "proj-CSV"), str(tmp_path / "export-CSV.csv"), "--skip-unknown",
                "--resolve", "latest"))
    assert _labels(tmp_path / "proj-CSV")[path[4]] == latest

    # round 2 with another strategy: predictions still shown (one model_version), order = rank
    _ok(run_cli("al-import", str(project), str(tmp_path / "export-JSON.json"), "--skip-unknown"))
    _ok(run_cli("al-round", str(project), "--batch", "6", "--strategy", "margin", "--new"))
    _check_round_in_label_studio(ls, pid, project, 2)

    # pool growth: new images are embedded (only they), and a round picks one of them
    from tlkit.demo import make_photo_crops_folder

    photos = make_photo_crops_folder(tmp_path / "photos", per_class=1, photos=("chelsea", "coffee", "rocket"))
    for i, f in enumerate(sorted(photos.rglob("*.jpg"))):
        shutil.copy(f, pool_dir / f"new photo {i}.jpg")
    out = _ok(run_cli("al-add", str(project)))
    assert "added 3 images" in out
    _ok(run_cli("al-round", str(project), "--batch", "3", "--strategy", "coreset", "--new"))
    meta = json.loads(next((project / "cache").glob("*/meta.json")).read_text())
    assert meta["reused"] == len(truth) and meta["count"] == len(truth) + 3, meta
    query = read_csv(project / "rounds" / "0003" / "query.csv")
    assert any(r["path"].startswith("new photo") for r in query), query
    _check_round_in_label_studio(ls, pid, project, 3)


def test_csv_export_reader_matches_label_studio_columns(label_studio, pool, tmp_path):
    """A Label Studio CSV export with the project's columns parses (one row per annotation)."""
    pool_dir, truth = pool
    project = tmp_path / "p"
    _ok(run_cli("al-init", str(project), "--pool", str(pool_dir), "--classes", ",".join(CLASSES), "--image-size", "64"))
    pid = _ls_project(label_studio, project, pool_dir)
    _ok(run_cli("al-round", str(project), "--batch", "4", "--strategy", "random"))
    _import(label_studio, pid, project / "rounds" / "0001" / "labelstudio.json")
    tasks = _tasks(label_studio, pid)
    assert all(t["predictions"][0]["result"] == [] for t in tasks)  # cold start: no model, order only
    for t in tasks:
        _annotate(label_studio, t["id"], truth[t["data"]["tlkit_path"]])
    status, body = label_studio.request("GET", f"/api/projects/{pid}/export", params={"exportType": "CSV"})
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert {"image", "choice", "tlkit_path", "annotation_id"} <= set(rows[0])
    (tmp_path / "e.csv").write_bytes(body)
    _ok(run_cli("al-import", str(project), str(tmp_path / "e.csv")))
    assert _labels(project) == {t["data"]["tlkit_path"]: truth[t["data"]["tlkit_path"]] for t in tasks}
    rows[0]["choice"] = "cat"  # a class the project does not have
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = (project / "labels.csv").read_bytes()
    res = run_cli("al-import", str(project), str(bad), "--overwrite")
    assert res.returncode == 2 and "unknown classes" in res.stderr and (project / "labels.csv").read_bytes() == before


# ---------------------------------------------------------------------------------- multi-label (#30)


@pytest.fixture(scope="module")
def mosaic_pool(label_studio) -> tuple[Path, dict[str, set[str]]]:
    """48 real 2x2 photo mosaics (labels: the photos in each) in a pool folder under Label Studio's root."""
    from tests.conftest import make_mosaics

    pool = label_studio.document_root / "mosaic pool é"
    return pool, make_mosaics(pool, 48, seed=11)


def _annotate_set(ls, task_id: int, labels: list[str] | None, **extra) -> None:
    """A multi-choice annotation: ``labels`` ticked (``[]``: none ticked); ``None``: skipped (cancelled)."""
    result = [] if not labels else [{"from_name": "choice", "to_name": "image", "type": "choices",
                                     "value": {"choices": labels}}]
    ls.api("POST", f"/api/tasks/{task_id}/annotations", {"result": result, "was_cancelled": labels is None, **extra})


def _label_sets(project: Path) -> dict[str, str]:
    return {r["path"]: r["labels"] for r in read_csv(project / "labels.csv")}


def test_multilabel_round_trip_with_a_real_label_studio(label_studio, mosaic_pool, tmp_path):
    from tests.conftest import MOSAIC_PHOTOS

    ls = label_studio
    pool_dir, truth = mosaic_pool
    classes = list(MOSAIC_PHOTOS)
    names = sorted(truth)
    text = {n: ";".join(sorted(truth[n])) for n in names}
    seed = names[:16]
    write_csv(tmp_path / "seed.csv", ["path", "labels"], [(n, text[n]) for n in seed])
    project = tmp_path / "proj"
    _ok(run_cli("al-init", str(project), "--pool", str(pool_dir), "--classes", ",".join(classes), "--multi-label",
                "--labels", str(tmp_path / "seed.csv"), "--image-size", "64"))
    config = (project / "label_config.xml").read_text()
    assert 'choice="multiple"' in config
    pid = _ls_project(ls, project, pool_dir)
    assert ls.api("GET", f"/api/projects/{pid}")["parsed_label_config"]["choice"]["type"] == "Choices"

    _ok(run_cli("al-round", str(project), "--batch", "10", "--strategy", "mean-entropy"))
    query = read_csv(project / "rounds" / "0001" / "query.csv")
    _import(ls, pid, project / "rounds" / "0001" / "labelstudio.json")
    tasks = _tasks(ls, pid)
    assert [t["data"]["tlkit_rank"] for t in tasks] == list(range(1, 11)), "ascending score != rank"
    assert [t["data"]["tlkit_path"] for t in tasks] == [r["path"] for r in query]
    shown = 0
    for t, row in zip(tasks, query):  # predictions visible: the predicted set, with its probability
        assert t["predictions_score"] is not None
        result = t["predictions"][0]["result"]
        want = [c for c in row["predicted"].split(";") if c]
        assert (result[0]["value"]["choices"] if result else []) == want
        if result:
            shown += 1
            assert result[0]["score"] == pytest.approx(float(row["confidence"]))
        status, body = ls.request("GET", t["data"]["image"])
        assert status == 200 and body == (pool_dir / row["path"]).read_bytes()
    assert shown >= 5, "most predicted sets hold a class"

    # annotate: two annotators agreeing on one set in another order, an empty set, a skip, a
    # disagreement, a single class, the rest as the truth
    path = [t["data"]["tlkit_path"] for t in tasks]
    two = sorted(set(classes) - {"coffee"})[:2]
    _annotate_set(ls, tasks[0]["id"], two)
    _annotate_set(ls, tasks[0]["id"], two[::-1])
    _annotate_set(ls, tasks[1]["id"], [])
    _annotate_set(ls, tasks[2]["id"], None)
    _annotate_set(ls, tasks[3]["id"], ["coffee"])
    _annotate_set(ls, tasks[3]["id"], ["coffee", "rocket"])
    _annotate_set(ls, tasks[4]["id"], ["astronaut"])
    for t in tasks[5:]:
        _annotate_set(ls, t["id"], sorted(truth[t["data"]["tlkit_path"]]))
    expected = {n: text[n] for n in seed}
    expected.update({path[0]: ";".join(sorted(two)), path[1]: "", path[4]: "astronaut"})
    expected.update({p: text[p] for p in path[5:]})
    with_skip = {**expected, path[2]: "__skip__"}

    for fmt in ("JSON", "JSON_MIN", "CSV"):
        status, body = ls.request("GET", f"/api/projects/{pid}/export", params={"exportType": fmt})
        assert status == 200, (fmt, body[:200])
        export = tmp_path / f"export-{fmt}.{'csv' if fmt == 'CSV' else 'json'}"
        export.write_bytes(body)
        copy = tmp_path / f"proj-{fmt}"
        shutil.copytree(project, copy)
        out = _ok(run_cli("al-import", str(copy), str(export)))
        assert "not imported: 1 images whose annotators disagree" in out, out
        assert _label_sets(copy) == (with_skip if fmt == "JSON" else expected), fmt
    # the disagreement settles by --resolve latest (the second annotation: coffee;rocket)
    _ok(run_cli("al-import", str(tmp_path / "proj-JSON"), str(tmp_path / "export-JSON.json"), "--resolve", "latest"))
    assert _label_sets(tmp_path / "proj-JSON")[path[3]] == "coffee;rocket"

    # the next round learns from the imported sets and its tasks show again
    _ok(run_cli("al-import", str(project), str(tmp_path / "export-JSON.json")))
    _ok(run_cli("al-round", str(project), "--batch", "6", "--new"))
    _import(ls, pid, project / "rounds" / "0002" / "labelstudio.json")
    second = [t for t in _tasks(ls, pid) if t["data"].get("tlkit_round") == 2]
    assert [t["data"]["tlkit_rank"] for t in second] == list(range(1, 7))
    assert all(t["predictions_score"] is not None for t in second)
