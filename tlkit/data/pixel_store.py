"""The pool as uint8 pixels at a model's eval geometry, decoded once and reused: :func:`pool_pixels`.

A fine-tuned active-learning round scores the whole pool with its new model. Decoding every pool image
with PIL again each round would keep the GPU waiting on the host's cores; the pixels a model sees
after the eval resize and center crop do not change between rounds (only the weights do). So the first
round decodes the pool once into ``<folder>/<geometry>/pixels-<id>.npy``, a uint8 ``[m, 3, H, W]`` array
read back memory-mapped, with ``index.json`` naming it and listing each file's path, fingerprint
(:func:`tlkit.core.fingerprint.file_fingerprint`) and row (``-1`` and the reason for a file that could not be
decoded). Later rounds reuse rows whose path and fingerprint are unchanged and decode only new or changed
files into a new array, swapped in atomically (the array is written and synced under a temporary name
and renamed, then ``index.json`` is replaced; a crash in between leaves the previous store intact and an
orphan array that the next write removes).

Scoring from the store (:class:`PixelBatches`) moves uint8 rows to the device and normalises them there:
``(x / 255 - mean) / std`` in float32, the same operations as timm's ``ToTensor`` + ``Normalize``, on the
same uint8 pixels the CPU path computes (:func:`tlkit.data.numpy_transform.numpy_eval_pixels`, which
``tests/test_fast_start.py`` holds to timm's transform bit-for-bit). ``tests/test_round_gpu_paths.py``
checks the probabilities against today's path on real JPEGs and PNGs.

The geometry (input size, filter, crop_pct, crop mode and the decode size hint) names the subfolder, so
two backbones with the same geometry share one store and another size gets its own. Mean and std are not
part of it (they apply on the device).

Example:
    >>> rows = pool_pixels(project.cache_dir / "pixels", paths, predictor.data_config)   # doctest: +SKIP
    >>> rows.pixels.shape, rows.decoded                                                    # doctest: +SKIP
    ((9998, 3, 224, 224), 0)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from tlkit.core.io import fsync_dir, read_json, run_digest, write_json
from tlkit.data.config import DataConfig
from tlkit.data.loader import Batch
from tlkit.data.numpy_transform import ArrayImages, collate_arrays, numpy_eval_pixels
from tlkit.data.sources import ImageRecord

log = logging.getLogger(__name__)

#: pixel bytes above which the pool is not stored (``TLKIT_PIXEL_STORE_GB``, default 32 GiB): 214,000 images
#: at 224 px (147 KiB each), or 124,000 at 288 px. A bigger pool is scored through the device decoder on CUDA
#: or today's CPU path each round: storing a million 224 px images would take 140 GiB of disk.
STORE_LIMIT_BYTES = int(float(os.environ.get("TLKIT_PIXEL_STORE_GB", "32")) * 2**30)
#: free space left on the cache's filesystem after writing a store
FREE_MARGIN = 1 << 30
INDEX = "index.json"
#: images decoded per batch when the store is filled (bounds memory: 64 x 147 KiB at 224 px)
FILL_BATCH = 64


def geometry_key(cfg: DataConfig) -> str:
    """``"<H>x<W>-<digest>"``: the store subfolder for a data config's eval geometry (mean/std excluded)."""
    geometry = {"input_size": list(cfg.input_size), "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
                "crop_mode": cfg.crop_mode, "size_hint": cfg.size_hint()}
    _, h, w = cfg.input_size
    return f"{h}x{w}-{run_digest(json.dumps(geometry, sort_keys=True))[:12]}"


@dataclass(frozen=True)
class PixelRows:
    """The store's rows for a list of files (:func:`pool_pixels`).

    Attributes:
        pixels: uint8 ``[m, 3, H, W]``, a read-only memmap of the store.
        rows: ``[n]`` int64, the row of each requested file, ``-1`` for a file that could not be decoded.
        failures: ``[(request index, reason)]`` of those files.
        decoded: files decoded by this call (0 when the store already held every one).
        folder: the store's folder.
    """

    pixels: np.ndarray
    rows: np.ndarray
    failures: list[tuple[int, str]]
    decoded: int
    folder: Path


