"""Feature extraction: images -> ``features.npy`` + ``index.csv`` + ``meta.json``, streamed and resumable.

Rows are written straight into a memory-mapped ``.npy`` file as batches finish, so memory stays
O(batch) whatever the number of images. Every few seconds the finished row count is committed to
``progress.json`` (atomically, after the rows are flushed); a re-run with the same inputs and
settings continues from there. The final files appear only when everything is done: a killed run
never leaves a ``features.npy`` that disagrees with its ``index.csv``.

Output folder:
    features.npy   float32 [N, D]; row i is the image on row i of index.csv
    index.csv      path (relative to the input root), label (when known)
    meta.json      backbone, weights source + sha256, data config, D, dtype, count, version, elapsed
    skipped.csv    path, reason — only when some files could not be decoded
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

import tlkit
from tlkit import data as tdata
from tlkit.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from tlkit.errors import TlkitError
from tlkit.io import read_json, write_csv, write_json
from tlkit.inference import prepare_for_inference
from tlkit.runtime import autocast, default_workers, inference_batch_size, precision_name, resolve_device, resolve_precision

log = logging.getLogger(__name__)

FEATURES = "features.npy"
PARTIAL = "features.partial.npy"
PROGRESS = "progress.json"
COMMIT_EVERY_S = float(os.environ.get("TLKIT_COMMIT_EVERY_S", "5"))


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract_features` wrote.

    Attributes:
        out: the output folder.
        count: rows in ``features.npy``.
        dim: feature dimension D.
        skipped: number of files that could not be decoded.
        resumed_from: rows already done by an earlier, interrupted run (0 for a fresh run).
        elapsed_s: wall time of this call.
        images_per_s: throughput over the images processed by this call.
        meta: the content of ``meta.json``.
    """

    out: Path
    count: int
    dim: int
    skipped: int
    resumed_from: int
    elapsed_s: float
    images_per_s: float
    meta: dict[str, Any]


def load_features(out: str | os.PathLike, *, mmap: bool = True) -> tuple[np.ndarray, list[dict[str, str]], dict]:
    """Read an extract folder: (features [N, D], index rows, meta)."""
    out = Path(out)
    if not (out / FEATURES).is_file():
        raise TlkitError(f"{out} is not a tlkit extract folder (no {FEATURES}); run `tlkit extract` first")
    from tlkit.io import read_csv

    feats = np.load(out / FEATURES, mmap_mode="r" if mmap else None)
    return feats, read_csv(out / "index.csv"), read_json(out / "meta.json")


