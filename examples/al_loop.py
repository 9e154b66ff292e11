"""Drive the active-learning loop from Python with a scripted labeler.

A real workflow replaces `label_with_truth` by your labeling tool: import
`rounds/NNNN/labelstudio.json` into Label Studio, label, export, and call `import_labels` on the
export. Everything in between lives in the project folder, so each step can run on another day.

    python examples/al_loop.py [WORKDIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tlkit.active.labels import import_labels
from tlkit.active.project import Project
from tlkit.active.round import run_round
from tlkit.core.io import write_csv
from tlkit.demo import make_digits_folder


def make_pool(root: Path) -> dict[str, str]:
    """A flat folder of unlabeled digit images; returns the hidden truth (file -> digit)."""
    src = make_digits_folder(root / "src", per_class=40)
    pool = root / "pool"
    pool.mkdir(parents=True)
    truth = {}
    for f in sorted(src.rglob("*.png")):
        shutil.copy(f, pool / f.name)
        truth[f.name] = f.parent.name
    return truth


def label_with_truth(project: Project, query: list[dict], truth: dict[str, str], path: Path) -> None:
    write_csv(path, ["path", "label"], [(row["path"], truth[row["path"]]) for row in query])
    report = import_labels(project, path)
    print(f"  imported {report.added} labels")


def main(workdir: Path) -> None:
    truth = make_pool(workdir)
    project = Project.create(workdir / "project", pool=workdir / "pool", classes=[str(d) for d in range(10)],
                             image_size=96)
    for _ in range(5):
        res = run_round(project.root, batch=20, strategy="auto")
        val = res.validation.accuracy
        print(f"round {res.round}: {res.metrics['labeled']} labeled, validation "
              f"{'n/a' if val is None else f'{val:.3f}'}, selected {len(res.query)} -> {res.dir / 'query.csv'}")
        label_with_truth(project, res.query, truth, workdir / f"labels-{res.round}.csv")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