def _read_index(folder: Path) -> dict | None:
    try:
        index = read_json(folder / INDEX)
        pixels = np.load(folder / index["pixels"], mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    index["array"] = pixels
    return index


def _threads() -> int:
    from tlkit.core.runtime import default_workers

    return max(1, default_workers())


def pool_pixels(folder: str | os.PathLike, paths: Sequence[str | os.PathLike], data_config: DataConfig,
                *, fps: Sequence[str] | None = None) -> PixelRows | None:
    """The eval-geometry uint8 pixels of ``paths`` from the store under ``folder`` (see the module docstring),
    decoding only files the store does not hold unchanged.

    Args:
        folder: the stores' folder (a project's ``cache/pixels``); the geometry picks a subfolder.
        paths: the files, in the order of the returned rows.
        data_config: the model's data config (its eval geometry).
        fps: the files' fingerprints when already taken.

    Returns:
        The rows, or ``None`` (one info line says why) when the config's geometry is not one
        :func:`~tlkit.data.numpy_transform.numpy_eval_pixels` covers, the pool would exceed
        :data:`STORE_LIMIT_BYTES`, or the disk lacks the space.
    """
    from tlkit.core.fingerprint import UNREADABLE, fingerprints

    cfg = DataConfig.from_dict(data_config)
    to_pixels = numpy_eval_pixels(cfg)
    if to_pixels is None:
        log.info("pixel store: the eval geometry (%s, crop %s) is not covered; decoding each time",
                 cfg.interpolation, cfg.crop_mode)
        return None
    store = Path(folder) / geometry_key(cfg)
    keys = [str(p) for p in paths]
    fps = list(fps) if fps is not None else fingerprints(keys)
    index = _read_index(store)
    known = {} if index is None else {(p, fp): (row, reason) for p, fp, row, reason in index["rows"]}
    found = [known.get((k, fp)) if fp != UNREADABLE else None for k, fp in zip(keys, fps)]
    if index is not None and all(f is not None for f in found):
        rows = np.array([f[0] for f in found], dtype=np.int64)
        failures = [(i, f[1]) for i, f in enumerate(found) if f[0] < 0]
        log.info("pixel store %s: all %d images reused", store, len(keys))
        return PixelRows(index["array"], rows, failures, 0, store)
    row_bytes = int(np.prod(cfg.input_size))
    n_ok = sum(1 for f in found if f is None or f[0] >= 0)
    if n_ok * row_bytes > STORE_LIMIT_BYTES:
        log.info("pixel store: %d images of %d KiB exceed the %d GiB limit (TLKIT_PIXEL_STORE_GB); decoding each "
                 "time", n_ok, row_bytes // 1024, STORE_LIMIT_BYTES >> 30)
        return None
    store.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(store).free < n_ok * row_bytes + FREE_MARGIN:
        log.info("pixel store: not enough free space in %s for %d MiB; decoding each time", store,
                 n_ok * row_bytes >> 20)
        return None
    return _write(store, keys, fps, found, index, to_pixels, cfg)


def _write(store: Path, keys: list[str], fps: list[str], found: list, index: dict | None, to_pixels,
           cfg: DataConfig) -> PixelRows:
    """A new array: reused rows copied from the old one, the rest decoded; then swapped in."""
    from numpy.lib.format import open_memmap

    from tlkit.data.prefetch import threaded_batches

    todo = [i for i, f in enumerate(found) if f is None]
    reused = [i for i, f in enumerate(found) if f is not None and f[0] >= 0]
    records = [ImageRecord(Path(keys[i]), Path(keys[i]).name, None) for i in todo]
    images = ArrayImages(records, to_pixels, size_hint=cfg.size_hint())
    name = f"pixels-{secrets.token_hex(6)}.npy"
    reasons: dict[int, str] = {i: f[1] for i, f in enumerate(found) if f is not None and f[0] < 0}
    # row j holds todo[j] (zeros when it fails to decode: never referenced), then the reused rows
    slot = {i: j for j, i in enumerate(todo)} | {i: len(todo) + j for j, i in enumerate(reused)}
    tmp = store / f".{name}.tmp"
    arr = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(1, len(slot)), *cfg.input_size))
    try:
        for batch in threaded_batches(images, batch_size=FILL_BATCH, threads=_threads(), collate=collate_arrays):
            for j, reason in batch.failures:
                reasons[todo[j]] = reason
            for img, j in zip(batch.images if batch.images is not None else (), batch.indices):
                arr[int(j)] = img
        old = index["array"] if index is not None else None
        for i in reused:
            arr[slot[i]] = old[found[i][0]]
        arr.flush()
        del arr
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, store / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    rows = np.array([-1 if i in reasons else slot[i] for i in range(len(keys))], dtype=np.int64)
    entries = [[k, fp, int(r), reasons.get(i, "")] for i, (k, fp, r) in enumerate(zip(keys, fps, rows))]
    write_json(store / INDEX, {"geometry": cfg.to_dict(), "pixels": name, "rows": entries})
    fsync_dir(store)
    for stale in [*store.glob("pixels-*.npy"), *store.glob(".pixels-*.tmp")]:
        if stale.name != name:
            stale.unlink(missing_ok=True)
    failures = [(i, reasons[i]) for i in range(len(keys)) if rows[i] < 0]
    log.info("pixel store %s: %d images decoded, %d reused, %d could not be decoded", store, len(todo),
             len(reused), len(failures))
    return PixelRows(np.load(store / name, mmap_mode="r"), rows, failures, len(todo), store)


