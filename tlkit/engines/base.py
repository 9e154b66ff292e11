"""What every engine shares: the model to run (:class:`ModelSpec`), its digest, the :class:`Engine` protocol.

Below the registry (:mod:`tlkit.engines`) and the engines themselves, so each engine module imports it
without importing the registry that builds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # importing this module must not import torch (the CLI's --help reads the registry)
    import numpy as np
    import torch


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
    import torch

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


__all__ = ["Engine", "EngineUnavailable", "ModelSpec", "model_digest"]
