"""Input pipelines of a run: the runtime (device, precision, ranks) and the train/val loaders.

Images go through :mod:`tlkit.data` (timm augmentation for training, the backbone's eval transform
for validation); a linear probe with ``precompute_features`` embeds both sets once and iterates
over cached feature vectors instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from tlkit.core.errors import TlkitError
from tlkit.core.runtime import (
    allow_fast_cuda_math, autocast, default_workers, precision_name, resolve_device, resolve_precision, seed_everything,
)
from tlkit.train.config import TrainConfig, resolve_task_defaults
from tlkit.train.distributed import DistInfo, init_distributed
from tlkit.train.splits import Splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where and how the math runs."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    dist: DistInfo
    workers: int


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device (and process group under torchrun), autocast dtype, seeds, threads."""
    info, device = init_distributed(resolve_device(cfg.device))
    amp = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed + info.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if allow_fast_cuda_math(device, deterministic=cfg.deterministic):
        log.info("CUDA: cudnn.benchmark on, TF32 matmuls allowed (--deterministic turns both off)")
    workers = default_workers() if cfg.workers is None else cfg.workers
    log.info("device %s, precision %s, rank %d/%d", device, precision_name(amp), info.rank, info.world_size)
    return Runtime(device, amp, cfg.channels_last, info, workers)


def image_loaders(cfg: TrainConfig, splits: Splits, data_config: Mapping[str, Any], rt: Runtime):
    """Training loader (timm augmentation, this rank's shard, reshuffled per epoch) and validation loader,
    JPEGs decoded on the device where ``cfg.decode`` resolves to it (training:
    :func:`tlkit.data.device_augment.train_loader`; validation: :func:`tlkit.data.device_decode.eval_loader`).

    Returns:
        ``(train, val, sampler)``; call ``sampler.set_epoch(e)`` before each epoch.
    """
    from torch.utils.data.distributed import DistributedSampler

    from tlkit.data import ImageDataset
    from tlkit.data.device_augment import train_loader
    from tlkit.data.device_decode import eval_loader

    cfg = resolve_task_defaults(cfg, splits.task)  # fit resolves them already; a direct caller may not
    aug = {"scale": (cfg.scale_min, 1.0), "hflip": cfg.hflip, "vflip": cfg.vflip,
           "color_jitter": cfg.color_jitter or 0.0, "auto_augment": cfg.auto_augment, "re_prob": cfg.reprob}
    c2i = splits.class_to_idx
    train_ds = ImageDataset(splits.train, _training_transform(data_config, aug), c2i)
    d = rt.dist
    if cfg.sampler == "balanced":
        sampler = BalancedSampler([c2i[r.label] for r in splits.train], num_replicas=d.world_size, rank=d.rank,
                                  seed=cfg.seed)
    else:
        sampler = DistributedSampler(train_ds, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed)
    drop_last = len(sampler) > cfg.batch
    train, _ = train_loader(splits.train, data_config, aug, train_ds.transform, batch_size=cfg.batch,
                            workers=rt.workers, device=rt.device, sampler=sampler, drop_last=drop_last,
                            decode=cfg.decode, class_to_idx=c2i, seed=cfg.seed)
    val_idx = list(range(d.rank, len(splits.val), d.world_size))
    val, _ = eval_loader(splits.val, data_config, batch_size=cfg.batch * 2, workers=rt.workers, device=rt.device,
                         decode=cfg.decode, class_to_idx=c2i, sampler=val_idx, seed=cfg.seed)
    return train, val, sampler


def _training_transform(data_config: Mapping[str, Any], aug: dict[str, Any]):
    """timm's training transform; an auto_augment spec timm cannot parse is a one-line error."""
    from tlkit.data import build_transform

    try:
        return build_transform(data_config, training=True, **aug)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        if not aug.get("auto_augment"):
            raise
        from tlkit.models.weights import one_line

        raise TlkitError(f"auto_augment={aug['auto_augment']!r}: timm cannot build it ({one_line(e)}); use e.g. "
                         "rand-m9-mstd0.5, trivialaugment, augmix-m5 or v0, or null") from None


