"""Training images decoded and augmented on the GPU: :func:`train_loader` with ``decode="device"``.

The CPU path decodes each training JPEG with PIL at full size, runs timm's training transform
(random-resized-crop, flips, ...) and sends float32 tensors: the host's cores set the pace of a
fine-tuning run on a fast GPU. The device path sends the JPEG bytes (uint8), decodes them in batches on
the device (``torchvision.io.decode_jpeg(list, device="cuda")``: the machinery of
:mod:`tlkit.data.device_decode`), then crops, resizes, flips and normalises there.

What it covers, with the parameters of the recipe's CPU transform (:class:`TrainAugment`):

- timm's ``RandomResizedCropAndInterpolation``: the same sampler (``scale``, ``ratio`` = timm's (3/4, 4/3);
  10 tries of a uniform area fraction and a log-uniform aspect ratio, else the central crop), then a resize
  of the crop to the input size with the data config's filter (antialiased, as PIL's resize is);
- horizontal and vertical flips with their probabilities;
- ``x / 255``, ``(x - mean) / std`` in float32.

A config asking for more (colour jitter, auto-augment / RandAugment, random erasing, a filter tensors do not
resize with) trains on the CPU path, after one info line naming what the device path lacks. Files the
device does not take (PNGs, grayscale or CMYK JPEGs, EXIF-rotated ones, a JPEG the device fails to decode)
get the CPU transform in the loader's workers, as before, and join the batch on the device.

Crops and flips are drawn on the host from a generator seeded, at the start of each pass, from torch's
seed (which :func:`tlkit.core.runtime.seed_everything` sets per epoch and rank): a run is repeatable under a seed.
They are not the CPU path's draws (that path draws in the loader workers), so the two paths give equally
distributed, not identical, crops. ``decode="auto"`` picks the device path only on CUDA and when most
training files are JPEGs (by name); ``decode="device"`` on a CPU runs the twin (``decode_jpeg`` on the
CPU, the same tensor steps), which ``tests/test_device_decode.py`` checks on real JPEGs.

Example:
    >>> loader, path = train_loader(ds_records, cfg, aug, batch_size=256, workers=8, device="cuda",
    ...                             sampler=sampler, drop_last=True, decode="auto")      # doctest: +SKIP
    >>> path
    'device'
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from tlkit.data.config import DataConfig
from tlkit.data.device_decode import (
    DeviceBatches, DeviceDecoder, EncodedImageDataset, collate_encoded, resolve_decode,
)
from tlkit.data.loader import Batch, ImageDataset, make_loader

log = logging.getLogger(__name__)

#: timm's RandomResizedCrop aspect-ratio range (``transforms_imagenet_train``'s default; tlkit never sets it)
TRAIN_RATIO = (3 / 4, 4 / 3)
#: file name endings counted as JPEGs when ``decode="auto"`` decides
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_FILTERS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class TrainAugment:
    """The training augmentation the device path applies (see the module docstring).

    Attributes:
        size: ``(H, W)`` output size.
        scale: random-resized-crop area fraction range.
        ratio: its aspect-ratio range.
        hflip, vflip: flip probabilities.
        interpolation: ``nearest`` | ``bilinear`` | ``bicubic``.
        mean, std: per-channel normalisation.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float
    vflip: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data_config: DataConfig | Mapping[str, Any], aug: Mapping[str, Any]) -> tuple["TrainAugment | None", str]:
        """``(augment, "")``, or ``(None, what the device path lacks)`` for ``aug`` (the keyword arguments
        tlkit passes to timm's ``create_transform``: scale, hflip, vflip, color_jitter, auto_augment, re_prob)."""
        cfg = DataConfig.from_dict(data_config)
        lacks = [name for name, on in (("color_jitter", bool(aug.get("color_jitter"))),
                                       ("auto_augment", bool(aug.get("auto_augment"))),
                                       ("random erasing", bool(aug.get("re_prob"))))
                 if on]
        interp = cfg.interpolation or "bilinear"
        if interp not in _FILTERS:
            lacks.append(f"interpolation {interp}")
        if len(cfg.mean) != 3 or 0 in cfg.std:
            lacks.append("mean/std")
        if lacks:
            return None, ", ".join(lacks)
        _, h, w = cfg.input_size
        return cls((h, w), tuple(aug.get("scale", (0.08, 1.0))), TRAIN_RATIO, float(aug.get("hflip", 0.5)),
                   float(aug.get("vflip", 0.0)), interp, tuple(cfg.mean), tuple(cfg.std)), ""


def crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop of a ``width`` x ``height`` image: timm's
    ``RandomResizedCropAndInterpolation.get_params``, drawing from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class DeviceTrainTransform:
    """uint8 ``[3, h, w]`` on the device -> uint8 ``[3, H, W]`` randomly cropped, resized and flipped
    (:meth:`geometry`, the interface :class:`~tlkit.data.device_decode.DeviceDecoder` calls), and the
    float32 normalisation of a stacked batch (:meth:`normalize`)."""

    def __init__(self, augment: TrainAugment, seed: int = 0):
        from torchvision.transforms import InterpolationMode

        self.augment = augment
        self.mode = InterpolationMode(augment.interpolation)
        self.mean = torch.tensor(augment.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(augment.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        """Restart the crop and flip draws from ``seed``."""
        self.rng.seed(seed)

    def draw(self, width: int, height: int) -> tuple[tuple[int, int, int, int], bool, bool]:
        """One image's ``((top, left, h, w), hflip, vflip)``."""
        a = self.augment
        box = crop_params(width, height, a.scale, a.ratio, self.rng)
        hflip = a.hflip > 0 and self.rng.random() < a.hflip
        vflip = a.vflip > 0 and self.rng.random() < a.vflip
        return box, hflip, vflip

    def apply(self, x: torch.Tensor, box: tuple[int, int, int, int], hflip: bool, vflip: bool) -> torch.Tensor:
        """Crop ``box`` of ``x`` (uint8 ``[3, h, w]``), resize it to the output size, flip."""
        from torchvision.transforms.v2 import functional as F

        top, left, h, w = box
        out = F.resize(x[:, top:top + h, left:left + w], list(self.augment.size), interpolation=self.mode,
                       antialias=True)
        if hflip:
            out = out.flip(-1)
        if vflip:
            out = out.flip(-2)
        return out

    def geometry(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """:meth:`draw` then :meth:`apply` (``size``, the decode size, is the full size here and unused)."""
        return self.apply(x, *self.draw(x.shape[-1], x.shape[-2]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std`` (timm's ToTensor + Normalize)."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.float().div_(255).sub_(mean).div_(std)


class DeviceTrainBatches(DeviceBatches):
    """:class:`~tlkit.data.device_decode.DeviceBatches` for training: each pass reseeds the crop and flip
    draws from ``torch.initial_seed()`` (set per epoch and rank by the training loop)."""

    def __init__(self, loader, decoder: DeviceDecoder, transform: DeviceTrainTransform):
        super().__init__(loader, decoder)
        self.transform = transform

    def __iter__(self) -> Iterator[Batch]:
        self.transform.reseed(torch.initial_seed())
        yield from super().__iter__()


def mostly_jpegs(records: Sequence) -> bool:
    """Whether at least half the records' file names end like a JPEG (:data:`JPEG_SUFFIXES`)."""
    jpegs = sum(str(r.path).lower().endswith(JPEG_SUFFIXES) for r in records)
    return len(records) > 0 and 2 * jpegs >= len(records)


def train_decode_path(spec: str, device: torch.device | str, records: Sequence) -> str:
    """``device`` or ``cpu`` for the training images: ``auto`` is ``device`` on CUDA with mostly JPEGs only."""
    path = resolve_decode(spec, device)
    if spec == "auto" and path == "device" and not mostly_jpegs(records):
        return "cpu"
    return path


def train_loader(records: Sequence, data_config: DataConfig | Mapping[str, Any], aug: Mapping[str, Any],
                 cpu_transform, *, batch_size: int, workers: int, device: torch.device | str, sampler,
                 drop_last: bool, decode: str = "auto", class_to_idx: dict[str, int] | None = None,
                 seed: int = 0) -> tuple[Any, str]:
    """The training loader and its decode path (``device`` or ``cpu``).

    Args:
        records: the training images.
        data_config: the model's data config at the training size.
        aug: the augmentation keyword arguments given to timm (:meth:`TrainAugment.of`).
        cpu_transform: timm's training transform (the CPU path, and the device path's files it does not take).
        decode: ``auto`` | ``cpu`` | ``device`` (:func:`train_decode_path`).
        batch_size, workers, device, sampler, drop_last, class_to_idx, seed: as :func:`tlkit.data.make_loader`.

    The CPU path is :class:`~tlkit.data.ImageDataset` + :func:`~tlkit.data.make_loader`, unchanged.
    """
    path = train_decode_path(decode, device, records)
    augment = None
    if path == "device":
        augment, lacks = TrainAugment.of(data_config, aug)
        if augment is None:
            log.info("training images decoded on the CPU: the device path does not cover %s", lacks)
            path = "cpu"
    if path == "cpu":
        ds = ImageDataset(records, cpu_transform, class_to_idx)
        return make_loader(ds, batch_size=batch_size, workers=workers, device=device, sampler=sampler,
                           drop_last=drop_last, seed=seed), path
    ds = EncodedImageDataset(records, cpu_transform, class_to_idx)
    loader = make_loader(ds, batch_size=batch_size, workers=workers, device=device, sampler=sampler,
                         drop_last=drop_last, seed=seed, collate_fn=collate_encoded)
    transform = DeviceTrainTransform(augment, seed)
    return DeviceTrainBatches(loader, DeviceDecoder(transform, ds, torch.device(device)), transform), path


__all__ = ["DeviceTrainBatches", "DeviceTrainTransform", "JPEG_SUFFIXES", "TRAIN_RATIO", "TrainAugment",
           "crop_params", "mostly_jpegs", "train_decode_path", "train_loader"]
