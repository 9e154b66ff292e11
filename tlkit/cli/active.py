"""`tlkit al-init`, `al-round`, `al-import`, `al-status`, `strategies`: the labeling loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.active.labelstudio import DEFAULT_PREFIX
from tlkit.active.strategies import DEFAULT_STRATEGY, list_strategies
from tlkit.cli._app import (
    PANEL_ACTIVE, app, console, progress_bar, rate_callback, setup_logging, training_process,
    user_errors,
)
from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.engines import ENGINE_HELP

STRATEGY_HELP = "Selection strategy: " + ", ".join(s.name for s in list_strategies()) + "."


@app.command("al-init", rich_help_panel=PANEL_ACTIVE)
def al_init_cmd(
    project: Path = typer.Argument(..., help="Project folder to create."),
    pool: Path = typer.Option(..., "--pool", help="Folder (or CSV manifest) of the images to label."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Seed labels: CSV path,label or Label Studio export."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated class names."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", "-b",
                                 help="Backbone that embeds the pool (any timm name, or tv:<name>)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local weights file for the backbone."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16,
                                             help="Square input size (default: the backbone's own)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Finetune recipe for --train finetune rounds."),
    ls_root: Optional[Path] = typer.Option(None, "--ls-root", help="Label Studio's document root "
                                           "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); default: the pool's parent."),
    prefix: str = typer.Option(DEFAULT_PREFIX, "--ls-prefix",
                               help="Image URL prefix before the path relative to --ls-root."),
    seed: int = typer.Option(0, "--seed", help="Seed of the rounds' random choices."),
    embedding_dtype: str = typer.Option("float32", "--embedding-dtype",
                                        help="Cache the pool's embeddings as float32 or float16 (half the memory for big pools)."),
    multi_label: bool = typer.Option(False, "--multi-label", help="Each image gets a set of classes (maybe none): "
                                     "labels.csv path,labels with classes joined by ';', a choice=\"multiple\" "
                                     "Label Studio config, one-vs-rest heads."),
) -> None:
    """Create an active-learning project over a pool of images."""
    from tlkit.active.labels import import_seed_labels
    from tlkit.active.labelstudio import setup_steps
    from tlkit.active.project import Project
    from tlkit.core.constants import DEFAULT_TASK, MULTILABEL

    setup_logging()
    with user_errors():
        p = Project.create(project, pool=pool, classes=tuple((classes or "").split(",")),
                           backbone=backbone, weights=str(weights) if weights else None, image_size=image_size,
                           label_studio_prefix=prefix, label_studio_root=ls_root, recipe=recipe, seed=seed,
                           embedding_dtype=embedding_dtype, task=MULTILABEL if multi_label else DEFAULT_TASK)
        if labels is not None:
            import_seed_labels(p, labels)
    console.print(f"created {'multi-label ' if p.multilabel else ''}{escape(str(p.root))}: "
                  f"{len(p.pool_paths()):,} pool images, "
                  f"{len(p.labels())} labels, classes: {', '.join(p.config.classes) or '(from the first labels)'}")
    console.print("Label Studio setup:")
    for i, step in enumerate(setup_steps(p.image_urls(), p.label_config_xml), start=1):
        console.print(f"  {i}. {escape(step)}", soft_wrap=True)
    console.print(f"next: tlkit al-round {escape(str(project))}")


@app.command("al-add", rich_help_panel=PANEL_ACTIVE)
def al_add_cmd(
    project: Path = typer.Argument(..., help="Project folder."),
    source: Optional[Path] = typer.Argument(None, help="Folder or CSV manifest of new images inside the pool "
                                            "folder; default: rescan the whole pool folder."),
) -> None:
    """Add new images to the pool; the next round embeds only them."""
    from tlkit.active.pool import add_images

    setup_logging()
    with user_errors():
        up = add_images(project, source)
    console.print(f"added {len(up.added)} images (already in the pool: {up.known}); pool: {up.total:,}")
    if up.duplicates:
        console.print(f"[yellow]left out {len(up.duplicates)} links to pool files[/]: {escape(up.duplicates[0])}")
    if up.missing:
        console.print(f"[yellow]{len(up.missing)} pool images are gone from disk[/] (rounds leave them out), "
                      f"e.g. {escape(up.missing[0])}")


@app.command("al-round", rich_help_panel=PANEL_ACTIVE)
def al_round_cmd(
    project: Path = typer.Argument(..., help="Project folder."),
    batch: int = typer.Option(20, "--batch", "-n", min=1, help="Images to select for labeling."),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy", "-s", help=STRATEGY_HELP),
    train: str = typer.Option("head", "--train", help="head (frozen backbone + linear head) | finetune | auto (the "
                              "round picks the learner: the head the cross-validation prefers, or a fine-tune round "
                              "on a GPU once every class has 300 labels; metrics.json and al-status say why)"),
    max_pool: Optional[int] = typer.Option(None, "--max-pool", min=1, help="Score a random subset of the pool."),
    new: bool = typer.Option(False, "--new", help="Start a new round even if the last query awaits labels."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs for --train finetune."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one) | cpu | cuda | cuda:N."),
    engine: Optional[str] = typer.Option(None, "--engine", help=ENGINE_HELP + " Default: project.yaml's engine."),
    ssl: Optional[str] = typer.Option(None, "--ssl", help="How the unlabeled pool teaches the learner (pseudo-labels "
                                      "never enter labels.csv). Head rounds: self-training | off; finetune rounds: "
                                      "fixmatch (consistency on the pool images) | off. Default: project.yaml's ssl "
                                      "(self-training; finetune rounds: off)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each step does."),
) -> None:
    """Train on the labels, score the pool, and write the next images to label."""
    from tlkit.active.round import run_round

    setup_logging(verbose)
    training_process()
    with user_errors(), progress_bar() as bar:
        task = bar.add_task("embed pool", total=None, rate="")
        res = run_round(project, batch=batch, strategy=strategy, train=train, max_pool=max_pool, new=new,
                        device=device, epochs=epochs, engine=engine, ssl=ssl, progress=rate_callback(bar, task))
        bar.remove_task(task)
    if res.pending:
        console.print(f"[yellow]round {res.round} still awaits {len(res.query)} labels[/] "
                      f"(import them with `tlkit al-import`, or pass --new):")
    table = Table(title=f"round {res.round}: {len(res.query)} images to label")
    for col in ("rank", "path", "score", "predicted", "confidence"):
        table.add_column(col)
    for row in res.query[:15]:
        table.add_row(str(row["rank"]), escape(row["path"]), str(row["score"]), row.get("predicted", ""),
                      str(row.get("confidence", "")))
    console.print(table)
    if len(res.query) > 15:
        console.print(f"... {len(res.query) - 15} more in {escape(str(res.dir / 'query.csv'))}")
    if not res.pending:
        m, val = res.metrics, res.validation.accuracy
        console.print(f"labeled {m['labeled']}, validation {'%.3f' % val if val is not None else 'n/a'}, "
                      f"selection {m['select_s']:.2f} s; files: {escape(str(res.dir))}/query.csv, labelstudio.json")


@app.command("al-import", rich_help_panel=PANEL_ACTIVE)
def al_import_cmd(
    project: Path = typer.Argument(..., help="Project folder."),
    file: Path = typer.Argument(..., help="CSV path,label (label __skip__ = unlabelable), or a Label Studio export "
                              "(JSON, JSON_MIN or CSV)."),
    add_classes: bool = typer.Option(False, "--add-classes", help="Accept labels that are not project classes yet."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow changing existing labels."),
    skip_unknown: bool = typer.Option(False, "--skip-unknown", help="Import the rest when some images are not in "
                                      "the pool (they are listed)."),
    resolve: str = typer.Option("agree", "--resolve", help="Disagreeing annotators: agree (not imported, listed), "
                                "majority, or latest. A ground-truth annotation always wins."),
) -> None:
    """Take labels back in: validated first, then merged atomically into labels.csv."""
    from tlkit.active.labels import import_labels
    from tlkit.active.project import Project

    setup_logging()
    with user_errors():
        rep = import_labels(Project.open(project), file, add_classes=add_classes, overwrite=overwrite,
                            skip_unknown=skip_unknown, resolve=resolve)
    console.print(f"added {rep.added}, relabeled {rep.relabeled}, unchanged {rep.unchanged}, "
                  f"marked unlabelable {rep.skipped_marked}"
                  + (f", new classes {rep.new_classes}" if rep.new_classes else ""))
    if rep.per_class:
        console.print("per class: " + ", ".join(f"{k}: {v}" for k, v in sorted(rep.per_class.items())))
    if rep.unknown:
        console.print(f"[yellow]skipped {len(rep.unknown)} images that are not in the pool[/]: "
                      + escape("; ".join(rep.unknown[:5])) + (" ..." if len(rep.unknown) > 5 else ""), soft_wrap=True)
    if rep.disagreements:
        console.print(f"[yellow]not imported: {len(rep.disagreements)} images whose annotators disagree[/] "
                      "(settle them in Label Studio, mark one ground truth, or pass --resolve majority|latest):",
                      soft_wrap=True)
        for d in rep.disagreements[:10]:
            console.print(f"  {escape(d)}", soft_wrap=True)
    if rep.pending_note:
        console.print(f"[yellow]note:[/] {escape(rep.pending_note)}", soft_wrap=True)


@app.command("al-status", rich_help_panel=PANEL_ACTIVE)
def al_status_cmd(
    project: Path = typer.Argument(..., help="Project folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Rounds, labels per class, pending queries, validation per round; writes learning_curve.png."""
    from tlkit.active.status import project_status

    setup_logging()
    with user_errors():
        st = project_status(project)
    if as_json:
        console.print_json(json.dumps(st.to_dict()))
        return
    console.print(f"[bold]{escape(str(st.root))}[/]: pool {st.pool:,}, labeled {st.labeled}, "
                  f"unlabelable {st.unlabelable}, pending {st.pending}" + (" (multi-label)" if st.task != "single" else ""))
    classes = Table(title="labels per class" if st.task == "single" else "labeled images with each class present")
    classes.add_column("class")
    classes.add_column("labeled", justify="right")
    for c, k in st.labeled_per_class.items():
        classes.add_row(escape(c), str(k))
    console.print(classes)
    rounds = Table(title="rounds")
    why = any(r.get("learner_reason") for r in st.rounds)  # some round ran with --train auto
    metric = "mAP" if any(r.get("val_metric") == "mAP" for r in st.rounds) else ""
    for col in ("round", "labeled", "selected", "strategy", "learner", "validation" + (f" {metric}" if metric else ""),
                "kappa", "seconds") + (("why this learner",) if why else ()):
        rounds.add_column(col)
    for r in st.rounds:
        val = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
        kappa = (r.get("stopping") or {}).get("kappa")
        learner = str(r["learner"]) + (f" ({r['pseudo_labels']} pseudo)" if r.get("pseudo_labels") else "")
        rounds.add_row(str(r["round"]), str(r["labeled"]), str(r["selected"]), str(r["strategy"]), learner,
                       val, "" if kappa is None else f"{kappa:.3f}", f"{r['seconds']:.1f}" if r["seconds"] is not None else "",
                       *((escape(_short_reason(r.get("learner_reason"))),) if why else ()))
    console.print(rounds)
    if st.stopping:
        console.print(f"[bold]stopping:[/] {escape(st.stopping)}")
    if st.curve_png:
        console.print(f"learning curve: {escape(str(st.curve_png))}")
    if st.imbalance:
        console.print(f"[yellow]hint:[/] {escape(st.imbalance)}")


def _short_reason(reason: str | None) -> str:
    """The learner choice's reason without its note on fine-tuning (the full line is in metrics.json)."""
    return (reason or "").split("; finetune:")[0]


@app.command("strategies", rich_help_panel=PANEL_ACTIVE)
def strategies_cmd() -> None:
    """List the active-learning selection strategies."""
    table = Table(title="strategies")
    for col in ("name", "needs", "tasks", "description"):
        table.add_column(col)
    for s in list_strategies():
        table.add_row(s.name + (" (default)" if s.name == DEFAULT_STRATEGY else ""), ", ".join(s.needs) or "-",
                      ", ".join(s.tasks), s.description)
    console.print(table)
