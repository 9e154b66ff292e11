"""`tlkit evaluate`: metrics of a trained run on labeled images (calls :func:`tlkit.train.evaluate_run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import PANEL_TRAIN, app, console, progress_bar, rate_callback, setup_logging, user_errors
from tlkit.core.constants import DECODE_HELP
from tlkit.engines import ENGINE_HELP


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("evaluate", rich_help_panel=PANEL_TRAIN)
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `tlkit finetune`."),
    data: Path = typer.Option(..., "--data", "-d", help="Labeled images: one subfolder per class (or a labeled CSV)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (all metrics) instead of tables."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Metrics file (default RUN/evaluation.json)."),
    tta: bool = typer.Option(False, "--tta", help="Average with horizontally flipped images."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="auto | N. auto (default): on CUDA the largest power of two that fits (probed), 8 on a CPU."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16"),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
    decode: str = typer.Option("auto", "--decode", help=DECODE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: half the cores, at most 8, from 4 cores up; else 0)."),
    label_delim: str = typer.Option(";", "--label-delim", help="Multi-label runs: separator of the labels in one CSV cell."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Accuracy, F1, per-class report, confusion matrix, ROC-AUC, average precision and calibration on labeled
    images; per-image predictions and plots (ROC, precision-recall, reliability, top losses) beside the metrics.

    A multi-label run (data: a CSV path,labels): mAP macro and micro, per-class AP, micro / macro / example-based
    F1 and Hamming loss at the run's stored thresholds, ROC-AUC; ROC, PR and per-class PR plots."""
    from tlkit.train import evaluate_run

    setup_logging(verbose)
    with user_errors():
        with progress_bar() as bar:
            task = bar.add_task("evaluate", total=None, rate="")
            m = evaluate_run(run, data, which=checkpoint, batch_size=batch_size, device=device, precision=precision,
                             workers=workers, tta=tta, out=out, engine=engine, decode=decode,
                             progress=rate_callback(bar, task), label_delim=label_delim)
    if as_json:
        typer.echo(json.dumps(m))
        return
    if m.get("task") == "multilabel":
        _print_multilabel(m)
    else:
        _print_single(m)
    target = out or run / "evaluation.json"
    console.print(f"written: {escape(str(target))}, predictions beside it, plots in "
                  f"{escape(str(target.parent / 'plots'))}")


def _print_multilabel(m: dict) -> None:
    summary = Table(title=f"tlkit evaluate ({m['n']} images, multi-label)", show_header=False)
    for key in ("map_macro", "map_micro", "f1_micro", "f1_macro", "f1_samples", "hamming_loss", "roc_auc_macro",
                "subset_accuracy", "loss"):
        summary.add_row(key, _fmt(m.get(key)))
    if m.get("skipped"):
        summary.add_row("skipped", str(m["skipped"]))
    console.print(summary)
    per = Table(title="per class (at the stored thresholds)")
    for col in ("class", "AP", "precision", "recall", "f1", "threshold", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for name, r in m["per_class"].items():
        per.add_row(escape(name), _fmt(r["average_precision"]), _fmt(r["precision"]), _fmt(r["recall"]),
                    _fmt(r["f1"]), _fmt(r["threshold"]), str(r["support"]))
    console.print(per)


def _print_single(m: dict) -> None:
    summary = Table(title=f"tlkit evaluate ({m['n']} images)", show_header=False)
    for key in ("accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr", "average_precision_macro",
                "ece", "loss"):
        if key in m:
            summary.add_row(key, _fmt(m[key]))
    if m.get("skipped"):
        summary.add_row("skipped", str(m["skipped"]))
    console.print(summary)
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "AP", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for name, r in m["per_class"].items():
        per.add_row(escape(name), _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]),
                    _fmt(r["average_precision"]), str(r["support"]))
    console.print(per)
