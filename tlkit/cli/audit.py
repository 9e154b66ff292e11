"""`tlkit audit`: label issues, near-duplicates, train/test leaks and outliers, with contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tlkit.cli._app import PANEL_ACTIVE, app, console, progress_bar, rate_callback, setup_logging, user_errors
from tlkit.core.constants import AUDIT_DUPLICATE_COSINE as DEFAULT_THRESHOLD, DEFAULT_BACKBONE


@app.command("audit", rich_help_panel=PANEL_ACTIVE)
def audit_cmd(
    project: Optional[Path] = typer.Argument(None, help="Project folder to audit (its whole pool and labels)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labeled images (class folders / path,label manifest) "
                                        "or a `tlkit extract` folder with labels, instead of a project."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default for a project: PROJECT/audit)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Test images (or extract folder): list those that "
                                        "duplicate audited images (leaks)."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", "-b", help="Backbone that embeds --data/--test "
                                 "image folders (a project uses its own)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local backbone weights (.safetensors/.pth)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size for embedding "
                                             "(default: the backbone's)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help="Embedding cosine two near-duplicates "
                                    "must reach (their thumbnails must also match)."),
    folds: int = typer.Option(5, "--folds", min=2, help="k of the out-of-fold head probabilities."),
    pred_probs: Optional[Path] = typer.Option(None, "--pred-probs", help="CSV path,<class>... of cross-validated "
                                              "probabilities (e.g. of a fine-tuned run) to use instead of the head's."),
    propagate: bool = typer.Option(False, "--propagate", help="(project) Write propagated.csv: the label of a "
                                   "duplicate group's labeled members for its unlabeled ones (for al-import)."),
    sheets: bool = typer.Option(True, "--sheets/--no-sheets", help="Draw contact sheets (PNG) of each list."),
    device: str = typer.Option("auto", "--device", help="Device for embedding: auto | cpu | cuda."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Find label errors, near-duplicates, train/test leaks and outliers; write CSVs, contact sheets, index.html."""
    from tlkit.audit import run_audit

    setup_logging(verbose)
    with user_errors(), progress_bar() as bar:
        task = bar.add_task("embed", total=None, rate="")
        res = run_audit(data, project=project, out=out, test=test, backbone=backbone,
                        weights=str(weights) if weights else None, image_size=image_size, device=device, folds=folds,
                        threshold=threshold, pred_probs=pred_probs, propagate=propagate, sheets=sheets,
                        progress=rate_callback(bar, task))
    console.print(f"audited {res.images:,} images: {len(res.label_issues)} label issues, {len(res.groups)} duplicate "
                  f"groups ({sum(len(g) for g in res.groups)} images), {len(res.outliers)} outliers"
                  + (f", {len(res.leaks)} leaks" if "leaks" in res.files else ""))
    for row in res.label_issues[:5]:
        console.print(f"  {escape(row['path'])}: {escape(row['given'])} -> {escape(row['suggested'])} "
                      f"(score {row['score']:.3f})")
    for note in res.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if res.propagated:
        console.print(f"propagated {len(res.propagated)} labels: tlkit al-import {escape(str(project))} "
                      f"{escape(str(res.files['propagated']))}")
    console.print(f"report: {escape(str(res.files['html']))}")
