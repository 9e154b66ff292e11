"""Contact sheets (image grids with captions) and a static HTML page linking the audit's lists."""

from __future__ import annotations

import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tlkit.core.io import write_bytes, write_text

log = logging.getLogger(__name__)

THUMB = 112
COLUMNS = 8
MAX_TILES = 96
"""A sheet shows the first this many tiles (the most severe); the CSV has them all."""


@dataclass(frozen=True)
class Tile:
    """One image on a sheet: its file (None when not available) and up to three caption lines."""

    file: Path | None
    lines: tuple[str, ...]


def contact_sheet(tiles: list[Tile] | list[list[Tile]], out: Path, title: str, *, thumb: int = THUMB,
                  columns: int = COLUMNS) -> Path:
    """Write a PNG grid of ``tiles`` with captions; a list of lists puts each inner list on its own row.

    Returns:
        ``out``.
    """
    rows = _rows(tiles, columns)
    font = ImageFont.load_default()
    line_h, pad = 12, 4
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + 3 * line_h
    width = max(1, max((len(r) for r in rows), default=1)) * cell_w
    sheet = Image.new("RGB", (max(width, 320), 24 + max(1, len(rows)) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = c * cell_w + pad, 24 + r * cell_h + pad
            sheet.paste(_thumbnail(tile.file, thumb), (x, y))
            for j, line in enumerate(tile.lines[:3]):
                draw.text((x, y + thumb + 1 + j * line_h), _fit(line, thumb, font), fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes(out, buf.getvalue())
    return out


def _rows(tiles, columns: int) -> list[list[Tile]]:
    if tiles and isinstance(tiles[0], list):
        return [row[:columns] for row in tiles[: MAX_TILES // 4]]
    flat = list(tiles)[:MAX_TILES]
    return [flat[i : i + columns] for i in range(0, len(flat), columns)]


def _thumbnail(file: Path | None, size: int) -> Image.Image:
    from tlkit.data import ImageDecodeError, load_image

    box = Image.new("RGB", (size, size), (230, 230, 230))
    if file is None:
        return box
    try:
        img = load_image(file, size_hint=size)
    except (ImageDecodeError, OSError):
        return box
    scale = size / max(img.width, img.height)  # small images are enlarged too, so that they can be seen
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    box.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return box


def _fit(text: str, width: int, font) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def html_page(out: Path, title: str, sections: list[tuple[str, str, Path | None, Path | None]]) -> Path:
    """Write ``out`` (index.html): per section a heading, a one-line summary, the CSV link and the sheet.

    Args:
        sections: ``(heading, summary, csv file or None, png file or None)``; files are linked relative to ``out``.
    """
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;border:1px solid #ccc}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, summary, csv_file, png in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(summary)}</p>")
        if csv_file is not None:
            parts.append(f"<p><a href='{html.escape(_rel(csv_file, out))}'>{html.escape(csv_file.name)}</a></p>")
        if png is not None:
            parts.append(f"<a href='{html.escape(_rel(png, out))}'><img src='{html.escape(_rel(png, out))}' "
                         f"alt='{html.escape(heading)}'></a>")
    write_text(out, "\n".join(parts) + "\n")
    return out


def _rel(file: Path, page: Path) -> str:
    try:
        return file.relative_to(page.parent).as_posix()
    except ValueError:
        return file.resolve().as_uri()
