"""`tlkit extract`: images -> feature vectors on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from tlkit.cli._app import PANEL_START, app, console, progress_bar, rate_callback, setup_logging, user_errors
from tlkit.core.constants import DEFAULT_BACKBONE
from tlkit.core.constants import DECODE_HELP
from tlkit.core.errors import TlkitError
from tlkit.engines import ENGINE_HELP


@app.command("extract", rich_help_panel=PANEL_START)
def extract_cmd(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Class-folder tree, flat folder, or CSV manifest (path[,label])."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: features.npy, index.csv, meta.json."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", "-b", help="timm name or tv:<torchvision name>."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local weights file (.safetensors/.pth)."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="Random init with --no-pretrained."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="auto | N. auto (default): on CUDA the largest power of two that fits (probed), 8 on a CPU."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (default: the backbone's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16"),
    engine: str = typer.Option("auto", "--engine", help=ENGINE_HELP),
    decode: str = typer.Option("auto", "--decode", help=DECODE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes (default: half the cores from 4 up, else 0)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on an undecodable file instead of skipping it."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model first."),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="Fold BatchNorm into the convolutions (checked)."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage of features.npy: float32 | float16 (half the disk and memory; rounding ≤ 0.05 %)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Embed only shard i/N of the images into OUT/shards/ (independent jobs; join with --merge)."),
    merge: bool = typer.Option(False, "--merge", help="Join the finished shards in OUT/shards/ into OUT (no embedding)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (info level) to stderr."),
) -> None:
    """Embed images with a frozen backbone; resumable, streamed to disk.

    Under `torchrun --nproc_per_node=N -m tlkit extract ...` each process embeds one shard and the
    first one merges them; --shard i/N and --merge do the same from independent jobs.
    """
    from tlkit.core.dist_env import env_dist_info
    from tlkit.data import scan_images

    setup_logging(verbose)
    with user_errors():
        source = scan_images(images)
        if merge:  # the settings given on the command line must be the shards' own
            options = dict(backbone=backbone, image_size=image_size, dtype=dtype, weights=weights)
            given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
            return _merge(source, out, shard, given)
        kwargs = dict(backbone=backbone, weights=weights, pretrained=pretrained, batch_size=batch_size,
                      image_size=image_size, precision=precision, workers=workers, strict=strict, compile=compile,
                      fuse=fuse, dtype=dtype, engine=engine, decode=decode)
        if env_dist_info().enabled:
            return _torchrun(source, out, shard, device, kwargs)
        with progress_bar() as bar:
            from tlkit.features.extract import extract_features
            from tlkit.features.store import Shard

            task = bar.add_task("extract", total=len(source.records), rate="")
            res = extract_features(source, out, device=device, shard=Shard.parse(shard) if shard else None,
                                   progress=rate_callback(bar, task), **kwargs)
    _print_result(res)


def _merge(source, out: Path, shard: Optional[str], given: dict) -> None:
    from tlkit.features.shards import MadeWith, merge_shards

    if shard:
        raise TlkitError("--merge joins every shard; drop --shard")
    with progress_bar() as bar:
        task = bar.add_task("merge", total=len(source.records), rate="")
        meta = merge_shards(source, out, made_with=MadeWith(**given), progress=rate_callback(bar, task))
    console.print(escape(f"merged {meta['shards']} shards into {out}: {meta['count']:,} x {meta['dim']} features"))


def _torchrun(source, out: Path, shard: Optional[str], device: str, kwargs: dict) -> None:
    from tlkit.features.shards import extract_under_torchrun

    if shard:
        raise TlkitError("--shard is set by torchrun (RANK/WORLD_SIZE); drop --shard")
    res, merged = extract_under_torchrun(source, out, device=device, **kwargs)
    if merged is not None:  # rank 0, which merged
        _print_result(res)
        console.print(escape(f"merged {merged['shards']} shards into {out}: {merged['count']:,} x {merged['dim']} "
                             "features"))


def _print_result(res) -> None:
    table = Table(title="tlkit extract", show_header=False)
    for key, value in (
        ("images", f"{res.count:,} ({res.reused:,} reused, {res.embedded:,} embedded"
                   + (f", {res.resumed_from:,} resumed)" if res.resumed_from and res.embedded else ")")),
        ("skipped", f"{res.skipped} (see skipped.csv)" if res.skipped else "0"),
        ("features", f"{res.count} x {res.dim} {res.meta.get('dtype', 'float32')}"),
        ("backbone", f"{res.meta['backbone']} [{res.meta['weights']['source']}]"),
        ("engine", f"{res.meta.get('engine', 'torch')}, {res.meta['precision']} on {res.meta['device']}"),
        ("speed", f"{res.images_per_s:,.1f} img/s, {res.elapsed_s:.1f} s"),
        ("output", str(res.out)),
    ):
        table.add_row(key, escape(value))
    console.print(table)
