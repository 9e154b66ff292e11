"""Data-parallel training under ``torchrun``: process group, rank info, reductions.

``torchrun --nproc_per_node=N -m tlkit finetune ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and starts a process group (``nccl`` on CUDA,
``gloo`` on the CPU). Without them everything here is a no-op for a single process.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.distributed as dist

from tlkit.core.dist_env import DistInfo, env_dist_info

log = logging.getLogger(__name__)


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun; returns the info and this rank's device."""
    info = env_dist_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process group %s: rank %d of %d", backend, info.rank, info.world_size)
    return info, device


def shutdown() -> None:
    """Destroy the process group if one was started."""
    global _HOST_GROUP
    _HOST_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_HOST_GROUP: Any = None  # a gloo group beside an nccl one, for agreeing on host-side facts


def _host_group():
    """The default group under gloo; under nccl a gloo group over the same ranks, made on first use
    (every rank reaches the first use at the same step, so its creation is collective)."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo")
    return _HOST_GROUP


def all_ranks(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself for a single process).

    A host-side all-reduce over gloo: it waits for the other ranks' loops, never for the GPU, so the
    training loop can ask it every step without a device sync.
    """
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_host_group())
    return bool(t[0])


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks."""
    if not info.enabled:
        return list(map(float, values))
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_ranks",
    "all_reduce_sum",
    "barrier",
    "env_dist_info",
    "init_distributed",
    "shutdown",
]
