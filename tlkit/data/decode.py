"""Decode one image file robustly: :func:`load_image` -> RGB image, or :class:`ImageDecodeError`.

EXIF orientation is applied, alpha is composited over white, 16-bit and float images are scaled to
8 bit, animations give their first frame, images above :data:`MAX_IMAGE_PIXELS` and truncated
files are refused. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

#: Largest image (width * height) :func:`load_image` decodes, refused above as a decompression
#: bomb: twice PIL's default warning limit, i.e. PIL's own hard limit (about 179 M pixels, e.g.
#: 13 000 x 13 000). To change it set ``tlkit.data.decode.MAX_IMAGE_PIXELS`` (read at every call);
#: PIL still refuses anything above ``2 * PIL.Image.MAX_IMAGE_PIXELS``, raise that too to go higher.
MAX_IMAGE_PIXELS: int = 2 * 89_478_485


class ImageDecodeError(TlkitError):
    """A file that cannot be decoded into an image.

    Attributes:
        path: the file.
        reason: short human string, e.g. ``"empty file"``, ``"truncated"``,
            ``"not an image (cannot identify image file)"``,
            ``"decompression bomb: 400000000 pixels > limit 178956970"``, ``"corrupt: ..."``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


_ALPHA_MODES = {"RGBA": "RGBA", "LA": "LA", "PA": "PA", "RGBa": "RGBA", "La": "LA"}


def load_image(path: str | os.PathLike, *, size_hint: int | None = None) -> Image.Image:
    """Decode an image file into an RGB :class:`PIL.Image.Image`.

    Args:
        path: the file.
        size_hint: when given, JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8) that keeps
            both sides >= ``size_hint`` (``Image.draft``), which is much faster for photos that
            will be resized down anyway. Use :func:`size_hint_for` to get it from a data config.

    Returns:
        An RGB image, EXIF orientation applied, alpha composited over white, first frame only.

    Raises:
        ImageDecodeError: with a short ``reason``; never any other exception for a bad file.

    Example:
        >>> load_image("cat.jpg", size_hint=256).mode  # doctest: +SKIP
        'RGB'
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty file")
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except OSError as e:
        raise ImageDecodeError(path, f"unreadable: {e.strerror}") from e
    try:
        return _decode(path, size_hint)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\).*?(\d+) pixels", str(e))
        detail = f"{m[1]} pixels > limit {m[2]}" if m else str(e)
        raise ImageDecodeError(path, f"decompression bomb: {detail}") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(path, "not an image (cannot identify image file)") from e
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, struct.error ...
        if "truncated" in str(e).lower():
            raise ImageDecodeError(path, "truncated") from e
        log.debug("decoding %s failed", path, exc_info=True)
        raise ImageDecodeError(path, f"corrupt: {type(e).__name__}: {e}") from e


def _decode(path: Path, size_hint: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # our own limit below replaces PIL's warning; PIL's hard error is mapped by the caller
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            pixels = img.width * img.height
            if pixels > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    path, f"decompression bomb: {pixels} pixels > limit {MAX_IMAGE_PIXELS}")
            if size_hint and img.format == "JPEG":
                img.draft("RGB", (size_hint, size_hint))
            img.load()
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception as e:  # malformed EXIF: the pixels are still good
                log.warning("%s: ignoring unreadable EXIF orientation (%s)", path, e)
                oriented = img.copy()
    return to_rgb(oriented)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Alpha (RGBA, LA, PA, palette or colour-key transparency) is composited over white. 16-bit
    (``I;16*``) is scaled by 255/65535. ``I`` (32-bit int) is taken as 8-bit when it lies in
    [0, 255], as 16-bit in [0, 65535], else min-max scaled. ``F`` is taken as [0, 1] when it lies
    there, else min-max scaled (NaN -> 0).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        if mode in ("RGBa", "La"):
            img = img.convert(_ALPHA_MODES[mode])
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 2-D high-depth array (``I;16*``, ``I``, ``F``) to uint8 [H, W]."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        out = a * (255.0 / 65535.0)
    elif mode == "I" and lo >= 0 and hi <= 255:
        out = a
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = a * 255.0
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