def _fingerprint(records: Sequence[tdata.ImageRecord], bb: Backbone, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.rel}\0{os.path.getsize(r.path) if r.path.exists() else -1}\n".encode())
    h.update(json.dumps({"backbone": bb.name, "weights": bb.weights.to_dict(), **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _load_progress(out: Path, fingerprint: str, n: int, dim: int) -> tuple[int, list]:
    """Rows already done by an earlier run with the same fingerprint, and its failures."""
    try:
        prog = read_json(out / PROGRESS)
        partial = np.load(out / PARTIAL, mmap_mode="r")
    except (OSError, ValueError):
        return 0, []
    if prog.get("fingerprint") != fingerprint or partial.shape != (n, dim):
        log.info("earlier partial run in %s had other inputs or settings; starting over", out)
        return 0, []
    return int(prog["done"]), [tuple(f) for f in prog.get("failures", [])]


def _finished(out: Path, fingerprint: str) -> dict | None:
    """meta.json of a complete earlier run with the same inputs and settings, else None."""
    try:
        meta = read_json(out / "meta.json")
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") == fingerprint and (out / FEATURES).is_file() and not (out / PARTIAL).exists():
        return meta
    return None


class _Writer:
    """Streams rows into the partial memmap and commits progress atomically."""

    def __init__(self, out: Path, n: int, dim: int, fingerprint: str, done: int, failures: list):
        self.out, self.fingerprint, self.failures = out, fingerprint, failures
        mode = "r+" if done else "w+"
        self.array = np.lib.format.open_memmap(out / PARTIAL, mode=mode, dtype=np.float32, shape=(n, dim))
        self.done = done
        self._last_commit = time.monotonic()

    def write(self, indices: np.ndarray, feats: np.ndarray | None, failures: list, upto: int) -> None:
        if feats is not None and len(indices):
            self.array[indices] = feats
        self.failures.extend(failures)
        self.done = upto
        if time.monotonic() - self._last_commit > COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        self.array.flush()
        write_json(self.out / PROGRESS, {"fingerprint": self.fingerprint, "done": self.done, "failures": self.failures})
        self._last_commit = time.monotonic()


def _prepare_model(bb: Backbone, device: torch.device, dtype: torch.dtype | None, input_size: tuple,
                   compile: bool, fuse: bool) -> torch.nn.Module:
    model = prepare_for_inference(bb.model, device, dtype, input_size=tuple(input_size), fuse=fuse)
    return torch.compile(model) if compile else model


def _run(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    writer: _Writer,
    offset: int,
    device: torch.device,
    dtype: torch.dtype | None,
    strict: bool,
    progress: Callable[[int], None] | None,
) -> None:
    """Embed batches in order; rows below ``writer.done`` are always finished."""
    non_blocking = device.type == "cuda"
    seen = offset
    with torch.inference_mode():
        for batch in loader:
            failures = [(offset + int(i), reason) for i, reason in batch.failures]
            if strict and failures:
                raise _StrictFailure(*failures[0])
            rows, feats = np.empty(0, dtype=np.int64), None
            if batch.images is not None and len(batch.images):
                x = batch.images.to(device, non_blocking=non_blocking).contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    feats = model(x).float().cpu().numpy()
                rows = batch.indices.numpy() + offset
            n_batch = len(rows) + len(failures)
            seen += n_batch
            writer.write(rows, feats, failures, upto=seen)
            if progress:
                progress(n_batch)
    writer.commit()


class _StrictFailure(Exception):
    def __init__(self, index: int, reason: str):
        super().__init__(index, reason)
        self.index, self.reason = index, reason


def _finalize(out: Path, source: tdata.ImageSource, writer: _Writer, meta: dict[str, Any]) -> tuple[int, int]:
    """Compact good rows into features.npy, write index/meta/skipped, drop the partial files."""
    records = source.records
    bad = {i for i, _ in writer.failures}
    keep = np.array([i for i in range(len(records)) if i not in bad], dtype=np.int64)
    dim = writer.array.shape[1]
    tmp = out / f".{FEATURES}.tmp"
    final = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keep), dim))
    for start in range(0, len(keep), 4096):
        final[start : start + 4096] = writer.array[keep[start : start + 4096]]
    final.flush()
    del final
    os.replace(tmp, out / FEATURES)
    labeled = any(r.label is not None for r in records)
    header = ["path", "label"] if labeled else ["path"]
    write_csv(out / "index.csv", header, ([records[i].rel, records[i].label or ""][: len(header)] for i in keep))
    if writer.failures:
        tdata.write_skipped(out / "skipped.csv", records, writer.failures)
    elif (out / "skipped.csv").exists():
        (out / "skipped.csv").unlink()
    write_json(out / "meta.json", {**meta, "count": int(len(keep)), "skipped": len(bad)})
    del writer.array
    for name in (PARTIAL, PROGRESS):
        (out / name).unlink(missing_ok=True)
    return len(keep), len(bad)


