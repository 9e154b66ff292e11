"""`tlkit al-simulate`: compare active-learning strategies on labeled data (true labels as oracle)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import (
    PANEL_ACTIVE, app, console, progress_bar, setup_logging, training_process, user_errors,
)
from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.engines import ENGINE_HELP


@app.command("al-simulate", rich_help_panel=PANEL_ACTIVE)
def al_simulate_cmd(
    pool: Path = typer.Option(..., "--pool", help="Labeled images (class folders / manifest) or a `tlkit extract` folder."),
    test: Path = typer.Option(..., "--test", help="Held-out labeled images or extract folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: curves.csv, curves.png, summary.json."),
    strategies: str = typer.Option("random,margin,typiclust,auto", "--strategies", help="Comma-separated names."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", "-b", help="Backbone that embeds image folders (timm name or tv:<name>)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local backbone weights (.safetensors/.pth)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size for embedding (default: the backbone's)."),
    train: str = typer.Option("head", "--train", help="head (linear head on embeddings) | finetune (slow: trains each round)."),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Epochs per round with --train finetune."),
    start: int = typer.Option(10, "--start", min=1, help="Random labels before the first round."),
    batch: int = typer.Option(10, "--batch", min=1, help="Images labeled per round."),
    rounds: int = typer.Option(10, "--rounds", min=0, help="Rounds after the random start."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Repeats with different random starts (mean ± std)."),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
    ssl: Optional[str] = typer.Option(None, "--ssl", help="How the unlabeled pool teaches the learner. --train head: "
                                      "self-training (pseudo-labels; the default) | off. --train finetune: fixmatch "
                                      "(consistency on the pool images) | off (the default)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Simulate labeling rounds with each strategy; print the area under the budget curve."""
    from tlkit.active.simulate import simulate_folders

    setup_logging(verbose)
    training_process()
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    with user_errors(), progress_bar("fit") as bar:
        task = bar.add_task("simulate", total=len(names) * seeds * (rounds + 1), rate="")
        result, files = simulate_folders(
            pool, test, out, strategies=names, backbone=backbone, weights=str(weights) if weights else None,
            image_size=image_size, train=train, start=start, batch=batch, rounds=rounds, seeds=seeds, epochs=epochs,
            progress=lambda k: bar.advance(task, k), engine=engine, ssl=ssl,
        )
    shown = [b for b in result.budgets if b in {result.budgets[0], result.budgets[-1]}
             or b in {start + batch, 50, 100, 200}]
    table = Table(title=f"{result.metric} by labels (mean over {seeds} seeds) and AUBC")
    table.add_column("strategy")
    for b in shown:
        table.add_column(str(b), justify="right")
    table.add_column("AUBC", justify="right")
    best = max(result.summary.values(), key=lambda v: v["aubc"])["aubc"]
    for s, v in sorted(result.summary.items(), key=lambda kv: -kv[1]["aubc"]):
        cells = [f"{100 * v['mean_accuracy'][b]:.1f}" for b in shown]
        aubc = f"{v['aubc']:.4f} ± {v['aubc_std']:.3f}"
        table.add_row(s, *cells, f"[bold]{aubc}[/]" if v["aubc"] == best else aubc)
    console.print(table)
    console.print(f"files: {escape(str(files['curves']))}, {escape(str(files['plot']))}, {escape(str(files['summary']))}")
