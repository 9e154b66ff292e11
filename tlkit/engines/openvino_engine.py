"""The OpenVINO engine for CPUs: conversion, parity check, telemetry opt-out, the compiled-model cache.

Conversion: ``openvino.convert_model(model, example_input=x, input=[-1, C, H, W])`` from the
PyTorch module (dynamic batch), compiled for the CPU with ``INFERENCE_PRECISION_HINT`` ``bf16``
where the CPU executes bf16 natively (:func:`tlkit.core.runtime.cpu_has_fast_bf16`), ``f32`` otherwise
or when ``--precision fp32`` is asked for. Before use, the compiled model's output on a fixed
input (``[2, C, H, W]``, standard normal, NumPy seed 0) is compared with PyTorch fp32: every row's
cosine must be >= :data:`PARITY_COSINE` (rows that are zero in PyTorch must be ~zero), else :class:`~tlkit.engines.EngineUnavailable` (and
:func:`~tlkit.engines.create_engine` falls back to PyTorch with one log line).

Telemetry: ``import openvino`` itself sends a usage event through ``openvino_telemetry`` unless
the user opted out (``opt_in_out --opt_out``, a file in ``~/intel``). tlkit never lets it run:
:func:`import_openvino` marks ``openvino_telemetry`` as not importable (``sys.modules`` entry
``None``) before the first ``import openvino`` of the process, so OpenVINO uses its built-in
no-op stub. Nothing is written to the user's home and nothing reaches for the network.

Cache: ``$TLKIT_CACHE_DIR/openvino/<key>/`` (default ``~/.cache/tlkit/openvino``), where ``key`` is
a sha256 over the model identity (backbone, weights sha256, head / checkpoint sha256), the input
size, the precision and the OpenVINO version. An entry holds ``model.xml``/``model.bin`` (the
converted model, fp32 weights), ``reference.npy`` (PyTorch fp32 output on the fixed input),
``entry.json`` (written last: identity, sha256 of model.bin, parity cosine) and ``blobs/``
(OpenVINO's own ``CACHE_DIR``: the compiled model, so a second run skips compilation too).
Entries are built in a temporary folder and renamed into place (atomic; a concurrent builder's
rename loses harmlessly). An entry that does not check out (missing or unreadable entry.json,
model.bin hash, a compile error, output no longer matching ``reference.npy``) is deleted and
rebuilt, with one log line. Delete the folder at any time to free the space.

One ``openvino.Core`` per process (:func:`core`), kept until exit: each ``Core`` that loads the CPU
plugin swaps the thread's alternate signal stack, and two of them torn down in creation order
leave it pointing at unmapped memory, so the next signal kills the process (SIGSEGV, SI_KERNEL;
see :mod:`tlkit.engines.sigstack`, which also repairs a stack left dangling by someone else's ``Core``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from tlkit.core.cpuinfo import cpu_has_fast_bf16
from tlkit.core.errors import TlkitError
from tlkit.core.io import fsync_dir, read_json, sha256_file, write_json
from tlkit.engines.base import EngineUnavailable, ModelSpec
from tlkit.engines.sigstack import ensure_signal_stack

if TYPE_CHECKING:  # torch is imported where a model is converted, not to load a cached one (tlkit.features.warm)
    import torch

log = logging.getLogger(__name__)

#: Least cosine (per row, to PyTorch fp32) a converted model must reach on the fixed input. bf16
#: measured 0.9995-0.9999 for efficientnet_lite0 at 64-224 px; a broken conversion gives << 0.9.
PARITY_COSINE = {"fp32": 0.9999, "bf16": 0.995}
ENTRY_VERSION = 1  # bump when the entry layout or the conversion recipe changes
_OV_PRECISION = {"bf16": "bf16", "fp32": "f32"}


def import_openvino():
    """``import openvino`` with its telemetry disabled for this process (see the module notes)."""
    if "openvino" not in sys.modules:
        for name in ("openvino_telemetry", "openvino_telemetry.backend"):
            if name not in sys.modules:
                sys.modules[name] = None  # type: ignore[assignment]  # -> ImportError -> OpenVINO's stub
    elif sys.modules.get("openvino_telemetry") is not None:
        log.info("openvino was imported before tlkit could disable its telemetry")
    import openvino

    return openvino


_CORE: list = []  # the process's one openvino.Core (see the module notes)


def core():
    """The process-wide ``openvino.Core`` (created on first use, never destroyed before exit)."""
    if not _CORE:
        _CORE.append(import_openvino().Core())
    return _CORE[0]


def cache_root() -> Path:
    """Where compiled models live: ``$TLKIT_CACHE_DIR/openvino`` (default ``~/.cache/tlkit/openvino``)."""
    base = os.environ.get("TLKIT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "tlkit")
    return Path(base).expanduser() / "openvino"


def ov_precision(precision: str) -> str:
    """The precision OpenVINO runs at: ``auto`` and ``bf16`` -> ``bf16`` on CPUs with native bf16
    (:func:`~tlkit.core.cpuinfo.cpu_has_fast_bf16`), else ``fp32`` (OpenVINO's CPU plugin runs fp32 there, so
    that is what is reported; asking for ``bf16`` logs one warning); ``fp32`` kept; ``fp16`` refused."""
    if precision not in ("auto", *_OV_PRECISION):
        raise TlkitError(f"--precision {precision} is not available with --engine openvino; use auto, bf16 or fp32")
    if precision == "fp32" or not cpu_has_fast_bf16():
        if precision == "bf16":
            _warn_no_bf16()
        return "fp32"
    return "bf16"


@functools.lru_cache(maxsize=1)
def _warn_no_bf16() -> None:
    log.warning("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); OpenVINO runs fp32, "
                "and fp32 is what is recorded")


def reference_input(input_size: tuple[int, int, int]) -> np.ndarray:
    """The fixed parity-check input ``[2, C, H, W]`` float32."""
    return np.random.default_rng(0).standard_normal((2, *input_size), dtype=np.float32)


def cache_key(spec: ModelSpec, precision: str, ov_version: str) -> str:
    facts = {"identity": spec.identity, "input_size": list(spec.input_size), "precision": precision,
             "openvino": ov_version, "entry": ENTRY_VERSION}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class OpenVINOEngine:
    """A compiled OpenVINO model with one infer request; inputs float32 NCHW on the CPU."""

    name = "openvino"
    channels_last = False

    def __init__(self, compiled: Any, precision: str, entry: Path, built: bool):
        self.compiled, self.precision, self.entry, self.built = compiled, precision, entry, built
        self._request = compiled.create_infer_request()

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("cpu")

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x if isinstance(x, np.ndarray) else x.detach().cpu().numpy(), dtype=np.float32)
        self._request.infer({0: x})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32).reshape(len(x), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self(x))


def _cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row cosine of ``out`` to ``ref``; a row that is zero in ``ref`` scores 1 when ``out`` is ~zero too."""
    a, b = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    return np.where(nb < 1e-6, (na < 1e-3).astype(np.float64), cos)


