"""timm preprocessing for a backbone's data config: :func:`build_transform`, :func:`size_hint_for`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from tlkit.errors import TlkitError

_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def build_transform(data_config: dict[str, Any], *, training: bool = False,
                    image_size: int | None = None, **timm_aug_kwargs: Any) -> Callable:
    """timm transform (PIL RGB -> normalized tensor [3, H, W]) for a backbone's data config.

    Args:
        data_config: ``timm.data.resolve_model_data_config(model)``: input_size, mean, std,
            interpolation, crop_pct, crop_mode (other keys are ignored). Mean/std come only from it.
        training: random-resized-crop augmentation instead of resize + center crop.
        image_size: override the input size to (C, s, s); eval keeps the config's crop_pct.
        **timm_aug_kwargs: passed to ``timm.data.create_transform`` (hflip, auto_augment, ...).

    Example:
        >>> from PIL import Image
        >>> cfg = {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        >>> build_transform(cfg, image_size=64)(Image.new("RGB", (100, 80))).shape
        torch.Size([3, 64, 64])
    """
    from timm.data import create_transform

    missing = [k for k in ("input_size", "mean", "std") if k not in data_config]
    if missing:
        raise TlkitError(f"data config lacks {', '.join(missing)}; build it with "
                         "timm.data.resolve_model_data_config(model)")
    cfg = {k: data_config[k] for k in _CONFIG_KEYS if data_config.get(k) is not None}
    if image_size is not None:
        if int(image_size) < 1:
            raise TlkitError(f"image size must be a positive number of pixels, got {image_size}")
        cfg["input_size"] = (int(cfg["input_size"][0]), int(image_size), int(image_size))
    if training:
        cfg.pop("crop_pct", None)
        cfg.pop("crop_mode", None)
    return create_transform(**cfg, is_training=training, **timm_aug_kwargs)


def size_hint_for(data_config: dict[str, Any], *, training: bool = False,
                  image_size: int | None = None) -> int | None:
    """The ``size_hint`` for :func:`load_image` matching :func:`build_transform`'s resize.

    Eval resizes the short side to ``size / crop_pct`` before cropping, so decoding at that size
    loses nothing. Training crops random regions and needs the full resolution: ``None``.
    """
    if training:
        return None
    size = image_size or max(data_config["input_size"][-2:])
    return int(math.floor(size / (data_config.get("crop_pct") or 1.0)))
