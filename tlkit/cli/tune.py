"""`tlkit tune`: an lr range test, then a budgeted Optuna search (calls :func:`tlkit.train.tune.tune`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import (
    PANEL_TRAIN, app, console, progress_bar, setup_logging, training_process, user_errors,
)

# spelled out, not imported from tlkit.train.tune (that would load torch for `tlkit --help`)
SHORT = {"lr": "lr", "batch_size": "batch", "weight_decay": "wd", "scale_min": "scale", "hflip": "flip", "mode": ""}


def _fmt(key: str, value) -> str:
    return f"{value:.3g}" if isinstance(value, float) and key in ("lr", "weight_decay") else str(value)


def _trial_line(t, monitor: str) -> str:
    params = "  ".join(f"{SHORT.get(k, k)} {_fmt(k, v)}".strip() for k, v in t.params.items())
    value = "n/a" if t.value is None else f"{t.value:.4f}"
    name = "trial 0 (base)" if t.number == 0 else f"trial {t.number}"
    if t.stage == "confirm":
        name = f"confirm {name} at full length"
    return f"{name}: {params} -> {monitor} {value}  {t.state}, {t.epochs} epochs, {t.seconds:.1f} s"


def finetune_command(data: Path, val: Optional[Path], recipe: Path) -> str:
    """The ``tlkit finetune`` command line that trains with the tuned recipe."""
    val_arg = f" --val {val}" if val else ""
    return f"tlkit finetune --data {data}{val_arg} --out {recipe.parent / 'run'} --recipe {recipe}"


def _summary(res, data: Path, val: Optional[Path]) -> None:
    from tlkit.train.tune import pick_winner

    base, best = res.default_trial, pick_winner(res.trials, res.monitor)
    table = Table(title="tlkit tune", show_header=True)
    table.add_column("")
    table.add_column(f"base (trial {base.number})" if base else "base")
    table.add_column(f"search winner (trial {best.number})" if best else "search winner")
    shown = best or base
    for key in shown.params if shown else ():
        table.add_row(key, *(escape(_fmt(key, t.params[key])) if t else "-" for t in (base, best)))
    value = lambda t: "n/a" if t is None or t.value is None else f"{t.value:.4f}"  # noqa: E731
    table.add_row(f"{res.monitor} ({res.trial_epochs}-epoch trial)", *(value(t) for t in (base, best)))
    conf = res.confirm
    if conf is not None and conf.challenger is not None and conf.challenger.stage == "confirm":
        table.add_row(f"{res.monitor} ({res.base.epochs} epochs)", value(conf.base), value(conf.challenger))
    console.print(table)
    if conf is not None:
        console.print(escape(f"recipe: {conf.reason}"))
    states = ", ".join(f"{sum(t.state == s for t in res.trials)} {s}" for s in ("complete", "pruned", "cut", "failed"))
    console.print(escape(f"{len(res.trials)} trials of {res.trial_epochs} epochs ({states}) in {res.elapsed_s:.0f} s "
                         f"of a {res.budget_s:.0f} s budget; lr range test suggested {res.lr_find.suggestion:.3g}"))
    console.print(escape(f"outputs: {res.out} (recipe.yaml, trials.csv, lr_find.png, trials.png, tune.json)"))
    console.print("train with the tuned recipe:")
    console.print(escape("  " + finetune_command(data, val, res.files.get("recipe", res.out / "recipe.yaml"))),
                  soft_wrap=True)


@app.command("tune", rich_help_panel=PANEL_TRAIN)
def tune_cmd(
    data: Path = typer.Argument(..., help="Training images: one subfolder per class (or a labeled CSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: recipe.yaml, trials.csv, lr_find.png, trials.png, tune.json."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation images (class folders). Default: a split of DATA, the same for every trial."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="timm name or tv:<torchvision name> (default efficientnet_lite0)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (default: the backbone's)."),
    epochs: int = typer.Option(3, "--epochs", help="Epochs of each trial; the recipe keeps finetune's training length."),
    budget: float = typer.Option(30.0, "--budget", help="Wall-clock minutes for everything, range test included (hard limit)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Stop after this many trials even with time left."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Start from this recipe (bundled name or YAML file): it is trial 0."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split, the trials and the sampler (default 0)."),
    overrides: List[str] = typer.Option([], "--set", help="Fix a config key, not searched: --set hflip=0 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out (study.db) with a new --budget."),
    task_opt: str = typer.Option("auto", "--task", help="auto | single | multilabel (as for finetune); multi-label data is tuned for validation mAP."),
    label_delim: str = typer.Option(";", "--label-delim", help="Separator of the labels in one CSV cell (multi-label)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Find the learning rate, then search lr, batch size, weight decay, augmentation and mode on validation.

    Trial 0 is the base config (defaults or --recipe), so the recipe written is never worse than it on
    validation. The study is stored in --out; --resume continues it. Flips change the meaning of digits
    and text: keep them off there with --set hflip=0.
    """
    setup_logging(verbose)
    training_process()
    with user_errors():
        from tlkit.train import make_config, parse_overrides
        from tlkit.train.tune import tune
        from tlkit.train.tune_space import import_optuna

        import_optuna()
        base = make_config(recipe, overrides=overrides, backbone=backbone, image_size=image_size, seed=seed)
        with progress_bar() as bar:
            total, t0 = max(1, round(budget * 60)), time.monotonic()
            task = bar.add_task("lr range test", total=total, rate="s of the budget")

            def tick(_: int) -> None:
                bar.update(task, completed=min(total, time.monotonic() - t0))

            def lr_done(found) -> None:
                bar.console.print(escape(f"lr range test: {len(found.lrs)} steps, suggestion {found.suggestion:.3g} "
                                         f"({found.method})"))
                bar.update(task, description="trial 0 (base)")

            def trial_done(t) -> None:
                bar.console.print(escape(_trial_line(t, base.monitor)), soft_wrap=True)
                bar.update(task, description=f"trial {t.number + 1}")

            res = tune(base, data=data, out=out, val=val, budget_s=budget * 60, trial_epochs=epochs,
                       fixed=tuple(parse_overrides(overrides)), max_trials=trials, resume=resume, progress=tick,
                       on_lr_find=lr_done, on_trial=trial_done, task=task_opt, label_delim=label_delim)
    _summary(res, data, val)
