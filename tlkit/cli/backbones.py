"""`tlkit backbones`: the suggested backbones and whether their weights are available offline."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from tlkit.cli._app import PANEL_START, app, console, user_errors


@app.command("backbones", rich_help_panel=PANEL_START)
def backbones_cmd(
    names: Optional[List[str]] = typer.Argument(None, help="Extra timm / tv: names to check."),
) -> None:
    """List known backbones: feature dimension, input size, offline weights."""
    from tlkit.models.backbones import list_backbones

    with user_errors():
        rows = list_backbones(tuple(names or ()))
    table = Table(title="backbones")
    table.add_column("name", no_wrap=True)
    for col in ("features", "input", "offline weights", "note"):
        table.add_column(col)
    for r in rows:
        offline = f"[green]yes ({r.offline})[/]" if r.offline else "[yellow]no[/]"
        table.add_row(r.name, str(r.num_features), str(r.input_size), offline, r.note)
    console.print(table)
    console.print(
        "Any timm model name works, and torchvision models as tv:<name>. Without offline weights, pass "
        "--weights FILE, fill the Hugging Face cache (HF_HOME) or TORCH_HOME, or go online."
    )
