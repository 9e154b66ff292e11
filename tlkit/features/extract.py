"""Feature extraction: images -> ``features.npy`` + ``index.csv`` + ``meta.json``, streamed, resumable, incremental.

Rows are written into ``features.partial.npy`` with ordinary file writes as batches finish, so
memory stays O(batch) whatever the number of images. Every few seconds the finished row count is
committed to ``progress.json`` (atomically, after the rows are fsynced); a re-run with the same
inputs and settings continues from there. The final files appear together only when everything is
done (see :mod:`tlkit.features.store` for the layout and the final swap): a killed or disk-full run
never leaves a ``features.npy`` that disagrees with its ``index.csv``.

Reuse: each image's content fingerprint (:mod:`tlkit.core.fingerprint`) is stored in ``index.csv``.
When ``out`` holds a finished result made with the same backbone, weights and settings, a new
call copies the rows whose path and fingerprint are unchanged, embeds only new or changed images,
and drops images that are gone; rows follow the new source's order. One extract at a time may
write a folder (``out/.lock``, :mod:`tlkit.core.locks`).

Warm start: when an OpenVINO model for this exact request is already compiled and its index record
checks out (:mod:`tlkit.features.warm`), the run needs neither torch nor timm (NumPy preprocessing,
decoding threads) and writes the same folder; this module imports them only on the normal path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import tlkit
from tlkit import data as tdata
from tlkit.core.batch_size import BatchChoice, parse_batch_size
from tlkit.core.constants import DECODE_MODES, DEFAULT_BACKBONE, LABEL_DELIM
from tlkit.core.cpuinfo import CPU_INFERENCE_BATCH
from tlkit.core.errors import TlkitError
from tlkit.core.fingerprint import UNREADABLE, fingerprints
from tlkit.core.io import read_json, run_digest, write_json
from tlkit.core.locks import hold_lock
from tlkit.data.config import DataConfig
from tlkit.data.prefetch import DECODE_THREADS, threaded_batches
from tlkit.engines import Engine, ModelSpec, create_engine, planned_engine
from tlkit.features.store import (
    FEATURES, LOCK, PARTIAL, PROGRESS, RowFile, Shard, disk_full, ensure_free, finalize, load_features,
    read_previous, recover, set_bytes, storage_dtype,
)
from tlkit.features.warm import (
    WarmBackbone, WarmRequest, WarmStart, find_warm_start, record, same_preprocessing, warm_request,
)

if TYPE_CHECKING:  # torch and timm are imported only by the normal path (see tlkit.features.warm)
    import torch

    from tlkit.data.numpy_transform import ArrayBatch
    from tlkit.models.backbones import Backbone

log = logging.getLogger(__name__)

__all__ = ["ExtractOptions", "ExtractResult", "extract_features", "load_features"]

COMMIT_EVERY_S = float(os.environ.get("TLKIT_COMMIT_EVERY_S", "5"))


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract_features` wrote.

    Attributes:
        out: the output folder.
        count: rows in ``features.npy``.
        dim: feature dimension D.
        skipped: number of files that could not be decoded.
        resumed_from: images already done by an earlier, interrupted run (all of them when the
            folder already held this exact result; 0 for a fresh run).
        elapsed_s: wall time of this call.
        images_per_s: throughput over the images embedded by this call.
        meta: the content of ``meta.json``.
        reused: rows copied from the earlier finished result in ``out`` (unchanged images).
        embedded: images embedded by this call.
    """

    out: Path
    count: int
    dim: int
    skipped: int
    resumed_from: int
    elapsed_s: float
    images_per_s: float
    meta: dict[str, Any]
    reused: int = 0
    embedded: int = 0


