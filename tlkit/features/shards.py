"""Extraction split over processes or machines: shards, their merge, and ``torchrun``.

A shard ``i/N`` is the ``i``-th of ``N`` contiguous, nearly equal ranges of the source's records in
their usual order (no padding: a record is in exactly one shard). Each shard is an ordinary extract
folder, ``OUT/shards/iiiii-of-NNNNN/``, so it streams, resumes after a kill and reuses unchanged rows
on its own (:mod:`tlkit.features.extract`). :func:`merge_shards` joins the ``N`` finished shards into ``OUT``
in shard order: the same rows, ids and order as one process over the whole source, and the same
``run_key``, so a later one-process ``tlkit extract`` of the same images finds nothing to do.
The merge is atomic (the final set is swapped in as by a one-process run) and the shard folders stay
(delete them once the merged result is all you need).

Three ways to run the shards:

* ``torchrun --standalone --nproc_per_node=N -m tlkit extract IMAGES --out OUT``: each rank extracts shard
  ``RANK/WORLD_SIZE`` (on ``cuda:LOCAL_RANK`` where there are GPUs), then rank 0 merges
  (:func:`extract_under_torchrun`); a killed run re-launched the same way recomputes only the rows
  no shard had finished;
* independent jobs (Slurm arrays, Ray, Kubernetes): ``tlkit extract IMAGES --out OUT --shard i/N``
  for each ``i``, then ``tlkit extract IMAGES --out OUT --merge``;
* from Python: ``extract_features(..., shard=Shard(i, n))`` (:class:`~tlkit.features.store.Shard`) and
  :func:`merge_shards`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tlkit import data as tdata
from tlkit.core.errors import TlkitError
from tlkit.core.fingerprint import fingerprints
from tlkit.core.io import read_csv, run_digest, write_csv
from tlkit.core.locks import hold_lock
from tlkit.features.store import (
    LOCK, PARTIAL, SHARDS, SKIPPED, RowFile, Shard, ensure_free, finalize, read_checked, set_bytes,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{5})-of-(\d{5})$")


def shard_folders(out: str | os.PathLike, count: int | None = None) -> list[tuple[Shard, Path]]:
    """The shard folders under ``out`` (all of one ``N``), in shard order; a one-line error when
    shards of several ``N`` are mixed or some shard has no folder."""
    root = Path(out) / SHARDS
    found = [(Shard(int(m[1]), int(m[2])), p) for p in sorted(root.iterdir()) if p.is_dir()
             and (m := _NAME.match(p.name))] if root.is_dir() else []
    counts = sorted({s.count for s, _ in found} if count is None else {count})
    if not found:
        raise TlkitError(f"{root} holds no shards; run `tlkit extract IMAGES --out {out} --shard i/N` first")
    if len(counts) > 1:
        raise TlkitError(f"{root} holds shards of {' and '.join(map(str, counts))} runs; keep one and delete the others")
    n = counts[0]
    by_index = {s.index: p for s, p in found if s.count == n}
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise TlkitError(f"{root}: shard {missing[0]}/{n} has not been extracted ({len(missing)} of {n} missing); "
                         f"run `tlkit extract IMAGES --out {out} --shard {missing[0]}/{n}`")
    return [(Shard(i, n), by_index[i]) for i in range(n)]


@dataclass
class _Parts:
    """The finished shards, read and checked against the source."""

    feats: list[np.ndarray]
    index: list[dict[str, str]]
    skipped: list[list[str]]
    meta: dict[str, Any]


def _read_shards(source: tdata.ImageSource, shards: list[tuple[Shard, Path]]) -> _Parts:
    parts = _Parts([], [], [], {})
    for shard, folder in shards:
        try:
            feats, index, meta = read_checked(folder)
        except TlkitError as e:
            raise TlkitError(f"shard {shard.index}/{shard.count} is not finished or damaged ({e}); run "
                             f"`tlkit extract IMAGES --out {folder.parent.parent} --shard {shard.index}/{shard.count}`"
                             ) from None
        start, stop = shard.bounds(len(source.records))
        rels = {r.rel for r in source.records[start:stop]}
        same_settings = not parts.meta or meta.get("settings_key") == parts.meta.get("settings_key")
        if not same_settings or any(r["path"] not in rels for r in index):
            raise TlkitError(f"shard {shard.index}/{shard.count} in {folder} was made from other images or settings; "
                             "re-run it with the same images and options")
        parts.meta = parts.meta or meta
        parts.feats.append(feats)
        parts.index += index
        if (folder / SKIPPED).is_file():
            parts.skipped += [[r["path"], r["reason"]] for r in read_csv(folder / SKIPPED)]
    return parts


@dataclass(frozen=True)
class MadeWith:
    """Settings a merge was asked for (``None``: whatever the shards were made with); a merge embeds
    nothing, so it refuses any that differ from the shards' instead of ignoring them."""

    backbone: str | None = None
    image_size: int | None = None
    dtype: str | None = None
    weights: str | os.PathLike | None = None

    def check(self, meta: dict[str, Any], out: Path) -> None:
        """One line naming the first setting that differs from the shards' ``meta``."""
        from tlkit.core.io import sha256_file

        size, dtype = list(meta["data_config"]["input_size"][1:]), meta.get("dtype", "float32")
        weights = meta["weights"]
        differs = [
            ("--backbone", self.backbone, meta["backbone"],
             self.backbone is not None and self.backbone.strip() != meta["backbone"]),
            ("--image-size", self.image_size, size[-1], self.image_size is not None and [self.image_size] * 2 != size),
            ("--dtype", self.dtype, dtype, self.dtype is not None and self.dtype != dtype),
            ("--weights", self.weights, weights.get("location"), self.weights is not None and not (
                Path(self.weights).is_file() and sha256_file(self.weights) == weights.get("sha256"))),
        ]
        for option, asked, theirs, bad in differs:
            if bad:
                raise TlkitError(f"--merge {option} {asked}: the shards in {out / SHARDS} were made with {option} "
                                 f"{theirs}; a merge embeds nothing: drop {option} or extract the shards again with it")