def _compile(ov, entry: Path, precision: str, *, cache: bool = True):
    """Compile ``entry/model.xml`` for the CPU; ``cache``: through OpenVINO's ``CACHE_DIR`` ``entry/blobs``.

    OpenVINO keys its blobs by the model file's path, so a temporary folder is compiled uncached.
    """
    config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
    if cache:
        config["CACHE_DIR"] = str(entry / "blobs")
    compiled = core().compile_model(str(entry / "model.xml"), "CPU", config)
    ensure_signal_stack()
    return compiled


def parity_cosine(out: np.ndarray, reference: np.ndarray) -> float:
    """The least per-row cosine of ``out [B, ...]`` to ``reference [B, ...]``; -1 when the shapes differ or
    either holds NaN or inf (a NaN cosine would pass every ``cos < threshold`` test)."""
    out, reference = np.asarray(out, dtype=np.float32), np.asarray(reference, dtype=np.float32)
    if out.shape != reference.shape or not (np.isfinite(out).all() and np.isfinite(reference).all()):
        return -1.0
    return float(_cosines(out, reference).min())


def _check(compiled, reference: np.ndarray, input_size: tuple[int, int, int]) -> float:
    out = compiled(reference_input(input_size))[0]
    return parity_cosine(np.asarray(out).reshape(len(reference), -1), reference.reshape(len(reference), -1))