@dataclass(frozen=True)
class ExtractOptions:
    """How :func:`extract_features` embeds; its keyword arguments of the same names.

    Attributes:
        batch_size: images per forward pass, or ``auto`` (``None``): 8 on a CPU
            (:func:`tlkit.core.runtime.inference_batch_size`), the largest power of two that fits on CUDA
            (probed, :func:`tlkit.core.batch_size.inference_batch`); meta.json says which and how.
        image_size: resize to this square size instead of the backbone's default
            (:meth:`tlkit.data.DataConfig.at_size`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` (bf16 where fast) | ``fp32`` | ``bf16`` | ``fp16``.
        workers: DataLoader decoding processes (default: half the cores from 4 up, else 0); on the
            warm start, decoding threads (default ``TLKIT_DECODE_THREADS``, 1).
        strict: fail on the first file that cannot be decoded instead of skipping it.
        compile: ``torch.compile`` the model first (pays off on GPUs and big runs).
        fuse: fold BatchNorm layers into the convolutions before them (checked; see :mod:`tlkit.models.inference`).
        dtype: storage type of ``features.npy``, ``float32`` or ``float16`` (half the disk and
            memory; see :data:`tlkit.features.store.DTYPES` for the rounding it costs).
        decode: ``auto`` (``device`` on CUDA with the torch engine, else ``cpu``) | ``cpu`` | ``device``: where
            JPEGs are decoded and resized (:mod:`tlkit.data.device_decode`; other files always on the CPU).
            meta.json's ``decode`` says which ran; ``device`` rows are part of the settings (never mixed).
        engine: ``auto`` (OpenVINO on a CPU when installed and the model converts, else PyTorch) |
            ``torch`` | ``openvino`` (:mod:`tlkit.engines`). The engine and precision are part of the
            settings: rows made with one are never reused by the other.
    """

    batch_size: int | str | None = None
    image_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    strict: bool = False
    compile: bool = False
    fuse: bool = True
    dtype: str = "float32"
    engine: str = "auto"
    decode: str = "auto"


@dataclass(frozen=True)
class _Job:
    """Everything one extract run needs, resolved: the backbone (head dropped), device, dtype, preprocessing.

    ``warm``: the warm start (:mod:`tlkit.features.warm`; ``bb`` is then a :class:`WarmBackbone`,
    without a model). ``request``: what the normal path records for a later warm start.
    """

    out: Path
    source: tdata.ImageSource
    bb: Backbone | WarmBackbone
    device: torch.device | str
    dtype: torch.dtype | None
    data_config: DataConfig
    opts: ExtractOptions
    progress: Callable[[int], None] | None
    warm: WarmStart | None = None
    request: WarmRequest | None = None

    @property
    def dim(self) -> int:
        return int(self.bb.num_features)

    def planned_engine(self) -> tuple[str, str]:
        """(engine, precision) the run will try first (:func:`tlkit.engines.planned_engine`)."""
        if self.warm is not None:
            return self.warm.engine.name, self.warm.engine.precision
        return planned_engine(self.opts.engine, self.device, self.opts.precision)


def _job(out: Path, source: tdata.ImageSource, backbone: str | Backbone, weights: str | os.PathLike | None,
         pretrained: bool, opts: ExtractOptions, progress: Callable[[int], None] | None,
         request: WarmRequest | None = None) -> _Job:
    """The warm start's job when it checks out (:mod:`tlkit.features.warm`), else the normal one: create the
    backbone (unless given) as a feature extractor and resolve device, precision and size."""
    warm = find_warm_start(request)
    if warm is not None:
        return _Job(out, source, warm.bb, "cpu", None, warm.bb.data_config, opts, progress, warm=warm)
    from tlkit.core.runtime import resolve_device, resolve_precision
    from tlkit.models.backbones import Backbone, create_backbone

    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, pretrained=pretrained, weights=weights)
    if getattr(bb.model, "num_classes", 0):
        bb.model.reset_classifier(0)  # pooled features
    dev = resolve_device(opts.device)
    return _Job(out, source, bb, dev, resolve_precision(opts.precision, dev), bb.data_config.at_size(opts.image_size),
                opts, progress, request=request)


@dataclass
class _Plan:
    """Which rows come from the earlier result and which must be embedded (:func:`_plan`)."""

    fps: list[str]
    settings_key: str
    run_key: str
    base: str                                        # sha256 of the features.npy rows are copied from
    engine: tuple[str, str]                          # (engine, precision) the rows are made with
    reuse: dict[int, int] = field(default_factory=dict)  # new row -> row of the earlier result
    todo: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # rows to embed, in order
    previous: tuple | None = None                    # (features, index, meta) of the earlier result

    @property
    def finished(self) -> bool:
        """``out`` already holds exactly this result (same inputs, settings and images)."""
        return self.previous is not None and self.previous[2].get("run_key") == self.run_key


def _settings_key(job: _Job, engine: tuple[str, str]) -> str:
    """Digest of what decides the rows; the engine only when it is not ``torch`` (older folders stay valid)."""
    settings = {"backbone": job.bb.name, "weights": job.bb.weights.to_dict(),
                "data_config": job.data_config.to_dict(), "precision": engine[1]}
    if engine[0] != "torch":
        settings["engine"] = engine[0]
    if job.opts.dtype != "float32":  # float32 keys stay as they were before the option existed
        settings["storage"] = job.opts.dtype
    if _decode_path(job, engine[0]) == "device":  # device-decoded rows differ slightly from PIL's
        settings["decode"] = "device"
    return run_digest(json.dumps(settings, sort_keys=True, default=str))


