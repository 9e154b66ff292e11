"""JPEGs decoded and resized on the GPU: :func:`eval_loader` with ``decode="device"``.

The CPU path (:func:`tlkit.data.load_image` + timm's transform) decodes every image with PIL and sends
float32 tensors to the GPU: four bytes a pixel, and the host's cores set the pace. The device path sends
each JPEG's compressed bytes (uint8), decodes them in batches on the device
(``torchvision.io.decode_jpeg(list, device="cuda")``, nvJPEG), and resizes, crops and normalises there,
with the geometry of the eval transform (:mod:`tlkit.data.numpy_transform` states it): PIL's ``draft``
reduction (the 1/2, 1/4 or 1/8 scale ``load_image`` decodes a large JPEG at) as an average over
2x2, 4x4 or 8x8 blocks, the short side to ``floor(size / crop_pct)`` with an antialiased filter,
torchvision's center crop, then ``(x / 255 - mean) / std``.

Only baseline RGB (YCbCr) JPEGs without an EXIF rotation take it. Every other file (PNG, grayscale or
CMYK JPEGs, EXIF-rotated ones, files not ending in a JPEG end marker, anything the device fails to
decode) goes through today's CPU path, image by image, so broken files are still skipped with the same
reasons. ``decode="auto"`` picks the device path on CUDA only; on a CPU, ``decode="device"`` runs its
twin (``decode_jpeg`` on the CPU and the same tensor steps), which ``tests/test_device_decode.py``
holds to the CPU path on real JPEGs: pixel values within 2/255 where no ``draft`` reduction applies;
where one does (libjpeg's scaled IDCT against a block average), a mean difference under 1/255 with a
few pixels at sharp edges up to 32/255 apart (27 the worst measured).

Example:
    >>> loader, path = eval_loader(records, cfg, batch_size=256, workers=8, device="cuda")   # doctest: +SKIP
    >>> path, next(iter(loader)).images.device                                             # doctest: +SKIP
    ('device', device(type='cuda', index=0))
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

from tlkit.core.constants import DECODE_MODES
from tlkit.core.errors import TlkitError
from tlkit.data.config import DataConfig
from tlkit.data.decode import MAX_IMAGE_PIXELS, ImageDecodeError, load_image
from tlkit.data.loader import Batch, ImageDataset, make_loader, stack_targets
from tlkit.data.numpy_transform import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, resized_short

log = logging.getLogger(__name__)

#: JPEGs decoded on the device at once: bounds the full-size images held there (a 12 MP photo is 36 MB).
CHUNK = int(os.environ.get("TLKIT_DEVICE_DECODE_CHUNK", "32"))
_ORIENTATION = 0x0112
_FILTERS = ("nearest", "bilinear", "bicubic")


def resolve_decode(spec: str, device: torch.device | str) -> str:
    """``"device"`` or ``"cpu"`` for ``--decode spec`` on ``device`` (``auto``: device on CUDA only)."""
    if spec not in DECODE_MODES:
        raise TlkitError(f"unknown --decode {spec!r}; choose one of: {', '.join(DECODE_MODES)}")
    if spec == "auto":
        return "device" if torch.device(device).type == "cuda" else "cpu"
    return spec


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG for the device: its bytes and the size PIL would decode it at.

    Attributes:
        data: uint8 ``[n]``, the file's bytes.
        size: ``(width, height)`` after PIL's ``draft`` for the size hint (the full size without one).
        path: the file.
    """

    data: torch.Tensor
    size: tuple[int, int]
    path: str


