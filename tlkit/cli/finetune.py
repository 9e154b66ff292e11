"""`tlkit finetune`: train a classifier on a class-folder tree (calls :func:`tlkit.train.fit`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import (
    PANEL_TRAIN, app, console, progress_bar, rate_callback, setup_logging, training_process,
    user_errors,
)
from tlkit.core.constants import DECODE_HELP


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train loss {row['train_loss']:.4f}",
             f"val loss {row['val_loss']:.4f}"]
    if "val_map" in row:  # multi-label
        parts.append(f"val mAP {row['val_map']:.4f}")
        if "ema_val_map" in row:
            parts.append(f"ema mAP {row['ema_val_map']:.4f}")
    else:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
        if "ema_val_accuracy" in row:
            parts.append(f"ema acc {row['ema_val_accuracy']:.4f}")
    if "mask_rate" in row:  # --unlabeled
        parts.append(f"pseudo-labels {row['pseudo_labels']}/{row['unlabeled_images']}")
    parts += [f"lr {row['lr']:.2e}", f"{row['epoch_time_s']:.1f} s"]
    return "  ".join(parts)


# spelled out rather than imported: importing tlkit.train or tlkit.core.runtime here would load torch and
# timm for every command, `tlkit --help` included (tests/test_cli.py checks these match)
MODES_HELP = "full | linear-probe | freeze-unfreeze"
PRECISIONS_HELP = "auto | fp32 | bf16 | fp16"

@app.command("finetune", rich_help_panel=PANEL_TRAIN)
def finetune_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Training images: one subfolder per class, or a labeled CSV (path,label; multi-label: path,labels with labels joined by --label-delim)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, config.yaml, metrics.json, plots/, tb/."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation images (class folders). Default: a split of --data."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Stratified share of --data held out (default 0.2; multi-label 0.1)."),
    unlabeled: Optional[Path] = typer.Option(None, "--unlabeled", help="Unlabeled images (any folder) that teach the network too, by FixMatch consistency; --set fixmatch_threshold=, fixmatch_mu=, fixmatch_per_epoch= tune it."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="timm name or tv:<torchvision name> (default efficientnet_lite0)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local backbone weights (.safetensors/.pth)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Random init with --no-pretrained."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Bundled recipe name (see `tlkit recipes`) or a YAML file."),
    mode: Optional[str] = typer.Option(None, "--mode", help=MODES_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs (default 10, or the recipe's)."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="auto | N images per step. auto (default, unless the recipe sets one): on CUDA the largest power of two whose step fits (probed), 32 on a CPU; the recipe's lr_scale says how lr follows it."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (default: the backbone's)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate of the head."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISIONS_HELP),
    decode: Optional[str] = typer.Option(None, "--decode", help=DECODE_HELP + ". Training images too: decoded, random-resized-cropped, flipped and normalised on the device (auto: on CUDA when most are JPEGs; colour jitter, auto-augment and random erasing keep them on the CPU)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: half the cores, at most 8, from 4 cores up; else 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split, the initialisation and the augmentation (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="TensorBoard logs in --out/tb (default: on when the tensorboard package is installed)."),
    overrides: List[str] = typer.Option([], "--set", help="Any config key: --set label_smoothing=0.1 (repeatable)."),
    task: str = typer.Option("auto", "--task", help="auto | single | multilabel. auto: multi-label when the CSV has a 'labels' column or a label cell holding --label-delim."),
    label_delim: str = typer.Option(";", "--label-delim", help="Separator of the labels in one CSV cell (multi-label)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Fine-tune a pretrained backbone; resumable with --resume after any interruption.

    Multi-label data (a CSV path,labels) trains one sigmoid per class (binary cross-entropy; --set loss=asl
    for the asymmetric loss), monitors validation mAP and stores per-class thresholds chosen on validation."""
    from tlkit.train import fit, make_config
    from tlkit.train.consistency import UnlabeledSet

    setup_logging(verbose)
    training_process()
    with user_errors():
        cfg = make_config(
            recipe, overrides=overrides, backbone=backbone, weights=str(weights) if weights else None,
            pretrained=pretrained, mode=mode, epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
            device=device, precision=precision, decode=decode, workers=workers, seed=seed, val_fraction=val_fraction,
            tensorboard=tensorboard,
        )
        unlabeled_set = UnlabeledSet.from_folder(unlabeled) if unlabeled is not None else None
        with progress_bar() as bar:
            bar_task = bar.add_task("finetune", total=None, rate="")
            res = fit(cfg, data=data, val=val, out=out, resume=resume, progress=rate_callback(bar, bar_task),
                      on_epoch=lambda row: bar.console.print(escape(_epoch_line(row, cfg.epochs))),
                      task=task, label_delim=label_delim, unlabeled=unlabeled_set)
    if res.rank != 0:
        return
    best = res.best or {}
    table = Table(title="tlkit finetune", show_header=False)
    rows = [
        ("backbone", f"{cfg.backbone} ({cfg.mode})"),
        ("images", f"{res.n_train} train, {res.n_val} val, {len(res.classes)} classes"),
        ("epochs", f"{len(res.history)}" + (" (early stop)" if res.stopped_early else "")
         + (f", resumed after {res.resumed_from}" if res.resumed_from else "")),
        ("best", f"epoch {best.get('epoch')}: val mAP {best.get('val_map', float('nan')):.4f}, micro F1 "
         f"{best.get('val_f1_micro', float('nan')):.4f}, macro F1 {best.get('val_f1_macro', float('nan')):.4f} "
         f"[{best.get('weights_from', '-')} weights, {best.get('monitor', cfg.monitor)}, per-class thresholds stored]"
         if "val_map" in best else
         f"epoch {best.get('epoch')}: val acc {best.get('val_accuracy', float('nan')):.4f}, "
         f"macro F1 {best.get('val_f1_macro', float('nan')):.4f} [{best.get('weights_from', '-')} weights, {cfg.monitor}]"),
        ("time", f"{res.elapsed_s:.1f} s"),
        ("output", str(res.out)),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