def balanced_weights(targets) -> torch.Tensor:
    """``[n]`` float64 sampling weights ``1 / count(class)``: every class is drawn equally often."""
    t = torch.as_tensor(targets, dtype=torch.long)
    return (1.0 / torch.bincount(t).double())[t]


class BalancedSampler(torch.utils.data.Sampler):
    """Each epoch, ``len(targets)`` indices drawn with replacement, every class equally likely
    (``sampler: balanced``); under torchrun each rank takes every ``world_size``-th draw.

    Example:
        >>> s = BalancedSampler([0] * 20 + [1] * 2, seed=0)
        >>> s.set_epoch(0); len(list(s))
        22
    """

    def __init__(self, targets, *, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.weights = balanced_weights(targets)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=g)
        return iter(draws[self.rank::self.num_replicas].tolist())


class FeatureBatches:
    """Batches of cached features ``[B, D]`` shaped like :class:`tlkit.data.Batch` (linear probe)."""

    def __init__(self, feats: torch.Tensor, targets: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0,
                 balanced: bool = False):
        self.feats, self.targets, self.batch_size, self.shuffle, self.seed = feats, targets, batch_size, shuffle, seed
        self.weights = balanced_weights(targets.cpu()) if balanced else None
        self.epoch = 0
        self.drop_last = shuffle and len(feats) > batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.feats) / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        from tlkit.data import Batch

        n = len(self.feats)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:  # sampler: balanced
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield Batch(self.feats[idx], self.targets[idx], idx, [])


@torch.no_grad()
def embed(model: nn.Module, loader: Iterable, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Pre-logit features ``[n, D]`` (float32, CPU), targets ``[n]`` and failures of a loader."""
    model.eval()
    feats, targets, failures = [], [], []
    for batch in loader:
        failures.extend(batch.failures)
        if batch.images is None:
            continue
        x = to_device(batch.images, rt)
        with autocast(rt.device, rt.amp_dtype):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(f.float().cpu())
        targets.append(batch.targets)
    return torch.cat(feats), torch.cat(targets), failures


def embed_records(model: nn.Module, records, class_to_idx: Mapping[str, int], data_config: Mapping[str, Any],
                  cfg: TrainConfig, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, list]:
    """:func:`embed` over ``records`` with the validation transform (no augmentation), ``2 x batch`` per step."""
    from tlkit.data import ImageDataset, build_transform, make_loader, size_hint_for

    ds = ImageDataset(records, build_transform(data_config), class_to_idx, size_hint=size_hint_for(data_config))
    return embed(model, make_loader(ds, batch_size=cfg.batch * 2, workers=rt.workers, device=rt.device), rt)


def feature_loaders(cfg: TrainConfig, model: nn.Module, splits: Splits, data_config: Mapping[str, Any], rt: Runtime):
    """Linear probe with ``precompute_features``: embed train and val once, without augmentation."""
    if cfg.cutmix > 0:
        raise TlkitError("cutmix needs images; with precompute_features=true use mixup only (or cutmix=0)")
    if rt.dist.enabled:
        raise TlkitError("precompute_features is for single-process runs; drop it or run without torchrun")
    out, failures = [], []
    for records in (splits.train, splits.val):
        f, t, fail = embed_records(model, records, splits.class_to_idx, data_config, cfg, rt)
        out.append((f.to(rt.device), t))
        failures.append(fail)
    log.info("linear probe: cached %d train and %d val feature vectors", len(out[0][0]), len(out[1][0]))
    train = FeatureBatches(*out[0], cfg.batch, shuffle=True, seed=cfg.seed, balanced=cfg.sampler == "balanced")
    val = FeatureBatches(*out[1], cfg.batch * 2, shuffle=False)
    return train, val, train, failures[0]


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last and x.ndim == 4 else x


__all__ = ["BalancedSampler", "FeatureBatches", "balanced_weights", "Runtime", "embed", "embed_records", "feature_loaders", "image_loaders", "setup_runtime", "to_device"]
