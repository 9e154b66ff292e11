"""`tlkit demo`: the whole pipeline on sample images that ship with installed packages, offline."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import (
    PANEL_START, app, console, progress_bar, setup_logging, training_process, user_errors,
)


@app.command("demo", rich_help_panel=PANEL_START)
def demo_cmd(
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Keep the demo's files here (default: a temp folder)."),
    per_class: int = typer.Option(40, "--per-class", min=5, help="Digit images per class."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Run tlkit end to end on scikit-learn digits rendered as PNGs (offline, under 30 s on a 2-core CPU)."""
    from tlkit.demo import run_demo

    setup_logging(verbose)
    training_process()
    with tempfile.TemporaryDirectory(prefix="tlkit-demo-") as tmp, user_errors():
        root = workdir or Path(tmp)
        with progress_bar() as bar:
            tasks: dict[str, int] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, rate="")
                bar.update(tasks[stage], completed=done)

            report = run_demo(root, per_class=per_class, progress=on_progress)
    table = Table(title="tlkit demo (offline)")
    for col in ("step", "result", "time"):
        table.add_column(col, no_wrap=col == "time")
    table.add_column("detail (paths in the work folder)", overflow="fold")
    for s in report.steps:
        value = f"{s.value:.3f}" if s.value < 10 else f"{s.value:,.0f}"
        table.add_row(s.name, f"{s.metric}: {value}", f"{s.seconds:.1f} s", escape(s.detail))
    console.print(table)
    if workdir:
        console.print(f"work folder (kept): {escape(str(workdir))}", soft_wrap=True)
    else:
        console.print("the work folder was temporary and is deleted; pass --workdir DIR to keep the files")
