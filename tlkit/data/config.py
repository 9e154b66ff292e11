"""A backbone's preprocessing as one typed value: :class:`DataConfig`.

Like timm's ``PretrainedCfg``, the model carries its own input size, mean, std, interpolation and
crop, so no caller re-derives them. A :class:`DataConfig` is also a read-only mapping over its set
fields, so ``timm.data.create_transform(**cfg)`` and ``cfg["input_size"]`` work as they do on the
dict of ``timm.data.resolve_model_data_config(model)``.

On disk (``meta.json`` of features, checkpoint metadata) it is the JSON dict of :meth:`DataConfig.to_dict`;
:meth:`DataConfig.from_dict` reads that, older files (the same keys, lists for tuples), and any
timm data-config dict (other keys are ignored).

Example:
    >>> cfg = DataConfig.from_dict({"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3})
    >>> cfg.at_size(160).input_size, cfg.at_size(160).to_dict()["input_size"]
    ((3, 160, 160), [3, 160, 160])
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

REQUIRED = ("input_size", "mean", "std")


@dataclass(frozen=True)
class DataConfig(Mapping):
    """How images are prepared for a model (timm's data-config keys).

    Attributes:
        input_size: ``(C, H, W)`` of the network input.
        mean, std: per-channel normalisation, ``C`` values each.
        interpolation: resize filter (``bilinear``, ``bicubic`` ...); ``None``: timm's default.
        crop_pct: eval resizes the short side to ``size / crop_pct``, then crops; ``None``: timm's default.
        crop_mode: ``center``, ``squash`` or ``border``; ``None``: timm's default.

    Only the fields that are set (not ``None``) are keys of the mapping and of :meth:`to_dict`.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str | None = None
    crop_pct: float | None = None
    crop_mode: str | None = None

    # ------------------------------------------------------------------ mapping view
    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in _FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k in _ORDER if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # ------------------------------------------------------------------ derived configs
    def at_size(self, image_size: int | None) -> "DataConfig":
        """This config with ``input_size`` ``(C, s, s)`` for ``image_size`` s; unchanged for ``None``.

        Raises:
            TlkitError: ``image_size`` is below 1.
        """
        if image_size is None:
            return self
        size = int(image_size)
        if size < 1:
            raise TlkitError(f"image size must be a positive number of pixels, got {image_size}")
        return dataclasses.replace(self, input_size=(self.input_size[0], size, size))

    def size_hint(self, *, training: bool = False) -> int | None:
        """The ``size_hint`` for :func:`tlkit.data.load_image` matching the eval transform's resize.

        Eval resizes the short side to ``size / crop_pct`` before cropping, so decoding at that size
        loses nothing. Training crops random regions and needs the full resolution: ``None``.
        """
        if training:
            return None
        return int(math.floor(max(self.input_size[-2:]) / (self.crop_pct or 1.0)))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the set fields (lists for tuples), in timm's key order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        """A config from a dict of :meth:`to_dict`, an older file's dict, or a timm data-config dict.

        Lists become tuples; keys that are not fields (``num_classes`` ...) are ignored. A
        :class:`DataConfig` is returned as it is.

        Raises:
            TlkitError: ``input_size``, ``mean`` or ``std`` is missing, or ``input_size`` is not (C, H, W).
        """
        if isinstance(d, DataConfig):
            return d
        missing = [k for k in REQUIRED if d.get(k) is None]
        if missing:
            raise TlkitError(f"data config lacks {', '.join(missing)}; build it with "
                             "timm.data.resolve_model_data_config(model)")
        size = tuple(int(v) for v in d["input_size"])
        if len(size) != 3:
            raise TlkitError(f"data config input_size must be (C, H, W), got {list(d['input_size'])}")
        ignored = sorted(set(map(str, d)) - set(_FIELDS))
        if ignored:
            log.debug("data config keys ignored: %s", ", ".join(ignored))
        crop_pct = d.get("crop_pct")
        return cls(input_size=size, mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   interpolation=d.get("interpolation"), crop_pct=None if crop_pct is None else float(crop_pct),
                   crop_mode=d.get("crop_mode"))


_FIELDS = frozenset(f.name for f in dataclasses.fields(DataConfig))
_ORDER = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")  # timm's resolve_data_config order

__all__ = ["DataConfig"]
