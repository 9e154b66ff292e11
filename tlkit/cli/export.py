"""`tlkit export`: a run or a backbone as ONNX / OpenVINO IR with its preprocessing.

Calls :func:`tlkit.train.export.export_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tlkit.cli._app import PANEL_TRAIN, app, console, setup_logging, user_errors


@app.command("export", rich_help_panel=PANEL_TRAIN)
def export_cmd(
    source: str = typer.Argument(..., help="A run folder of `tlkit finetune` (or one of its .safetensors), or a backbone name."),
    format: str = typer.Option(..., "--format", "-f", help="onnx | openvino"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the model file(s) and preprocess.json."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last (a run)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (a backbone; a run keeps its own)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local weights file (a backbone)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Export for deployment; the exported file is checked against PyTorch before it is kept."""
    from tlkit.train.export import export_model

    setup_logging(verbose)
    with user_errors():
        res = export_model(source, format=format, out=out, which=checkpoint, image_size=image_size, weights=weights)
    what = f"{len(res.classes)}-class classifier" if res.kind == "logits" else "feature extractor"
    console.print(f"{what} -> {escape(str(res.out))}: {', '.join(res.files)} "
                  f"(parity cosine to PyTorch: {res.parity_cosine:.6f})")
