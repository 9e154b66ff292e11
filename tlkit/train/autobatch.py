"""A run's batch size and learning rate, resolved: ``batch_size: auto`` and ``lr_scale``.

``auto`` (the default) is :data:`DEFAULT_BATCH` (32) on a CPU and, on CUDA, the largest power of two
whose training step fits: :func:`tlkit.core.batch_size.largest_fitting` over a real forward + backward of
the model in training mode, with the optimizer's and the EMA's state reserved beside it (Adam keeps
two tensors per weight). Under torchrun every rank probes and all take the smallest size found.

The learning rate follows the batch where the recipe says so (``lr_scale``, timm's ``--lr-base-scale``
rule): ``lr`` is the rate for ``lr_base_batch`` images per optimizer step, and the run uses
``lr * (global_batch / lr_base_batch)`` (``linear``) or ``lr * sqrt(global_batch / lr_base_batch)``
(``sqrt``), where ``global_batch = batch_size * ranks * grad_accum``; ``none`` (the default) keeps
``lr`` as given. The resolved config (``config.yaml``) holds the batch and rate that ran, with
``lr_scale: none`` so that it reruns as a recipe unchanged; :func:`resolve` returns what was chosen
and how (``config.yaml``'s ``chosen`` entry).

Example:
    >>> cfg = make_config(batch_size=128, lr=1e-3, lr_scale="linear", lr_base_batch=32)
    >>> scaled_lr(cfg, world_size=1)
    (0.004, 128)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from tlkit.core.batch_size import AUTO, BatchChoice, largest_fitting
from tlkit.train.config import DEFAULT_BATCH, TrainConfig, make_config
from tlkit.train.distributed import all_gather_objects

log = logging.getLogger(__name__)


def scaled_lr(cfg: TrainConfig, world_size: int) -> tuple[float, int]:
    """``(lr the run uses, global batch)`` for ``cfg`` with a numeric ``batch_size`` under ``lr_scale``."""
    global_batch = int(cfg.batch_size) * max(1, world_size) * cfg.grad_accum
    ratio = global_batch / cfg.lr_base_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scale]
    return cfg.lr * factor, global_batch


def _apply(cfg: TrainConfig, choice: BatchChoice, world_size: int) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` at ``choice.size`` with the lr rule applied, and the record of both."""
    at_size = make_config(base=cfg, overrides={"batch_size": choice.size})
    lr, global_batch = scaled_lr(at_size, world_size)
    record = {"batch_size": choice.to_dict(),
              "lr": {"configured": cfg.lr, "rule": cfg.lr_scale, "reference_batch": cfg.lr_base_batch,
                     "global_batch": global_batch, "used": lr}}
    if cfg.lr_scale != "none":
        log.info("lr %.3g -> %.3g: %s scaling from batch %d to %d", cfg.lr, lr, cfg.lr_scale, cfg.lr_base_batch,
                 global_batch)
    return make_config(base=at_size, overrides={"lr": lr, "lr_scale": "none"}), record


def resumed(cfg: TrainConfig, saved_config: dict[str, Any], world_size: int) -> tuple[TrainConfig, dict | None]:
    """On ``--resume`` with ``batch_size: auto``: the batch the run started with (no new probe, so the
    schedule and the rate stay those of the run), the lr rule applied to it; else ``(cfg, None)``."""
    if cfg.batch_size != AUTO or not isinstance(saved_config.get("batch_size"), int):
        return cfg, None
    return _apply(cfg, BatchChoice(saved_config["batch_size"], "resumed"), world_size)


def resolve(cfg: TrainConfig, model: nn.Module, rt, n_train: int, input_size: tuple[int, int, int],
            num_classes: int) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` with a numeric ``batch_size`` (``auto`` probed on CUDA, 32 on a CPU) and the lr rule applied.

    Args:
        model: the classifier as it will train (on ``rt.device``; its buffers are restored after probing).
        rt: the :class:`~tlkit.train.loaders.Runtime`.
        n_train: training images; the probe stops at the largest power of two of this rank's share.
        input_size: ``(C, H, W)`` of the training images.
        num_classes: the classifier's outputs.

    Returns:
        ``(config, record)``; ``record`` is ``{"batch_size": {...}, "lr": {...}}`` for ``config.yaml``.
    """
    if cfg.batch_size != AUTO:
        return _apply(cfg, BatchChoice(int(cfg.batch_size), "given"), rt.dist.world_size)
    if rt.device.type != "cuda" or (cfg.mode == "linear-probe" and cfg.precompute_features):
        how = "cpu default" if rt.device.type != "cuda" else "default (cached features)"
        return _apply(cfg, BatchChoice(DEFAULT_BATCH, how), rt.dist.world_size)
    share = max(1, n_train // max(1, rt.dist.world_size))
    choice = largest_fitting(_train_probe(model, rt, cfg, input_size, num_classes), cap=share,
                             what="a training batch")
    sizes = all_gather_objects(choice.size, rt.dist)
    if min(sizes) != choice.size:
        log.info("batch size %d: the smallest any rank fits (this rank fits %d)", min(sizes), choice.size)
        choice = BatchChoice(min(sizes), "probed (smallest over ranks)", choice.tried)
    return _apply(cfg, choice, rt.dist.world_size)


def _train_probe(model: nn.Module, rt, cfg: TrainConfig, input_size: tuple[int, int, int], num_classes: int):
    """A probe running one training step's forward and backward at batch ``b`` (no optimizer step; its
    state, and the EMA copy's, is reserved as memory), leaving the model's weights and buffers as they were."""
    from tlkit.core.runtime import autocast

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state_numel = trainable * (2 + int(cfg.ema))

    def probe(b: int) -> None:
        buffers = [t.detach().clone() for t in model.buffers()]
        was_training = model.training
        model.train()
        try:
            reserve = torch.empty(state_numel, device=rt.device)  # noqa: F841 - held for the pass
            x = torch.randn((b, *input_size), device=rt.device)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, num_classes, (b,), device=rt.device)
            with autocast(rt.device, rt.amp_dtype):
                logits = model(x)
            nn.functional.cross_entropy(logits.float(), y).backward()
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for t, saved in zip(model.buffers(), buffers):
                    t.copy_(saved)
            model.train(was_training)

    return probe


__all__ = ["resolve", "resumed", "scaled_lr"]
