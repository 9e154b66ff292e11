"""What the CPU can do, read without importing torch (the extract fast path needs it): :func:`cpu_has_fast_bf16`."""

from __future__ import annotations

import functools
import os

#: Default images per forward pass on a CPU (:func:`tlkit.core.runtime.inference_batch_size`).
CPU_INFERENCE_BATCH = 8


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    if os.environ.get("TLKIT_CPU_BF16") in ("0", "1"):
        return os.environ["TLKIT_CPU_BF16"] == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


__all__ = ["CPU_INFERENCE_BATCH", "cpu_has_fast_bf16"]