def _plan(job: _Job, engine: tuple[str, str], fps: list[str] | None = None) -> _Plan:
    """Fingerprint the images (unless ``fps`` are given) and match them against the earlier result in ``out``."""
    records = job.source.records
    fps = fingerprints([r.path for r in records]) if fps is None else fps
    settings_key = _settings_key(job, engine)
    plan = _Plan(fps, settings_key, run_digest(settings_key, [r.rel for r in records], fps), base="", engine=engine)
    prev = read_previous(job.out)
    if prev is not None and prev[2].get("settings_key") != settings_key and prev[2].get("engine", "torch") != engine[0]:
        log.info("%s was made with engine %s; re-embedding with %s", job.out, prev[2].get("engine", "torch"), engine[0])
    if prev is not None and prev[2].get("settings_key") == settings_key:
        old = {(r["path"], r.get("fingerprint")): j for j, r in enumerate(prev[1])}
        plan.reuse = {i: old[(r.rel, fp)] for i, (r, fp) in enumerate(zip(records, fps))
                      if fp != UNREADABLE and (r.rel, fp) in old}
        plan.base, plan.previous = prev[2]["files"][FEATURES]["sha256"], prev
    plan.todo = np.array([i for i in range(len(records)) if i not in plan.reuse], dtype=np.int64)
    return plan


class _Writer:
    """Streams embedded rows into the partial file and commits progress (rows fsynced first)."""

    def __init__(self, out: Path, part: RowFile, plan: _Plan, done: int, failures: list):
        self.out, self.part, self.plan, self.done, self.failures = out, part, plan, done, failures
        self.resumed = done  # rows of plan.todo finished by an interrupted earlier run
        self.embed_s = 0.0   # seconds in the embedding loop (decode + engine + writes)
        self.batch: BatchChoice | None = None  # the batch size this call embedded with, and how it was chosen
        self._last_commit = time.monotonic()

    def write(self, rows: np.ndarray, feats: np.ndarray | None, failures: list, upto: int) -> None:
        if feats is not None and len(rows):
            self.part.write(rows, feats)
        self.failures.extend(failures)
        self.done = upto
        if time.monotonic() - self._last_commit > COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        self.part.sync()
        write_json(self.out / PROGRESS, {"run_key": self.plan.run_key, "base": self.plan.base, "done": self.done,
                                         "failures": self.failures})
        self._last_commit = time.monotonic()


def _resume(job: _Job, plan: _Plan) -> _Writer | None:
    """The writer of an interrupted run with the same inputs, settings and base, else None."""
    try:
        prog = read_json(job.out / PROGRESS)
    except (OSError, ValueError):
        return None
    if prog.get("run_key") != plan.run_key or prog.get("base") != plan.base:
        log.info("earlier partial run in %s had other inputs or settings; starting over", job.out)
        return None
    part = RowFile.open(job.out / PARTIAL, len(plan.fps), job.dim, job.opts.dtype)
    if part is None:
        return None
    return _Writer(job.out, part, plan, int(prog["done"]), [tuple(f) for f in prog.get("failures", [])])


def _start(job: _Job, plan: _Plan) -> _Writer:
    """A fresh partial file (space checked and preallocated) holding the reused rows."""
    n, dim = len(plan.fps), job.dim
    for name in (PARTIAL, PROGRESS):
        (job.out / name).unlink(missing_ok=True)
    ensure_free(job.out, set_bytes(n, dim, job.opts.dtype), f"{n:,} x {dim} {job.opts.dtype} features")
    part = RowFile.create(job.out / PARTIAL, n, dim, job.opts.dtype)
    if plan.reuse:
        new_rows = np.fromiter(plan.reuse, dtype=np.int64)
        old_rows = np.fromiter(plan.reuse.values(), dtype=np.int64)
        old = plan.previous[0]
        for s in range(0, len(new_rows), 4096):
            part.write(new_rows[s : s + 4096], old[old_rows[s : s + 4096]])
    writer = _Writer(job.out, part, plan, 0, [])
    writer.commit()
    return writer


