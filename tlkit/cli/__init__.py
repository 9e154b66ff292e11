"""The ``tlkit`` command line. Each command is a module here; :data:`app` collects them."""

from __future__ import annotations

import importlib

from tlkit.cli._app import app

COMMAND_MODULES = ("demo", "extract", "backbones", "finetune", "evaluate", "predict", "export", "recipes", "active", "simulate",
                   "serve", "audit", "tune", "lr_find")

for _name in COMMAND_MODULES:
    importlib.import_module(f"tlkit.cli.{_name}")


def main() -> None:
    """Entry point of the ``tlkit`` console script."""
    app()


__all__ = ["app", "main"]
