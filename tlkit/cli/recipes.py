"""`tlkit recipes`: list the bundled fine-tuning recipes, or show one resolved."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import PANEL_TRAIN, app, console, user_errors


@app.command("recipes", rich_help_panel=PANEL_TRAIN)
def recipes_cmd(
    name: Optional[str] = typer.Argument(None, help="A recipe name or YAML file to show with every resolved value."),
) -> None:
    """List recipes for `tlkit finetune --recipe`; with NAME, show what it changes and the full config."""
    from tlkit.train.config import TrainConfig, list_recipes, load_recipe, make_config, recipe_path

    with user_errors():
        if name is None:
            table = Table(title="recipes (tlkit finetune --recipe NAME)")
            table.add_column("name")
            table.add_column("when to use it")
            for recipe, desc in list_recipes():
                table.add_row(recipe, escape(desc))
            console.print(table)
            return
        changed = load_recipe(name)
        cfg = make_config(name).to_dict()
        defaults = TrainConfig().to_dict()
    table = Table(title=f"{escape(str(recipe_path(name)))}")
    for col in ("key", "value", "default"):
        table.add_column(col)
    for key, value in cfg.items():
        style = "bold" if key in changed else "dim"
        table.add_row(f"[{style}]{key}[/]", escape(repr(value)), escape(repr(defaults[key])) if key in changed else "")
    console.print(table)
