"""`tlkit predict`: classify images with a trained run (calls :func:`tlkit.train.predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tlkit.cli._app import PANEL_TRAIN, app, console, progress_bar, rate_callback, setup_logging, user_errors
from tlkit.core.constants import DECODE_HELP
from tlkit.engines import ENGINE_HELP


@app.command("predict", rich_help_panel=PANEL_TRAIN)
def predict_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `tlkit finetune`."),
    images: Path = typer.Argument(..., help="A folder (recursive), a CSV manifest, or one image file."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV: path, label, probability, top-k columns."),
    topk: int = typer.Option(5, "--topk", "-k", min=1, help="How many most likely classes per row."),
    tta: bool = typer.Option(False, "--tta", help="Average with horizontally flipped images."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="auto | N. auto (default): on CUDA the largest power of two that fits (probed), 8 on a CPU."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16"),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
    decode: str = typer.Option("auto", "--decode", help=DECODE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: half the cores, at most 8, from 4 cores up; else 0)."),
    label_delim: str = typer.Option(";", "--label-delim", help="Multi-label runs: separator of the predicted labels in the labels column."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Predict a class for every image; unreadable files are listed in skipped.csv next to --out.

    A multi-label run writes path, labels (those at or above the run's per-class thresholds) and one
    probability:<class> column per class."""
    from tlkit.train import predict

    setup_logging(verbose)
    with user_errors():
        with progress_bar() as bar:
            task = bar.add_task("predict", total=None, rate="")
            res = predict(run, images, out=out, topk=topk, tta=tta, which=checkpoint, batch_size=batch_size,
                          device=device, precision=precision, workers=workers, engine=engine, decode=decode,
                          progress=rate_callback(bar, task), label_delim=label_delim)
    console.print(f"{res.count} predictions -> {escape(str(res.out))}")
    if res.skipped:
        console.print(f"[yellow]{res.skipped} files skipped[/] -> {escape(str(res.skipped_csv))}")