def _engine(job: _Job) -> Engine:
    """The inference engine for the backbone (``torch`` after one log line when another one cannot run it);
    the warm start's engine when there is one. A built OpenVINO engine is recorded for later warm starts."""
    if job.warm is not None:
        return job.warm.engine
    spec = ModelSpec.of(job.bb.model, job.data_config.input_size, backbone=job.bb.name,
                        weights=job.bb.weights.sha256 or job.bb.weights.source)
    engine = create_engine(spec, engine=job.opts.engine, device=job.device, precision=job.opts.precision,
                           fuse=job.opts.fuse, compile=job.opts.compile)
    if job.request is not None and engine.name == "openvino":
        record(job.request, job.bb, job.data_config, engine)
    return engine


def _decode_path(job: _Job, engine: str) -> str:
    """``"device"`` when JPEGs are decoded on the device (the torch engine, ``--decode`` resolved to
    device, a config the device path covers: :mod:`tlkit.data.device_decode`), else ``"cpu"``."""
    if engine != "torch" or job.warm is not None or (job.opts.decode == "auto" and str(job.device) == "cpu"):
        return "cpu"
    from tlkit.data.device_decode import DeviceEvalTransform, resolve_decode

    if resolve_decode(job.opts.decode, job.device) == "device" and DeviceEvalTransform.of(job.data_config):
        return "device"
    return "cpu"


def _batch_choice(job: _Job, engine: Engine, n: int) -> BatchChoice:
    """The batch size (``auto``: 8 on a CPU, probed with the engine's forward on CUDA) and how it was chosen."""
    if engine.name != "torch":  # OpenVINO and the warm start run on the CPU, without torch
        size = parse_batch_size(job.opts.batch_size)
        return BatchChoice(size, "given") if size else BatchChoice(CPU_INFERENCE_BATCH, "cpu default")
    from tlkit.core.batch_size import inference_batch

    return inference_batch(job.opts.batch_size, engine.device, engine.forward, job.data_config.input_size, n)


def _batches(job: _Job, records: list[tdata.ImageRecord], engine: Engine, batch_size: int):
    """Batches of ``records`` decoded while the engine runs (:func:`tlkit.data.prefetch.inference_batches`).
    For OpenVINO (the warm start, or any run whose preprocessing :mod:`tlkit.data.numpy_transform`
    reproduces bit for bit with the installed timm, :func:`~tlkit.features.warm.same_preprocessing`),
    NumPy batches decoded in threads: the same tensors as timm's transform, at a third of its CPU
    time, which on a small CPU is taken from the model's cores."""
    transform = job.warm.transform if job.warm is not None else None
    if transform is None and engine.name == "openvino" and same_preprocessing(job.data_config):
        from tlkit.data.numpy_transform import numpy_eval_transform

        transform = numpy_eval_transform(job.data_config)
    if transform is not None:
        from tlkit.data.numpy_transform import ArrayImages, collate_arrays

        dataset = ArrayImages(records, transform, size_hint=job.data_config.size_hint())
        return threaded_batches(dataset, batch_size=batch_size, collate=collate_arrays,
                                threads=job.opts.workers or max(1, DECODE_THREADS))
    from tlkit.core.runtime import default_workers
    from tlkit.data.device_decode import eval_loader

    nw = default_workers() if job.opts.workers is None else job.opts.workers
    return eval_loader(records, job.data_config, batch_size=batch_size, workers=nw, device=job.device,
                       decode=_decode_path(job, engine.name))[0]


def _embed(job: _Job, writer: _Writer, engine: Engine | None) -> None:
    """Embed the images still to do, in order; the first ``writer.done`` of ``plan.todo`` are finished.

    On an error (a full disk, an interrupt) the rows finished so far are committed when possible,
    so a re-run resumes after them.
    """
    start = writer.done
    records = [job.source.records[i] for i in writer.plan.todo[start:]]
    if not records:
        return
    t = time.perf_counter()
    writer.batch = _batch_choice(job, engine, len(records))
    try:
        for batch in _batches(job, records, engine, writer.batch.size):
            _embed_batch(job, engine, writer, batch, start)
        writer.embed_s = time.perf_counter() - t
    except BaseException:
        with contextlib.suppress(OSError):
            writer.commit()
        raise
    writer.commit()


