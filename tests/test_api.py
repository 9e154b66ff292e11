"""The public Python API (``tlkit.*``): light to import, and a notebook-style session end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

# A notebook user's session, written with tlkit.* names only: features, a fine-tune, its
# evaluation and predictions, and three active-learning rounds labeled by a script (the class
# folder each image came from). It prints one JSON line with what the test checks.
SESSION = """
import json, sys
from pathlib import Path

import tlkit

assert "torch" not in sys.modules, "import tlkit loaded torch"
digits, work = Path(sys.argv[1]), Path(sys.argv[2])

feats = tlkit.extract(digits, work / "feats", backbone="test_resnet", pretrained=False, image_size=32,
                      device="cpu", engine="torch")
run = tlkit.finetune(digits, work / "run", backbone="test_resnet", pretrained=False, epochs=1, image_size=32,
                     batch_size=16, device="cpu", tensorboard=False, workers=0)
metrics = tlkit.evaluate(work / "run", digits, device="cpu", engine="torch", workers=0)
pred = tlkit.predict(work / "run", digits, out=work / "pred.csv", topk=2, device="cpu", engine="torch", workers=0)
predictor = tlkit.load_run(work / "run", device="cpu", engine="torch")
probs = predictor.predict_files(sorted(digits.rglob("*.png"))[:4])

project = tlkit.init_project(work / "proj", pool=digits, classes=[str(d) for d in range(10)], image_size=64)
rounds = []
for _ in range(3):
    query = project.query(8, strategy="auto")
    report = project.teach({pick.path: Path(pick.path).parts[0] for pick in query})  # the scripted labeler
    rounds.append({"round": query.round, "picks": query.paths, "pending": query.pending,
                   "files": [str(p.file) for p in query], "added": report.added,
                   "tasks": query.labelstudio_tasks.is_file()})
again = tlkit.Project(work / "proj")
status = again.status()
replay = again.simulate(digits, work / "replay", strategies=["random", "margin"], start=8, batch=4, rounds=2, seeds=1)
compare = tlkit.simulate(work / "feats", work / "feats", work / "sim", strategies=["random", "margin"], start=10,
                         batch=5, rounds=2, seeds=1)
print(json.dumps({
    "feats": [feats.count, feats.dim], "classes": list(run.classes), "epochs": len(run.history),
    "accuracy": metrics["accuracy"], "n": metrics["n"], "pred": [pred.count, str(pred.out)],
    "probs": [list(map(float, row)) for row in probs], "rounds": rounds, "labels": again.labels,
    "status": status.to_dict(), "replay": [replay.best, sorted(replay.aubc), replay.result.budgets,
                                          str(replay.files["curves"])],
    "compare": [compare.best, sorted(compare.aubc), compare.result.budgets],
}))
"""


def test_import_is_light_and_lists_the_api():
    code = ("import sys, tlkit; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules; "
            "tlkit.Project; tlkit.finetune; tlkit.Query; assert 'torch' not in sys.modules; print(tlkit.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    for name in ("extract", "finetune", "evaluate", "predict", "load_run", "Project", "init_project", "simulate"):
        assert f"'{name}'" in out


def test_extract_is_the_api_function_whatever_is_imported():
    import tlkit
    import tlkit.api
    import tlkit.features.extract  # the pipeline's module: importing it leaves tlkit.extract alone

    assert tlkit.extract is tlkit.api.extract and callable(tlkit.extract)
    assert tlkit.features.extract.extract_features is not None
    with pytest.raises(tlkit.TlkitError, match="unknown --decode"):
        tlkit.extract("nowhere", "out", decode="gpu")


@pytest.mark.slow
def test_notebook_session(digits_dir, tmp_path):
    script = tmp_path / "session.py"
    script.write_text(textwrap.dedent(SESSION), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), str(digits_dir), str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    n_images = len(list(digits_dir.rglob("*.png")))
    assert got["feats"][0] == n_images and got["feats"][1] > 0
    assert got["classes"] == [str(d) for d in range(10)] and got["epochs"] == 1
    assert got["n"] == n_images and 0.0 <= got["accuracy"] <= 1.0
    assert got["pred"][0] == n_images and Path(got["pred"][1]).is_file()
    assert len(got["probs"]) == 4 and all(abs(sum(row) - 1) < 1e-3 for row in got["probs"])
    rounds = got["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(len(r["picks"]) == 8 and r["added"] == 8 and not r["pending"] and r["tasks"] for r in rounds)
    assert all(Path(f).is_file() for r in rounds for f in r["files"])
    picked = [p for r in rounds for p in r["picks"]]
    assert len(set(picked)) == 24  # no image asked twice
    # the labels the script taught are the folder names, and the project (read fresh) holds all of them
    assert got["labels"] == {p: Path(p).parts[0] for p in picked}
    status = got["status"]
    assert status["labeled"] == 24 and status["pending"] == 0 and [r["round"] for r in status["rounds"]] == [1, 2, 3]
    # strategies replayed on the project's 24 labels, and compared on the extracted features
    best, names, budgets, curves = got["replay"]
    assert names == ["margin", "random"] and best in names and budgets == [8, 12, 16] and Path(curves).is_file()
    best, names, budgets = got["compare"]
    assert names == ["margin", "random"] and best in names and budgets == [10, 15, 20]


def test_teach_takes_a_mapping_a_dataframe_and_a_file(digits_dir, tmp_path):
    import tlkit

    project = tlkit.Project.init(tmp_path / "proj", pool=digits_dir, classes=[str(d) for d in range(10)])
    files = sorted(p.relative_to(digits_dir).as_posix() for p in digits_dir.rglob("*.png"))
    rep = project.teach({files[0]: files[0].split("/")[0], digits_dir / files[1]: files[1].split("/")[0]})
    assert rep.added == 2 and project.labels == {f: f.split("/")[0] for f in files[:2]}
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in files[2:4]), encoding="utf-8")
    assert project.teach(csv).added == 2 and len(project.labels) == 4
    with pytest.raises(tlkit.TlkitError, match="already have another label"):
        project.teach({files[0]: "9" if not files[0].startswith("9") else "8"})
    with pytest.raises(tlkit.TlkitError, match="not a project class|not project classes|unknown class"):
        project.teach({files[5]: "cat"})
    with pytest.raises(tlkit.TlkitError, match="teach\\(\\) takes"):
        project.teach([files[5]])
    assert len(project.labels) == 4  # failed imports changed nothing
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"path": files[4:6], "label": [f.split("/")[0] for f in files[4:6]]})
    assert project.teach(frame).added == 2 and len(project.labels) == 6
    with pytest.raises(tlkit.TlkitError, match="columns path and label"):
        project.teach(pd.DataFrame({"file": files[6:7], "label": ["0"]}))


def test_project_errors_are_one_line(tmp_path):
    import tlkit

    with pytest.raises(tlkit.TlkitError, match="not a tlkit project"):
        tlkit.Project(tmp_path)
