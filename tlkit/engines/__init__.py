"""Inference engines: what turns a batch of images ``[B, 3, H, W]`` into outputs ``[B, D]``.

Two engines are registered (:func:`list_engines`; the CLI's ``--engine`` choices come from here):

* ``torch`` — the PyTorch model prepared by :func:`tlkit.inference.prepare_for_inference`
  (BatchNorm folded, channels_last, bf16/fp16 autocast where the device has it). GPUs and any CPU.
* ``openvino`` — the same model converted with ``openvino.convert_model`` and compiled for the
  CPU, bf16 where the CPU executes it natively (AVX512-BF16/AMX), fp32 otherwise. The converted
  model is checked against PyTorch fp32 on a fixed input before use and cached on disk
  (:mod:`tlkit.engines.openvino_engine`).

``auto`` picks ``openvino`` on a CPU when the package is importable, ``torch`` otherwise. When
the conversion raises or the parity check fails, :func:`create_engine` logs one warning line and
uses ``torch``: the outputs are still right, only slower.

Example:
    >>> spec = ModelSpec(bb.model, (3, 224, 224), {"backbone": bb.name, "weights": bb.weights.sha256})  # doctest: +SKIP
    >>> eng = create_engine(spec, engine="auto", device="cpu")     # doctest: +SKIP
    >>> eng(torch.zeros(8, 3, 224, 224)).shape, eng.name, eng.precision   # doctest: +SKIP
    ((8, 1280), 'openvino', 'bf16')
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from tlkit.errors import TlkitError

log = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """An engine cannot run this model here (conversion raised, parity check failed); the reason is the message."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to run, and what identifies it for the compiled-model cache.

    Attributes:
        model: an eval-mode image model on the CPU; ``[B, 3, H, W]`` -> ``[B, D]``.
        input_size: ``(C, H, W)`` the engine is built and checked for.
        identity: JSON-ready facts that make the weights unique (backbone name, weights sha256,
            head size or checkpoint sha256). Two specs with the same identity and input size must
            compute the same function; the cache relies on it.
    """

    model: torch.nn.Module
    input_size: tuple[int, int, int]
    identity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: torch.nn.Module, input_size: tuple[int, int, int], **facts: Any) -> "ModelSpec":
        """A spec whose identity is ``facts`` plus :func:`model_digest` (weights and architecture)."""
        return cls(model, tuple(int(v) for v in input_size), {**facts, "model_sha256": model_digest(model)})


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the module's ``repr`` (architecture, eps, ...) and every tensor of its state dict.

    What decides the function a model computes, so a cache keyed by it cannot hand out a stale
    model (random init, a fine-tuned run, another eps). ~20 ms for efficientnet_lite0 (13 MB).
    """
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Engine(Protocol):
    """A ready inference engine.

    Attributes:
        name: the registry name (``torch``, ``openvino``).
        precision: ``fp32`` | ``bf16`` | ``fp16``: what the arithmetic runs in.
        device: where inputs should be put before :meth:`forward`.
        channels_last: whether inputs should be channels_last (the torch engine; a layout hint).
    """

    name: str
    precision: str
    device: torch.device
    channels_last: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` float32 -> ``[B, D]`` float32 (on ``device`` for torch, CPU for openvino)."""

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """:meth:`forward` as a float32 NumPy array ``[B, D]`` on the CPU."""


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine: ``build(spec, device, precision, **options) -> Engine``."""

    name: str
    description: str
    available: Callable[[], bool]
    build: Callable[..., Engine]


ENGINES: dict[str, EngineInfo] = {}
ENGINE_CHOICES_HELP = "auto (openvino on a CPU when installed, else torch)"


def register_engine(name: str, *, description: str, available: Callable[[], bool]) -> Callable:
    """Decorator registering an engine builder under ``name``."""

    def deco(build: Callable[..., Engine]) -> Callable[..., Engine]:
        ENGINES[name] = EngineInfo(name, description, available, build)
        return build

    return deco


def list_engines() -> list[EngineInfo]:
    """The registered engines, in registration order."""
    return list(ENGINES.values())


def engine_names() -> tuple[str, ...]:
    """``("auto", <registered names>...)``: the values ``--engine`` accepts."""
    return ("auto", *ENGINES)


def check_engine_name(name: str) -> str:
    """``name`` when it is ``auto`` or a registered engine, else a TlkitError listing the choices."""
    if name not in engine_names():
        raise TlkitError(f"unknown engine {name!r}; choose one of: {', '.join(engine_names())}")
    return name


def resolve_engine(name: str, device: torch.device) -> str:
    """The engine ``name`` means on ``device``: ``auto`` -> ``openvino`` on a CPU when importable.

    Raises:
        TlkitError: an unknown name, ``openvino`` on a GPU, or ``openvino`` when it is not installed.
    """
    check_engine_name(name)
    if name == "auto":
        return "openvino" if device.type == "cpu" and ENGINES["openvino"].available() else "torch"
    if name == "openvino" and device.type != "cpu":
        raise TlkitError(f"--engine openvino runs on CPUs only (device is {device}); use --engine torch or --device cpu")
    if not ENGINES[name].available():
        raise TlkitError(f"--engine {name}: the {name} package is not installed; `pip install {name}` "
                         "or use --engine torch")
    return name


def create_engine(spec: ModelSpec, *, engine: str = "auto", device: str | torch.device = "auto",
                  precision: str = "auto", fuse: bool = True, compile: bool = False) -> Engine:
    """Build the engine ``engine`` resolves to for ``spec``; ``torch`` when another one cannot run it.

    Args:
        spec: the model and its identity.
        engine: ``auto`` | a registered name (see :func:`resolve_engine`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a torch device.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (see :func:`tlkit.runtime.resolve_precision`).
        fuse: torch engine: fold BatchNorm into convolutions (checked).
        compile: torch engine: ``torch.compile`` the model.

    Returns:
        A ready :class:`Engine`. A fallback to ``torch`` is logged as one warning line.
    """
    from tlkit.runtime import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    name = resolve_engine(engine, dev)
    if name != "torch":
        try:
            return ENGINES[name].build(spec, dev, precision)
        except EngineUnavailable as e:
            log.warning("engine %s cannot run this model (%s); using the PyTorch engine", name, e)
    return ENGINES["torch"].build(spec, dev, precision, fuse=fuse, compile=compile)


# Registration order is the order of `tlkit engines` / --help.
from tlkit.engines import torch_engine as _torch_engine  # noqa: E402,F401
from tlkit.engines import openvino_engine as _openvino_engine  # noqa: E402,F401

__all__ = ["ENGINES", "Engine", "EngineInfo", "EngineUnavailable", "ModelSpec", "check_engine_name", "create_engine",
           "engine_names", "list_engines", "model_digest", "register_engine", "resolve_engine"]
