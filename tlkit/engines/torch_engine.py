"""The PyTorch engine: :func:`tlkit.models.inference.prepare_for_inference` + autocast, any device."""

from __future__ import annotations

import numpy as np
import torch

from tlkit.core.runtime import allow_fast_cuda_math, autocast, precision_name, resolve_precision
from tlkit.engines.base import ModelSpec
from tlkit.models.inference import prepare_for_inference


class TorchEngine:
    """``model`` prepared for inference (BatchNorm folded, channels_last) run under ``dtype`` autocast."""

    name = "torch"
    channels_last = True

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None):
        self.model, self.device, self.dtype = model, device, dtype
        self.precision = precision_name(dtype)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        with autocast(self.device, self.dtype):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.forward(x).cpu().numpy()


def build_torch(spec: ModelSpec, device: torch.device, precision: str = "auto", *, fuse: bool = True,
                compile: bool = False) -> TorchEngine:
    """A :class:`TorchEngine` for ``spec`` on ``device`` (``precision`` as :func:`resolve_precision`)."""
    dtype = resolve_precision(precision, device)
    allow_fast_cuda_math(device)  # fixed input shape: cuDNN's fastest kernels; TF32 matmuls
    model = prepare_for_inference(spec.model, device, dtype, input_size=tuple(spec.input_size), fuse=fuse)
    return TorchEngine(torch.compile(model) if compile else model, device, dtype)