class PixelBatches:
    """Batches of a :class:`PixelRows` normalised on ``device``, as :class:`~tlkit.data.Batch` es whose
    indices are request indices (the undecodable files are the first batch's failures).

    The next batch's rows are read from the memory map in a background thread while the current one runs.
    """

    decode_path = "store"

    def __init__(self, rows: PixelRows, data_config: DataConfig, *, batch_size: int, device: torch.device | str):
        cfg = DataConfig.from_dict(data_config)
        self.rows, self.batch_size, self.device = rows, batch_size, torch.device(device)
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.order = np.flatnonzero(rows.rows >= 0)

    def __len__(self) -> int:
        return max(1, -(-len(self.order) // self.batch_size))

    def _read(self, start: int) -> tuple[torch.Tensor, np.ndarray]:
        idx = self.order[start:start + self.batch_size]
        r = self.rows.rows[idx]
        contiguous = len(r) and r[-1] - r[0] == len(r) - 1 and bool((np.diff(r) == 1).all())
        block = np.array(self.rows.pixels[r[0]:r[-1] + 1] if contiguous else self.rows.pixels[np.sort(r)])
        if not contiguous:  # rows were sorted for the read; put them back in request order
            block = block[np.argsort(np.argsort(r))]
        x = torch.from_numpy(block)
        return (x.pin_memory() if self.device.type == "cuda" else x), idx

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` on the device -> float32 ``(x / 255 - mean) / std``."""
        return x.float().div_(255).sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[Batch]:
        failures = list(self.rows.failures)
        if not len(self.order):
            yield Batch(None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), failures)
            return
        starts = range(0, len(self.order), self.batch_size)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlkit-pixels") as pool:
            pending = pool.submit(self._read, starts[0])
            for k in range(len(starts)):
                x, idx = pending.result()
                if k + 1 < len(starts):
                    pending = pool.submit(self._read, starts[k + 1])
                images = self.normalize(x.to(self.device, non_blocking=True))
                yield Batch(images, torch.full((len(idx),), -1, dtype=torch.long),
                            torch.from_numpy(idx.astype(np.int64)), failures if k == 0 else [])


__all__ = ["INDEX", "PixelBatches", "PixelRows", "STORE_LIMIT_BYTES", "geometry_key", "pool_pixels"]