def extract_features(
    images: str | os.PathLike | tdata.ImageSource,
    out: str | os.PathLike,
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    batch_size: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    strict: bool = False,
    compile: bool = False,
    fuse: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ExtractResult:
    """Embed every image under ``images`` with a frozen backbone and write the results to ``out``.

    Args:
        images: a class-folder tree, a flat folder, a CSV manifest, or an :class:`ImageSource`.
        out: output folder (created). An interrupted run there is resumed when inputs match.
        backbone: a backbone name or an already created :class:`Backbone` (its head is ignored).
        weights: a local weights file for the backbone.
        batch_size: images per forward pass (default: :func:`tlkit.runtime.inference_batch_size`,
            8 on a CPU and 64 on a GPU).
        image_size: resize to this square size instead of the backbone's default.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` (bf16 where fast) | ``fp32`` | ``bf16`` | ``fp16``.
        workers: DataLoader decoding processes (default: half the cores from 4 up, else 0).
        strict: fail on the first file that cannot be decoded instead of skipping it.
        compile: ``torch.compile`` the model first (pays off on GPUs and big runs).
        fuse: fold BatchNorm layers into the convolutions before them (checked; see
            :mod:`tlkit.inference`).
        progress: called with the number of images finished after every batch.

    Returns:
        An :class:`ExtractResult`; the features are in ``out/features.npy`` ([N, D] float32).

    Example:
        >>> res = extract_features("photos/", "feats/", image_size=160)
        >>> feats = np.load("feats/features.npy")          # [res.count, res.dim]
    """
    t0 = time.perf_counter()
    out = Path(out)
    source = images if isinstance(images, tdata.ImageSource) else tdata.scan_images(images)
    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, pretrained=pretrained, weights=weights)
    if getattr(bb.model, "num_classes", 0):
        bb.model.reset_classifier(0)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    data_config = dict(bb.data_config)
    if image_size:
        data_config["input_size"] = (3, int(image_size), int(image_size))
    dim = int(bb.num_features)
    n = len(source.records)
    settings = {"data_config": data_config, "precision": precision_name(dtype)}
    fingerprint = _fingerprint(source.records, bb, settings)
    out.mkdir(parents=True, exist_ok=True)
    finished = _finished(out, fingerprint)
    if finished is not None:
        log.info("%s already holds these features; nothing to do", out)
        if progress:
            progress(n)
        return ExtractResult(out, finished["count"], dim, finished["skipped"], n, time.perf_counter() - t0, 0.0, finished)
    done, failures = _load_progress(out, fingerprint, n, dim)
    if done:
        log.info("resuming %s: %d of %d images already done", out, done, n)
        if progress:
            progress(done)
    writer = _Writer(out, n, dim, fingerprint, done, failures)
    transform = tdata.build_transform(data_config)
    todo = source.records[done:]
    if todo:
        dataset = tdata.ImageDataset(todo, transform, size_hint=data_config["input_size"][-1])
        nw = default_workers() if workers is None else workers
        loader = tdata.make_loader(dataset, batch_size=batch_size or inference_batch_size(dev), workers=nw, device=dev)
        model = _prepare_model(bb, dev, dtype, data_config["input_size"], compile, fuse)
        try:
            _run(model, loader, writer, done, dev, dtype, strict, progress)
        except _StrictFailure as e:
            writer.commit()
            raise TlkitError(
                f"cannot decode {source.records[e.index].rel}: {e.reason} (--strict); fix or remove it and "
                "re-run (finished rows are kept), or drop --strict to skip such files"
            ) from None
    meta = {
        "tlkit_version": tlkit.__version__,
        "backbone": bb.name,
        "weights": bb.weights.to_dict(),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "dim": dim,
        "dtype": "float32",
        "precision": precision_name(dtype),
        "device": str(dev),
        "source": {"root": str(source.root), "kind": source.kind, "classes": list(source.classes)},
        "fingerprint": fingerprint,
    }
    elapsed = time.perf_counter() - t0
    meta["elapsed_s"] = round(elapsed, 3)
    count, skipped = _finalize(out, source, writer, meta)
    if skipped:
        log.warning("%s; listed in %s", tdata.summarize_failures(writer.failures), out / "skipped.csv")
    rate = (n - done) / elapsed if elapsed > 0 else 0.0
    return ExtractResult(out, count, dim, skipped, done, elapsed, rate, meta)

