"""timm preprocessing for a backbone's data config: :func:`build_transform`, :func:`size_hint_for`.

Both take a :class:`~tlkit.data.config.DataConfig` or any timm data-config dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from tlkit.data.config import DataConfig


def build_transform(data_config: DataConfig | Mapping[str, Any], *, training: bool = False,
                    image_size: int | None = None, **timm_aug_kwargs: Any) -> Callable:
    """timm transform (PIL RGB -> normalized tensor [3, H, W]) for a backbone's data config.

    Args:
        data_config: a :class:`DataConfig`, or a dict like ``timm.data.resolve_model_data_config(model)``
            (input_size, mean, std, interpolation, crop_pct, crop_mode; other keys are ignored).
            Mean/std come only from it.
        training: random-resized-crop augmentation instead of resize + center crop.
        image_size: override the input size to (C, s, s) (:meth:`DataConfig.at_size`); eval keeps the
            config's crop_pct.
        **timm_aug_kwargs: passed to ``timm.data.create_transform`` (hflip, auto_augment, ...).

    Example:
        >>> from PIL import Image
        >>> cfg = {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        >>> build_transform(cfg, image_size=64)(Image.new("RGB", (100, 80))).shape
        torch.Size([3, 64, 64])
    """
    from timm.data import create_transform

    cfg = dict(DataConfig.from_dict(data_config).at_size(image_size))
    if training:
        cfg.pop("crop_pct", None)
        cfg.pop("crop_mode", None)
    return create_transform(**cfg, is_training=training, **timm_aug_kwargs)


def size_hint_for(data_config: DataConfig | Mapping[str, Any], *, training: bool = False,
                  image_size: int | None = None) -> int | None:
    """The ``size_hint`` for :func:`load_image` matching :func:`build_transform`'s resize.

    See :meth:`DataConfig.size_hint`; ``image_size`` as in :func:`build_transform`.
    """
    return DataConfig.from_dict(data_config).at_size(image_size).size_hint(training=training)
