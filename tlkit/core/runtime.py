"""Device, precision and memory-format choices.

``auto`` means: CUDA when available, else CPU; bf16 autocast on GPUs that support it (fp16 with a
GradScaler otherwise) and on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import ContextManager

import numpy as np
import torch

from tlkit.core.cpuinfo import CPU_INFERENCE_BATCH, cpu_has_fast_bf16
from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TlkitError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu or auto")
        return torch.device(spec)
    raise TlkitError(f"unknown device {spec!r}; choose one of: auto, cpu, cuda, cuda:N")


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``spec`` on ``device``; ``None`` means plain fp32.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu")) is None
        True
    """
    if spec not in PRECISIONS:
        raise TlkitError(f"unknown precision {spec!r}; choose one of: {', '.join(PRECISIONS)}")
    if spec != "auto":
        if spec == "fp16" and device.type == "cpu":
            raise TlkitError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
        return _DTYPES[spec]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """``torch.bfloat16`` -> ``"bf16"``; ``None`` -> ``"fp32"``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast context for ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def inference_batch_size(device: torch.device) -> int:
    """Default images per forward pass for inference: 8 on a CPU, 64 on a GPU (``--batch-size auto`` probes on
    CUDA instead: :func:`tlkit.core.batch_size.inference_batch`).

    On CPUs small batches keep activations in cache: efficientnet_lite0, resnet50 and
    convnext_tiny (bf16, 224 px, 2 cores) all ran fastest at 8, 1.3-1.5x faster than at 32.
    """
    return 64 if device.type == "cuda" else CPU_INFERENCE_BATCH


def default_workers(cores: int | None = None, ranks_on_node: int | None = None) -> int:
    """DataLoader decoding workers of this process: half its share of the cores (at most 8) from 4 cores
    up, else 0.

    The share is the host's cores (``cores``; default: this process's CPU affinity) divided by the ranks
    on this node (``ranks_on_node``; default: torchrun's ``LOCAL_WORLD_SIZE``, 1 without torchrun), so 8
    ranks on a 32-core node start 2 workers each, not 8 (64 decoding processes on 32 cores).
    On 2 cores a decoding process competes with torch's compute threads: decoding in the main
    process measured faster (81 vs 73 img/s for efficientnet_lite0 at 224 px, bf16).

    Example:
        >>> default_workers(cores=32, ranks_on_node=8), default_workers(cores=32, ranks_on_node=1)
        (2, 8)
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if ranks_on_node is None:
        ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    n = cores // max(1, ranks_on_node)
    return min(8, n // 2) if n >= 4 else 0


def oom_errors() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory exception classes on this torch: ``torch.OutOfMemoryError`` exists from
    torch 2.5, ``torch.cuda.OutOfMemoryError`` (the same class from 2.5 on) before."""
    found = (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    return tuple(dict.fromkeys(c for c in found if c is not None))


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error (torch's, or a RuntimeError that says so)."""
    return isinstance(e, oom_errors()) or "out of memory" in str(e).lower()


def grad_scaler(device: torch.device):
    """A loss scaler for fp16 training on ``device``: ``torch.amp.GradScaler`` (torch >= 2.3), else
    ``torch.cuda.amp.GradScaler`` (torch 2.2; fp16 is refused on the CPU, see :func:`resolve_precision`)."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device.type)
    return torch.cuda.amp.GradScaler()


def allow_fast_cuda_math(device: torch.device, *, deterministic: bool = False) -> bool:
    """On CUDA, let cuDNN pick the fastest convolution for the (fixed) input shape and let float32
    matmuls use TF32 (``set_float32_matmul_precision("high")``), unless ``deterministic``.

    Process-wide settings, left alone on the CPU and under ``deterministic`` (cuDNN's benchmark picks
    may differ between runs). Returns whether they were set.
    """
    if device.type != "cuda" or deterministic:
        return False
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    return True


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt() parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make this process reuse freed memory for large tensors instead of handing it back (glibc).

    glibc's malloc serves blocks over 32 MB (a training batch's activations at 224 px) with fresh
    ``mmap`` pages and unmaps them on free, so every step faults every page in again. Setting
    ``M_MMAP_MAX=0`` and a high ``M_TRIM_THRESHOLD`` keeps them in the heap, like
    ``MALLOC_MMAP_MAX_=0`` in the environment or running under jemalloc/tcmalloc. Measured on a
    2-core CPU (efficientnet_lite0, batch 32, 224 px, bf16): 1.25-1.69 -> 0.96 s per training step,
    peak RSS 2.67 -> 3.07 GB, flat over the run. Process-wide and permanent, so the CLI calls it for
    training commands only. ``TLKIT_MALLOC=default`` turns it off. Returns whether it was applied.
    """
    if os.environ.get("TLKIT_MALLOC", "").lower() == "default":
        return False
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # an int: 2 GiB
    except (OSError, AttributeError):
        return False
    if ok:
        log.info("malloc: freed memory kept for reuse (M_MMAP_MAX=0; TLKIT_MALLOC=default turns it off)")
    return ok