def _embed_batch(job: _Job, engine: Engine, writer: _Writer, batch: tdata.Batch | ArrayBatch, start: int) -> None:
    """Embed one batch of ``plan.todo[start:]`` (``batch.indices`` are positions in it) and store its rows."""
    todo = writer.plan.todo
    failures = [(int(todo[start + i]), reason) for i, reason in batch.failures]
    if job.opts.strict and failures:
        raise _strict_error(job, *failures[0])
    rows, feats = np.empty(0, dtype=np.int64), None
    if batch.images is not None and len(batch.images):
        feats = engine(batch.images)
        rows = todo[start + np.asarray(batch.indices)]
    writer.write(rows, feats, failures, upto=writer.done + len(rows) + len(failures))
    if job.progress:
        job.progress(len(rows) + len(failures))


def _strict_error(job: _Job, index: int, reason: str) -> TlkitError:
    return TlkitError(f"cannot decode {job.source.records[index].rel}: {reason} (--strict); fix or remove it and "
                      "re-run (finished rows are kept), or drop --strict to skip such files")


def _meta(job: _Job, plan: _Plan, elapsed: float, embed_s: float = 0.0,
          batch: BatchChoice | None = None) -> dict[str, Any]:
    source = job.source
    extra = {"batch_size": batch.to_dict()} if batch is not None else {}  # none when this call embedded nothing
    return {
        "tlkit_version": tlkit.__version__,
        "backbone": job.bb.name,
        "weights": job.bb.weights.to_dict(),
        "data_config": job.data_config.to_dict(),
        "dim": job.dim,
        "dtype": job.opts.dtype,
        "engine": plan.engine[0],
        "precision": plan.engine[1],
        "decode": _decode_path(job, plan.engine[0]),
        "device": str(job.device),
        "source": {"root": str(source.root), "kind": source.kind, "classes": list(source.classes)},
        "settings_key": plan.settings_key,
        "run_key": plan.run_key,
        "reused": len(plan.reuse),
        "elapsed_s": round(elapsed, 3),
        "embed_s": round(embed_s, 3),
        **extra,
    }


def _finish(job: _Job, writer: _Writer, meta: dict[str, Any]) -> tuple[int, int]:
    """Write the final set (see :func:`tlkit.features.store.finalize`); returns (count, skipped)."""
    records, plan = job.source.records, writer.plan
    bad = {i for i, _ in writer.failures}
    keep = np.array([i for i in range(len(records)) if i not in bad], dtype=np.int64)
    if any(r.labels is not None for r in records):  # a multi-label manifest: each image's set ("" = none)
        header = ["path", "labels", "fingerprint"]
        rows = [[records[i].rel, LABEL_DELIM.join(records[i].labels or ()), plan.fps[i]] for i in keep]
    elif any(r.label is not None for r in records):
        header = ["path", "label", "fingerprint"]
        rows = [[records[i].rel, records[i].label or "", plan.fps[i]] for i in keep]
    else:
        header = ["path", "fingerprint"]
        rows = [[records[i].rel, plan.fps[i]] for i in keep]
    skipped = (lambda p: tdata.write_skipped(p, records, writer.failures)) if bad else None
    finalize(job.out, writer.part, keep, header, rows, skipped, {**meta, "skipped": len(bad)})
    return len(keep), len(bad)


def _output_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TlkitError(f"--out {out} is a file, not a folder; give a new or existing folder for the features")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TlkitError(f"cannot create --out {out}: part of its path is a file; choose another folder") from None
    return out


@contextlib.contextmanager
def _disk_full_as_error(out: Path):
    """A full disk (ENOSPC) becomes a one-line TlkitError about ``out``; other errors pass."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(e.filename, out) from None
        raise


def _unchanged(job: _Job, plan: _Plan, t0: float) -> ExtractResult:
    """The result already in ``out`` (:attr:`_Plan.finished`): nothing is embedded or written."""
    meta, n = plan.previous[2], len(plan.fps)
    log.info("%s already holds these features; nothing to do", job.out)
    if job.progress:
        job.progress(n)
    return ExtractResult(job.out, meta["count"], job.dim, meta["skipped"], n, time.perf_counter() - t0, 0.0,
                         meta, reused=meta["count"], embedded=0)


def _open_writer(job: _Job, plan: _Plan) -> _Writer:
    """The interrupted run's writer when it matches the plan, else a fresh one; reports what is left."""
    writer = _resume(job, plan) or _start(job, plan)
    n, done = len(plan.fps), writer.resumed
    log.info("%s: %d of %d images reused from the earlier result, %d resumed, %d to embed", job.out,
             len(plan.reuse), n, done, len(plan.todo) - done)
    if job.progress and len(plan.reuse) + done:
        job.progress(len(plan.reuse) + done)
    return writer