def merge_shards(source: tdata.ImageSource, out: str | os.PathLike, *, count: int | None = None,
                 made_with: MadeWith = MadeWith(), progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Join the finished shards of ``out`` into ``out/features.npy``, ``index.csv``, ``meta.json``.

    Args:
        source: the images the shards were extracted from (the whole set, as scanned).
        out: the output folder holding ``shards/``.
        count: the ``N`` of the shards to merge (None: the one ``N`` present).
        made_with: settings the caller expects the shards to have (refused when they differ).
        progress: called with the number of rows copied.

    Returns:
        The merged ``meta.json``.

    Raises:
        TlkitError: ``out`` missing, a shard missing, unfinished, made from other images or settings, or
            with other settings than ``made_with``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not out.is_dir():
        raise TlkitError(f"--out {out} does not exist; give the --out of the `tlkit extract --shard i/N` runs "
                         "(the folder that holds shards/)")
    with hold_lock(out / LOCK, "tlkit extract --merge"):
        shards = shard_folders(out, count)
        parts = _read_shards(source, shards)
        made_with.check(parts.meta, out)
        n, dim, dtype = sum(len(f) for f in parts.feats), int(parts.meta["dim"]), parts.meta.get("dtype", "float32")
        ensure_free(out, set_bytes(n, dim, dtype), f"{n:,} x {dim} merged {dtype} features")
        part = RowFile.create(out / PARTIAL, n, dim, dtype)
        row = 0
        for feats in parts.feats:
            for s in range(0, len(feats), 4096):
                block = np.asarray(feats[s : s + 4096])
                part.write(np.arange(row, row + len(block)), block)
                row += len(block)
                if progress:
                    progress(len(block))
        part.sync()
        fps = fingerprints([r.path for r in source.records])
        meta = {**parts.meta, "run_key": run_digest(parts.meta["settings_key"], [r.rel for r in source.records], fps),
                "reused": 0, "elapsed_s": round(time.perf_counter() - t0, 3), "shards": len(shards),
                "skipped": len(parts.skipped)}
        meta = {k: v for k, v in meta.items() if k not in ("count", "files")}
        header = list(parts.index[0]) if parts.index else ["path", "fingerprint"]
        skipped = (lambda p: write_csv(p, ("path", "reason"), parts.skipped)) if parts.skipped else None
        finalize(out, part, np.arange(n), header, [[r[k] for k in header] for r in parts.index], skipped, meta)
    log.info("merged %d shards into %s: %d rows", len(shards), out, n)
    return read_checked(out)[2]


RANKS_TIMEOUT = timedelta(hours=24)
"""How long a rank waits at the barrier for the others (the gloo group's timeout). Ranks finish their
shards far apart (a slower disk, more large images); a rank that fails ends the run through torchrun,
which stops the others, not through this timeout."""


def extract_under_torchrun(source: tdata.ImageSource, out: str | os.PathLike, *, device: str = "auto",
                           progress: Callable[[int], None] | None = None, **kwargs: Any):
    """One rank of ``torchrun ... -m tlkit extract``: extract shard ``RANK/WORLD_SIZE``, wait for every
    rank, merge on rank 0. Returns ``(this rank's ExtractResult, merged meta or None)``.

    Each rank works on ``cuda:LOCAL_RANK`` (made its current device, so no rank puts a context on GPU 0)
    where there are GPUs. The gloo group (a barrier only: no tensors cross it) is made before the
    extraction, with :data:`RANKS_TIMEOUT`, so a rank that finishes hours before the last one waits.
    """
    import torch
    import torch.distributed as dist

    from tlkit.core.dist_env import env_dist_info
    from tlkit.features.extract import extract_features

    info = env_dist_info()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{info.local_rank}"
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=RANKS_TIMEOUT)
    try:
        shard = Shard(info.rank, info.world_size)
        res = extract_features(source, out, device=device, shard=shard, progress=progress, **kwargs)
        dist.barrier()
        merged = merge_shards(source, out, count=info.world_size) if info.rank == 0 else None
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return res, merged


__all__ = ["RANKS_TIMEOUT", "MadeWith", "extract_under_torchrun", "merge_shards", "shard_folders"]
