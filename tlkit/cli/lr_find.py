"""`tlkit lr-find`: the learning-rate range test alone (calls :func:`tlkit.train.lr_find.lr_find`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from tlkit.cli._app import (
    PANEL_TRAIN, app, console, progress_bar, rate_callback, setup_logging, training_process,
    user_errors,
)


@app.command("lr-find", rich_help_panel=PANEL_TRAIN)
def lr_find_cmd(
    data: Path = typer.Argument(..., help="Training images: one subfolder per class (or a labeled CSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for lr_find.png (loss vs lr) and lr_find.json."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="timm name or tv:<torchvision name> (default efficientnet_lite0)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (default: the backbone's)."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="auto | N images per step (default auto: probed on CUDA, 32 on a CPU; or the recipe's)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Bundled recipe name or a YAML file (its mode, optimizer, ...)."),
    steps: int = typer.Option(100, "--steps", min=2, help="Mini-batches of the sweep, at most (it stops when the loss diverges)."),
    overrides: List[str] = typer.Option([], "--set", help="Any config key: --set mode=linear-probe (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Train a throwaway copy of the model with an exponentially growing lr; suggest an lr for finetune --lr."""
    setup_logging(verbose)
    training_process()
    with user_errors():
        from tlkit.core.io import check_output_dir
        from tlkit.train import make_config
        from tlkit.train.lr_find import lr_find
        from tlkit.train.tune_plots import save_lr_find

        check_output_dir(out)
        cfg = make_config(recipe, overrides=overrides, backbone=backbone, image_size=image_size, batch_size=batch_size)
        with progress_bar() as bar:
            task = bar.add_task("lr range test", total=None, rate="")
            res = lr_find(cfg, data=data, steps=steps, progress=rate_callback(bar, task))
        files = save_lr_find(res, out)
    rules = (f"; valley {res.candidates['valley']:.3g}, min/10 {res.candidates['min/10']:.3g}" if res.candidates
             else "")  # none when the curve said nothing and the configured lr was kept
    console.print(escape(f"lr range test: {len(res.lrs)} steps{' (stopped at divergence)' if res.diverged else ''}, "
                         f"suggestion {res.suggestion:.3g} ({res.method}{rules})"))
    train = f"; train with: tlkit finetune ... --lr {res.suggestion:.3g}" if res.candidates else ""
    console.print(escape(f"plot: {files['lr_find_plot']}{train}"))