def device_jpeg(path: str | os.PathLike, size_hint: int | None) -> EncodedJpeg | None:
    """The file as an :class:`EncodedJpeg` when the device decodes it as :func:`load_image` would; ``None``
    sends it to the CPU path (not a JPEG, not RGB, EXIF-rotated, above the pixel limit, unreadable, or no
    end marker: a truncated file, which the CPU path reports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format != "JPEG" or img.mode != "RGB" or img.width * img.height > MAX_IMAGE_PIXELS:
                    return None
                if img.getexif().get(_ORIENTATION, 1) in range(2, 9):
                    return None
                if size_hint:
                    img.draft("RGB", (size_hint, size_hint))
                size = img.size
        data = Path(path).read_bytes()
    except Exception:  # noqa: BLE001 - the CPU path decodes it again and names the problem
        return None
    if not data.endswith(b"\xff\xd9"):
        return None
    return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), size, str(path))


class EncodedImageDataset(ImageDataset):
    """:class:`~tlkit.data.ImageDataset` whose device-decodable JPEGs come as :class:`EncodedJpeg` (the CPU
    transform applies to every other file, as before)."""

    def __getitem__(self, i: int) -> tuple[Any, int, int, str | None]:
        enc = device_jpeg(self.records[i].path, self.size_hint)
        if enc is None:
            return super().__getitem__(i)
        return enc, self.targets[i], i, None


class PendingBatch(NamedTuple):
    """:func:`collate_encoded`'s batch: decodable items in dataset order, each an :class:`EncodedJpeg` or a
    CPU-made float tensor ``[3, H, W]``; targets and indices as in :class:`~tlkit.data.Batch`."""

    items: list
    targets: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str]]


def collate_encoded(batch: Sequence[tuple[Any, int, int, str | None]]) -> PendingBatch:
    """Like :func:`~tlkit.data.collate_skipping`, without stacking (JPEGs are decoded later, on the device)."""
    good = [item for item in batch if item[0] is not None]
    failures = [(int(i), str(reason)) for img, _, i, reason in batch if img is None]
    return PendingBatch([item[0] for item in good], stack_targets([item[1] for item in good]),
                        torch.tensor([item[2] for item in good], dtype=torch.long), failures)


class DeviceEvalTransform:
    """The eval transform in tensor operations: uint8 ``[3, h, w]`` -> normalised float32 ``[3, H, W]``.

    Covers what :func:`~tlkit.data.numpy_transform.numpy_eval_transform` covers, with the filters tensors
    resize with (nearest, bilinear, bicubic); :meth:`of` returns ``None`` for any other config.
    """

    def __init__(self, cfg: DataConfig, interpolation: str):
        from torchvision.transforms import InterpolationMode

        _, self.h, self.w = cfg.input_size
        self.scale = math.floor(self.h / (cfg.crop_pct or DEFAULT_CROP_PCT))
        self.mode = InterpolationMode(interpolation)
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def of(cls, cfg: DataConfig) -> "DeviceEvalTransform | None":
        _, h, w = cfg.input_size
        interp = cfg.interpolation or DEFAULT_INTERPOLATION
        if (h != w or (cfg.crop_mode or "center") != "center" or interp not in _FILTERS or len(cfg.mean) != 3
                or 0 in cfg.std):
            return None
        return cls(cfg, interp)

    def geometry(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 ``[3, h, w]`` decoded at full size -> uint8 ``[3, H, W]``: draft reduction to ``size``
        ``(w, h)``, short side resized, center crop."""
        from torchvision.transforms.v2 import functional as F

        if (x.shape[-1], x.shape[-2]) != tuple(size):  # PIL's draft: libjpeg's 1/f scale, as an f x f average
            f = max(1, round(x.shape[-1] / size[0]))
            small = torch.nn.functional.avg_pool2d(x[None].float(), f, ceil_mode=True)[0]
            if (small.shape[-1], small.shape[-2]) != tuple(size):
                small = F.resize(small, [size[1], size[0]], antialias=True)
            x = small.round_().clamp_(0, 255).to(torch.uint8)
        new_w, new_h = resized_short(x.shape[-1], x.shape[-2], self.scale)
        if (new_w, new_h) != (x.shape[-1], x.shape[-2]):
            x = F.resize(x, [new_h, new_w], interpolation=self.mode, antialias=True)
        return F.center_crop(x, [self.h, self.w])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std`` (timm's ToTensor + Normalize)."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.float().div_(255).sub_(mean).div_(std)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 RGB ``[3, h, w]`` images on ``device``, one call for the list (one per image before torchvision 0.19)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except TypeError:  # torchvision < 0.19 takes one tensor
        return [decode_jpeg(d, mode=ImageReadMode.RGB, device=device) for d in data]


class DeviceDecoder:
    """:class:`PendingBatch` -> :class:`~tlkit.data.Batch` with images on ``device``; a JPEG the device fails
    to decode is decoded by the CPU path (one debug line), and skipped when that fails too."""

    def __init__(self, transform: DeviceEvalTransform, dataset: ImageDataset, device: torch.device):
        self.transform, self.dataset, self.device = transform, dataset, torch.device(device)
        self.fallbacks = 0  # JPEGs the device could not decode

    def _jpegs(self, encoded: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for s in range(0, len(encoded), CHUNK):
            chunk = encoded[s:s + CHUNK]
            try:
                images = _decode_jpegs([e.data for e in chunk], self.device)
            except RuntimeError:  # one bad file fails the call: decode them one by one
                images = [self._one(e) for e in chunk]
            out += [None if img is None else self.transform.geometry(img, e.size) for img, e in zip(images, chunk)]
        return out

    def _one(self, e: EncodedJpeg) -> torch.Tensor | None:
        try:
            return _decode_jpegs([e.data], self.device)[0]
        except RuntimeError as err:
            log.debug("%s: device decoding failed (%s); decoding on the CPU", e.path, err)
            return None

    def _cpu(self, index: int) -> tuple[torch.Tensor | None, str | None]:
        self.fallbacks += 1
        try:
            img = load_image(self.dataset.records[index].path, size_hint=self.dataset.size_hint)
        except ImageDecodeError as e:
            return None, e.reason
        return self.dataset.transform(img).to(self.device), None

    def __call__(self, batch: PendingBatch) -> Batch:
        pos = [k for k, item in enumerate(batch.items) if isinstance(item, EncodedJpeg)]
        decoded = dict(zip(pos, self._jpegs([batch.items[k] for k in pos])))
        normal = [k for k in pos if decoded[k] is not None]
        images: dict[int, torch.Tensor] = {}
        if normal:
            images.update(zip(normal, self.transform.normalize(torch.stack([decoded[k] for k in normal]))))
        failures = list(batch.failures)
        for k, item in enumerate(batch.items):
            if k in images:
                continue
            index = int(batch.indices[k])
            img, reason = (item.to(self.device), None) if k not in decoded else self._cpu(index)
            if img is None:
                failures.append((index, reason))
            else:
                images[k] = img
        keep = sorted(images)
        stacked = torch.stack([images[k] for k in keep]) if keep else None
        return Batch(stacked, batch.targets[keep], batch.indices[keep], failures)


class DeviceBatches:
    """A loader of :class:`PendingBatch` es as :class:`~tlkit.data.Batch` es decoded on the device."""

    decode_path = "device"

    def __init__(self, loader: Iterable[PendingBatch], decoder: DeviceDecoder):
        self.loader, self.decoder = loader, decoder

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for pending in self.loader:
            yield self.decoder(pending)


def decode_path_of(loader: Any) -> str:
    """``"device"`` for a loader of :func:`eval_loader`'s device path, else ``"cpu"``."""
    return getattr(loader, "decode_path", "cpu")


def eval_loader(records: Sequence, data_config: DataConfig, *, batch_size: int, workers: int,
                device: torch.device | str, decode: str = "auto", class_to_idx: dict[str, int] | None = None,
                sampler: Sequence[int] | None = None, seed: int = 0) -> tuple[Iterable[Batch], str]:
    """Batches of ``records`` with ``data_config``'s eval preprocessing, and the path that makes them.

    Args:
        decode: ``auto`` (``device`` on CUDA, else ``cpu``) | ``cpu`` | ``device`` (on a CPU: the twin).
        sampler: dataset indices to load (default all, in order).
        batch_size, workers, device, class_to_idx, seed: as :func:`tlkit.data.make_loader`.

    Returns:
        ``(loader, path)``: ``path`` is ``"device"`` or ``"cpu"`` (the CPU path when the device path
        does not cover the config's filter or crop; one info line says so).
    """
    from tlkit.data.prefetch import inference_batches
    from tlkit.data.transforms import build_transform, size_hint_for

    cfg = DataConfig.from_dict(data_config)
    tf, hint = build_transform(cfg), size_hint_for(cfg)
    path, device_tf = resolve_decode(decode, device), DeviceEvalTransform.of(cfg)
    if path == "device" and device_tf is None:
        log.info("decoding on the CPU: the device path does not cover interpolation %s, crop mode %s",
                 cfg.interpolation, cfg.crop_mode)
        path = "cpu"
    if path == "cpu":
        ds = ImageDataset(records, tf, class_to_idx, size_hint=hint)
        if sampler is None:
            return inference_batches(ds, batch_size=batch_size, workers=workers, device=device), path
        return make_loader(ds, batch_size=batch_size, workers=workers, device=device, sampler=sampler, seed=seed), path
    ds = EncodedImageDataset(records, tf, class_to_idx, size_hint=hint)
    loader = make_loader(ds, batch_size=batch_size, workers=workers, device=device, sampler=sampler, seed=seed,
                         collate_fn=collate_encoded)
    return DeviceBatches(loader, DeviceDecoder(device_tf, ds, torch.device(device))), path


__all__ = ["DeviceBatches", "DeviceDecoder", "DeviceEvalTransform", "EncodedJpeg",
           "decode_path_of", "device_jpeg", "eval_loader", "resolve_decode"]