def _finalize(job: _Job, writer: _Writer, t0: float) -> ExtractResult:
    """Write the final files (:func:`_finish`) and describe the run."""
    plan = writer.plan
    elapsed = time.perf_counter() - t0
    count, skipped = _finish(job, writer, _meta(job, plan, elapsed, writer.embed_s, writer.batch))
    if skipped:
        log.warning("%s; listed in %s", tdata.summarize_failures(writer.failures), job.out / "skipped.csv")
    embedded = len(plan.todo) - writer.resumed
    rate = embedded / elapsed if elapsed > 0 else 0.0
    meta = read_json(job.out / "meta.json")
    return ExtractResult(job.out, count, job.dim, skipped, writer.resumed, elapsed, rate, meta, len(plan.reuse),
                         embedded)


def _run_locked(job: _Job, t0: float) -> ExtractResult:
    """Plan (what to reuse, resume, embed), run (stream rows to the partial file), finalize (swap in)."""
    recover(job.out)
    plan = _plan(job, job.planned_engine())
    if plan.finished:
        return _unchanged(job, plan, t0)
    engine = _engine(job) if len(plan.todo) else None
    if engine is not None and (engine.name, engine.precision) != plan.engine:  # it fell back: other rows
        plan = _plan(job, (engine.name, engine.precision), plan.fps)
        if plan.finished:
            return _unchanged(job, plan, t0)
    writer = _open_writer(job, plan)
    _embed(job, writer, engine)
    return _finalize(job, writer, t0)


def extract_features(
    images: str | os.PathLike | tdata.ImageSource,
    out: str | os.PathLike,
    *,
    backbone: str | Backbone = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    batch_size: int | str | None = None,
    image_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    strict: bool = False,
    compile: bool = False,
    fuse: bool = True,
    dtype: str = "float32",
    engine: str = "auto",
    decode: str = "auto",
    shard: "Shard | None" = None,
    progress: Callable[[int], None] | None = None,
) -> ExtractResult:
    """Embed every image under ``images`` with a frozen backbone and write the results to ``out``.

    Args:
        images: a class-folder tree, a flat folder, a CSV manifest, or an :class:`ImageSource`.
        out: output folder (created). An interrupted run there is resumed when inputs match; a
            finished one made with the same settings lends its rows for unchanged images.
            Another extract writing to ``out`` makes this call fail at once (TlkitError).
        backbone: a backbone name or an already created :class:`Backbone` (its head is ignored).
        weights, pretrained: where the backbone's weights come from (:func:`tlkit.models.backbones.create_backbone`).
        batch_size, image_size, device, precision, workers, strict, compile, fuse, dtype, engine, decode: see
            :class:`ExtractOptions`.
        shard: embed only this :class:`~tlkit.features.store.Shard` of the records, into its folder
            ``out/shards/...`` (join the shards with :func:`~tlkit.features.shards.merge_shards`).
        progress: called with the number of images finished after every batch.

    Returns:
        An :class:`ExtractResult`; the features are in ``out/features.npy`` ([N, D] float32, or ``dtype``).

    Raises:
        TlkitError: bad input, ``out`` busy or a file, not enough disk space (the previous
            result in ``out`` is then unchanged), or an undecodable file with ``strict``.

    Example:
        >>> res = extract_features("photos/", "feats/", image_size=160)
        >>> feats = np.load("feats/features.npy")          # [res.count, res.dim]
    """
    t0 = time.perf_counter()
    opts = ExtractOptions(batch_size=batch_size, image_size=image_size, device=device, precision=precision,
                          workers=workers, strict=strict, compile=compile, fuse=fuse, dtype=dtype, engine=engine,
                          decode=decode)
    storage_dtype(dtype)  # a bad name fails before any work
    parse_batch_size(batch_size)
    if decode not in DECODE_MODES:
        raise TlkitError(f"unknown --decode {decode!r}; choose one of: {', '.join(DECODE_MODES)}")
    source = images if isinstance(images, tdata.ImageSource) else tdata.scan_images(images)
    if shard is not None:
        source, out = shard.source(source), shard.folder(_output_folder(out))
    out = _output_folder(out)
    request = warm_request(backbone, weights, pretrained, opts, shard)
    with hold_lock(out / LOCK, "tlkit extract"):
        job = _job(out, source, backbone, weights, pretrained, opts, progress, request)
        with _disk_full_as_error(out):
            return _run_locked(job, t0)
