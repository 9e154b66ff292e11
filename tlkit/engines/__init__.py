"""Inference engines: what turns a batch of images ``[B, 3, H, W]`` into outputs ``[B, D]``.

Two engines are registered (:func:`list_engines`; the CLI's ``--engine`` choices come from here):

* ``torch`` — the PyTorch model prepared by :func:`tlkit.models.inference.prepare_for_inference`
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

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tlkit.core.errors import TlkitError
from tlkit.engines.base import Engine, EngineUnavailable, ModelSpec, model_digest

if TYPE_CHECKING:  # importing this package must not import torch (the CLI's --help reads the registry)
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine.

    Attributes:
        name: what ``--engine`` takes.
        description: one line for ``--help``.
        available: whether it can be imported here (cheap; imports nothing heavy).
        builder: ``"module:function"`` of ``build(spec, device, precision, **options) -> Engine``,
            imported only when the engine is built (so listing engines needs neither torch nor openvino).
    """

    name: str
    description: str
    available: Callable[[], bool]
    builder: str

    def build(self, *args: Any, **kwargs: Any) -> Engine:
        module, _, func = self.builder.partition(":")
        return getattr(importlib.import_module(module), func)(*args, **kwargs)


ENGINES: dict[str, EngineInfo] = {}


def register_engine(name: str, *, description: str, available: Callable[[], bool], builder: str) -> EngineInfo:
    """Register an engine (see :class:`EngineInfo`); a later registration of ``name`` replaces it."""
    ENGINES[name] = info = EngineInfo(name, description, available, builder)
    return info


def _installed(package: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(package) is not None


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


def planned_engine(engine: str, device: torch.device, precision: str = "auto") -> tuple[str, str]:
    """``(engine name, precision name)`` that :func:`create_engine` will try first, without building anything.

    Extract keys its results by it; when the build falls back, the built engine's pair differs.
    """
    name = resolve_engine(engine, device)
    if name == "openvino":
        from tlkit.engines.openvino_engine import ov_precision

        return name, ov_precision(precision)
    from tlkit.core.runtime import precision_name, resolve_precision

    return name, precision_name(resolve_precision(precision, device))


def create_engine(spec: ModelSpec, *, engine: str = "auto", device: str | torch.device = "auto",
                  precision: str = "auto", fuse: bool = True, compile: bool = False) -> Engine:
    """Build the engine ``engine`` resolves to for ``spec``; ``torch`` when another one cannot run it.

    Args:
        spec: the model and its identity.
        engine: ``auto`` | a registered name (see :func:`resolve_engine`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a torch device.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (see :func:`tlkit.core.runtime.resolve_precision`).
        fuse: torch engine: fold BatchNorm into convolutions (checked).
        compile: torch engine: ``torch.compile`` the model.

    Returns:
        A ready :class:`Engine`. A fallback to ``torch`` is logged as one warning line.
    """
    import torch

    from tlkit.core.runtime import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    name = resolve_engine(engine, dev)
    if name != "torch":
        try:
            return ENGINES[name].build(spec, dev, precision)
        except EngineUnavailable as e:
            log.warning("engine %s cannot run this model (%s); using the PyTorch engine", name, e)
    return ENGINES["torch"].build(spec, dev, precision, fuse=fuse, compile=compile)


register_engine("torch", description="PyTorch: BatchNorm folded, channels_last, bf16/fp16 autocast; GPUs and CPUs",
                available=lambda: True, builder="tlkit.engines.torch_engine:build_torch")
register_engine("openvino", description="OpenVINO on the CPU: bf16 where native, else fp32; converted once, cached",
                available=_installed("openvino"), builder="tlkit.engines.openvino_engine:build_openvino")

#: ``--engine`` help text, from the registry.
ENGINE_HELP = (f"Inference engine: {' | '.join(engine_names())}. auto = openvino on a CPU when installed "
               "and the model converts, else torch.")

__all__ = ["ENGINES", "ENGINE_HELP", "Engine", "EngineInfo", "EngineUnavailable", "ModelSpec", "check_engine_name", "create_engine",
           "engine_names", "list_engines", "model_digest", "planned_engine", "register_engine",
           "resolve_engine"]