def _load(ov, entry: Path, spec: ModelSpec, precision: str):
    """The compiled model of a cache entry, or None when the entry is missing or does not check out."""
    if not entry.is_dir():
        return None
    try:
        meta = read_json(entry / "entry.json")
        if sha256_file(entry / "model.bin") != meta["model_bin_sha256"]:
            raise ValueError("model.bin does not match entry.json")
        reference = np.load(entry / "reference.npy")
        compiled = _compile(ov, entry, precision)
        cos = _check(compiled, reference, spec.input_size)
        if cos < PARITY_COSINE[precision]:
            raise ValueError(f"output cosine {cos:.5f} to the reference")
        return compiled
    except Exception as e:  # noqa: BLE001 - any damage to a cache entry means: rebuild it
        log.warning("OpenVINO cache entry %s is damaged (%s: %s); rebuilding it", entry, type(e).__name__,
                    str(e)[:120])
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _convert(ov, spec: ModelSpec, precision: str, tmp: Path):
    """Convert ``spec.model`` into ``tmp`` (model.xml/.bin, reference.npy, entry.json last)."""
    import torch

    model = spec.model.float().eval()
    with torch.inference_mode():
        reference = model(torch.from_numpy(reference_input(spec.input_size))).float().numpy()
    # traced on another input than the check's: a trace that froze a value computed from its example fails the check
    example = torch.from_numpy(np.random.default_rng(1).standard_normal((2, *spec.input_size), dtype=np.float32))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace deprecation notices from the converter
            converted = ov.convert_model(model, example_input=example, input=[[-1, *spec.input_size]])
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001 - a model OpenVINO cannot convert: fall back to PyTorch
        raise EngineUnavailable(f"conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from e
    np.save(tmp / "reference.npy", reference)
    compiled = _compile(ov, tmp, precision, cache=False)
    cos = _check(compiled, reference, spec.input_size)
    if cos < PARITY_COSINE[precision]:
        raise EngineUnavailable(f"parity check failed: cosine {cos:.5f} to PyTorch fp32 < {PARITY_COSINE[precision]}")
    write_json(tmp / "entry.json", {"identity": spec.identity, "input_size": list(spec.input_size),
                                    "precision": precision, "openvino": ov.get_version(), "parity_cosine": cos,
                                    "model_bin_sha256": sha256_file(tmp / "model.bin")})
    return compiled


def _failure(path: Path) -> str:
    try:
        return str(read_json(path).get("reason", "conversion failed earlier"))
    except (OSError, ValueError):
        return "conversion failed earlier"


def _build_entry(ov, spec: ModelSpec, precision: str, entry: Path) -> None:
    """Convert into a temporary folder (checked), then rename it to ``entry``."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        _convert(ov, spec, precision, tmp)
        try:
            os.rename(tmp, entry)  # atomic; fails when another process got there first
            fsync_dir(entry.parent)
        except OSError:
            log.info("another process built %s first; using its entry", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cached(entry: Path, input_size: tuple[int, int, int], precision: str) -> OpenVINOEngine | None:
    """The engine of an existing cache entry, checked as :func:`build_openvino` checks it, without torch;
    None when the entry is missing or does not check out (then it is deleted, with one log line).

    The extract warm start (:mod:`tlkit.features.warm`) calls it with the entry its index record names.
    """
    compiled = _load(import_openvino(), entry, ModelSpec(None, tuple(input_size)), precision)
    return None if compiled is None else OpenVINOEngine(compiled, precision, entry, built=False)


def build_openvino(spec: ModelSpec, device: torch.device, precision: str = "auto") -> OpenVINOEngine:
    """An :class:`OpenVINOEngine` for ``spec`` from the cache, converting (and caching) it first if needed.

    Raises:
        EngineUnavailable: conversion raised, or the converted model fails the parity check.
    """
    precision = ov_precision(precision)
    ov = import_openvino()
    entry = cache_root() / cache_key(spec, precision, ov.get_version())
    failed = entry.with_name(entry.name + ".failed.json")
    if failed.is_file():
        raise EngineUnavailable(f"{_failure(failed)} (remembered in {failed}; delete it to try again)")
    t = time.perf_counter()
    compiled = _load(ov, entry, spec, precision)
    built = compiled is None
    if built:
        try:
            _build_entry(ov, spec, precision, entry)
        except EngineUnavailable as e:
            write_json(failed, {"reason": str(e), "identity": spec.identity, "openvino": ov.get_version()})
            raise
        compiled = _load(ov, entry, spec, precision)  # compiles through CACHE_DIR: the next run loads the blob
        if compiled is None:
            raise EngineUnavailable(f"the converted model in {entry} could not be loaded back")
    log.info("OpenVINO %s model %s in %.1f s (%s)", precision, "converted" if built else "loaded from the cache",
             time.perf_counter() - t, entry)
    return OpenVINOEngine(compiled, precision, entry, built)
