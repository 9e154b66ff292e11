"""The fine-tuning loop, as small functions over a plain state object.

:func:`fit` reads top to bottom: check the data, build the model and loaders, set up the optimizer,
schedule, AMP and EMA, restore a killed run, then per epoch train, validate, checkpoint and log.

Example:
    >>> from tlkit.train import fit, make_config
    >>> cfg = make_config("finetune-fast", epochs=3, image_size=96)                 # doctest: +SKIP
    >>> result = fit(cfg, data="data/train", out="runs/demo")                       # doctest: +SKIP
    >>> result.best["val_accuracy"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from tlkit.core.dist_env import env_dist_info
from tlkit.core.errors import TlkitError
from tlkit.core.runtime import autocast, grad_scaler, seed_everything
from tlkit.data.config import DataConfig
from tlkit.data.device_decode import decode_path_of
from tlkit.train import autobatch
from tlkit.train import checkpoint as ckpt
from tlkit.train import outputs
from tlkit.train.config import TrainConfig, resolve_task_defaults
from tlkit.train.consistency import Consistency, UnlabeledSet
from tlkit.train.distributed import all_gather_objects, all_ranks, all_reduce_sum, barrier, shutdown
from tlkit.train.loaders import Runtime, feature_loaders, image_loaders, setup_runtime, to_device
from tlkit.train.losses import build_loss, build_mixup
from tlkit.train.metrics import compute_metrics, quick_metrics
from tlkit.train.model import create_classifier
from tlkit.train.optim import build_optimizer, head_module, set_body_trainable
from tlkit.train.predictions import Predictions, predict_loader
from tlkit.train.schedule import ScheduleSpec, build_scheduler
from tlkit.train.speedups import flush_denormals, keep_depthwise_fp32, outplace_activations
from tlkit.train.splits import Splits, prepare_splits
from tlkit.train.state import (CHECKPOINTS, TrainState, check_out_dir, check_resumable, restore, save_best,
                               save_epoch)

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        out: the run folder.
        classes: class names in output order.
        history: one dict per epoch (also in ``metrics.json``).
        best: the best epoch's row plus ``weights_from`` and ``val_metrics``.
        stopped_early: early stopping ended the run.
        resumed_from: epochs already done when this call started (0 for a fresh run).
        elapsed_s: wall time of this call.
        n_train: training images; n_val: validation images.
        rank: this process's rank under torchrun (0 otherwise); only rank 0 writes files.
    """

    out: Path
    classes: tuple[str, ...]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    stopped_early: bool
    resumed_from: int
    elapsed_s: float
    n_train: int
    n_val: int
    rank: int = 0


# --------------------------------------------------------------------------- setup


def head_only(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the body is frozen during ``epoch`` (0-based)."""
    return cfg.mode == "linear-probe" or (cfg.mode == "freeze-unfreeze" and epoch < cfg.freeze_epochs)


def set_phase(st: TrainState, cfg: TrainConfig, epoch: int) -> None:
    """Freeze/unfreeze the body for ``epoch``; a frozen body also keeps its BatchNorm statistics."""
    frozen = head_only(cfg, epoch)
    if cfg.mode == "freeze-unfreeze":
        set_body_trainable(st.model, not frozen)
    st.trained.train()
    if frozen and st.trained is st.model:
        st.model.eval()
        head_module(st.model).train()


def schedule_phases(cfg: TrainConfig, steps_per_epoch: int) -> list[tuple[int, float]]:
    """``[(steps, lr multiplier)]``: one phase, or head-only then unfrozen for freeze-unfreeze."""
    if cfg.mode == "freeze-unfreeze":
        return [(cfg.freeze_epochs * steps_per_epoch, 1.0),
                ((cfg.epochs - cfg.freeze_epochs) * steps_per_epoch, cfg.unfreeze_lr_scale)]
    return [(cfg.epochs * steps_per_epoch, 1.0)]


def build_state(cfg: TrainConfig, model: nn.Module, trained: nn.Module, forward, steps_per_epoch: int,
                rt: Runtime) -> TrainState:
    """Optimizer (over ``trained``), per-step scheduler, grad scaler (fp16) and EMA."""
    if cfg.mode == "linear-probe":
        set_body_trainable(model, False)
    opt = build_optimizer(trained, cfg)
    spec = ScheduleSpec(total_steps=cfg.epochs * steps_per_epoch,
                        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                        steps_per_epoch=steps_per_epoch, min_ratio=cfg.min_lr_ratio,
                        step_epochs=cfg.step_epochs, gamma=cfg.gamma)
    sched = build_scheduler(opt, cfg.schedule, schedule_phases(cfg, steps_per_epoch), spec)
    scaler = grad_scaler(rt.device) if rt.amp_dtype == torch.float16 else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(trained, decay=cfg.ema_decay, use_warmup=True)
    return TrainState(model=model, forward=forward, trained=trained, optimizer=opt, scheduler=sched,
                      scaler=scaler, ema=ema)


# --------------------------------------------------------------------------- one epoch


def optimizer_step(st: TrainState, cfg: TrainConfig) -> None:
    """Unscale/clip, step, zero grads, advance the schedule and the EMA."""
    if cfg.clip_grad:
        if st.scaler is not None:
            st.scaler.unscale_(st.optimizer)
        torch.nn.utils.clip_grad_norm_(st.trained.parameters(), cfg.clip_grad)
    if st.scaler is not None:
        st.scaler.step(st.optimizer)
        st.scaler.update()
    else:
        st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.scheduler.step()
    st.step += 1
    if st.ema is not None:
        st.ema.update(st.trained, step=st.step)


def train_one_epoch(st: TrainState, cfg: TrainConfig, loader: Iterable, loss_fn: nn.Module,
                    mixup: Callable | None, rt: Runtime, progress: Progress | None,
                    on_step: Callable[[int, torch.Tensor, float], None] | None = None,
                    consistency: Consistency | None = None) -> dict[str, float]:
    """One pass over the training data; returns ``train_loss``, ``train_accuracy``, images, seconds.

    Multi-label batches (targets ``[B, K]``): ``train_accuracy`` is the label accuracy (the share of each
    image's K yes/no decisions at sigmoid 0.5 that are right).

    ``on_step(step, batch loss, lr)`` is called after each optimizer step (this process's batch; the
    loss a detached 0-d tensor on the device). Loss and accuracy add up on the device and are read once,
    at the end: no step waits for the GPU to report a number. With ``consistency`` each step also draws
    an unlabeled batch and adds FixMatch's term (:mod:`tlkit.train.consistency`); ``train_loss`` is then
    the labeled loss plus that term, and the epoch's unlabeled statistics join the result.
    """
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    label_correct = torch.zeros((), dtype=torch.float64, device=rt.device)  # multi-label
    seen = 0
    lr = max(g["lr"] for g in st.optimizer.param_groups)
    n_batches = len(loader)
    st.optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(loader):
        u = consistency.next_batch() if consistency is not None else None
        st.failures.update({int(j): r for j, r in batch.failures})
        # a batch needs 2 decoded images (BatchNorm); under DDP every rank skips it or none does, else
        # the ranks that train would wait forever in the gradient all-reduce for the one that skipped
        if not all_ranks(batch.images is not None and len(batch.targets) >= 2, rt.dist):
            continue
        x, y = to_device(batch.images, rt), batch.targets.to(rt.device, non_blocking=True)
        target = y
        if mixup is not None and len(y) % 2 == 0:
            x, target = mixup(x, y)
        multilabel = y.ndim == 2
        u_loss = None
        with autocast(rt.device, rt.amp_dtype):
            if u is None:
                logits = st.forward(x)
            else:
                logits, u_loss = consistency.forward(st.forward, x, u, lambda t: to_device(t, rt))
        loss = loss_fn(logits.float(), target)
        if u_loss is not None:
            loss = loss + u_loss
        scaled = loss / cfg.grad_accum
        (st.scaler.scale(scaled) if st.scaler is not None else scaled).backward()
        if (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches:
            lr = max(g["lr"] for g in st.optimizer.param_groups)  # the lr this step used
            optimizer_step(st, cfg)
            if on_step:
                on_step(st.step, loss.detach(), lr)
        loss_sum += loss.detach() * len(y)
        if multilabel:  # label accuracy: the share of an image's K decisions right at sigmoid 0.5
            label_correct += ((logits.detach() > 0) == (y > 0.5)).double().mean(1).sum()
        else:
            correct += (logits.detach().argmax(-1) == y).sum()
        seen += len(y)
        if progress:
            progress(len(y) + len(batch.failures))
    loss_total, n_correct = torch.stack([loss_sum, correct.double() + label_correct]).tolist()  # the epoch's one read
    loss_total, n_correct, seen = all_reduce_sum([loss_total, n_correct, seen], rt.dist)
    if not seen:
        raise TlkitError("no training image could be decoded; see skipped.csv in the run folder")
    out = {"train_loss": loss_total / seen, "train_accuracy": n_correct / seen, "train_images": int(seen),
           "train_time_s": time.perf_counter() - t0, "lr": lr}
    if consistency is not None:
        out.update(consistency.epoch_stats(lambda values: all_reduce_sum(values, rt.dist)))
    return out


def validate(module: nn.Module, forward, loader: Iterable, rt: Runtime, multilabel: bool = False) -> Predictions:
    """Predictions over the validation data, gathered from all ranks."""
    preds = predict_loader(module, loader, device=rt.device, amp_dtype=rt.amp_dtype,
                           channels_last=rt.channels_last, forward=forward, multilabel=multilabel)
    if not rt.dist.enabled:
        return preds
    parts = all_gather_objects(preds, rt.dist)
    n = sum(int(np.isfinite(p.loss)) * len(p.targets) for p in parts)
    loss = sum(p.loss * len(p.targets) for p in parts if np.isfinite(p.loss)) / max(1, n)
    return Predictions(np.concatenate([p.probs for p in parts]), np.concatenate([p.targets for p in parts]),
                       np.concatenate([p.indices for p in parts]), [f for p in parts for f in p.failures], loss)


def _quick(preds: Predictions, multilabel: bool) -> dict[str, float]:
    if multilabel:
        from tlkit.train.multilabel import quick_multilabel_metrics

        return quick_multilabel_metrics(preds.targets, preds.probs)
    return quick_metrics(preds.targets, preds.probs)


def epoch_row(epoch: int, train: dict, val: Predictions, ema_val: Predictions | None, st: TrainState,
              multilabel: bool = False) -> dict:
    """One ``metrics.json`` history entry (multi-label: ``val_map``, ``val_map_micro``, ``val_f1_micro``,
    ``val_f1_macro`` instead of ``val_accuracy`` and ``val_f1_macro``)."""
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train["train_loss"],
                           "train_accuracy": train["train_accuracy"], "val_loss": val.loss}
    row.update({f"val_{k}": v for k, v in _quick(val, multilabel).items()})
    if ema_val is not None:
        row["ema_val_loss"] = ema_val.loss
        row.update({f"ema_val_{k}": v for k, v in _quick(ema_val, multilabel).items()})
    for key in ("unlabeled_images", "pseudo_labels", "mask_rate", "pseudo_accuracy"):  # fixmatch runs only
        if key in train:
            row[key] = train[key]
    row["lr"] = train["lr"]  # peak (head) lr of the epoch's last step
    row["epoch_time_s"] = train["train_time_s"]
    row["images_per_s"] = train["train_images"] / max(1e-9, train["train_time_s"])
    return row


def _score(row: dict, monitor: str, prefix: str = "") -> float:
    key = prefix + monitor
    value = row.get(key)
    if value is None or not np.isfinite(value):
        return -math.inf
    return -value if monitor.endswith("loss") else value


def pick_best(row: dict, cfg: TrainConfig, best: dict | None) -> tuple[bool, str]:
    """Whether this epoch beats ``best`` on ``cfg.monitor``, and whose weights won (model or EMA).

    A tie on the monitored metric (frequent for accuracy on small validation sets) goes to the
    lower validation loss.
    """
    def key(prefix: str) -> tuple[float, float]:
        return _score(row, cfg.monitor, prefix), _score(row, "val_loss", prefix)

    score, source = key(""), "model"
    if cfg.ema and key("ema_") > score:
        score, source = key("ema_"), "ema"
    if best is None:
        return True, source
    return score > (best["score"], best.get("tiebreak", -math.inf)), source


def best_entry(row: dict, source: str, preds: Predictions, cfg: TrainConfig, classes,
               multilabel: bool = False) -> dict[str, Any]:
    """The ``best`` record: the epoch's row, whose weights, and full validation metrics (multi-label: with
    the per-class ``thresholds`` chosen on this validation data, which the checkpoint stores)."""
    prefix = "ema_" if source == "ema" else ""
    entry = {**row, "monitor": cfg.monitor, "score": _score(row, cfg.monitor, prefix),
             "tiebreak": _score(row, "val_loss", prefix), "weights_from": source}
    if not multilabel:
        entry["val_metrics"] = compute_metrics(preds.targets, preds.probs, classes) if len(preds.targets) else None
        return entry
    from tlkit.train.multilabel import DEFAULT_THRESHOLD, choose_thresholds, multilabel_metrics

    th = choose_thresholds(preds.targets, preds.probs) if len(preds.targets) else [DEFAULT_THRESHOLD] * len(classes)
    entry["thresholds"] = th
    entry["val_metrics"] = multilabel_metrics(preds.targets, preds.probs, classes, th) if len(preds.targets) else None
    return entry


def _module_prefix(root: nn.Module, child: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is child:
            return name + "." if name else ""
    raise ValueError("child is not a submodule")


def wrap_for_training(model: nn.Module, cfg: TrainConfig, rt: Runtime):
    """``model`` as the loop calls it: DDP under torchrun, ``torch.compile``d when asked."""
    forward: Any = model
    if rt.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                      find_unused_parameters=cfg.mode == "freeze-unfreeze")
    if cfg.compile:
        forward = torch.compile(forward)
    return forward


def _val_records(pipe: Pipeline, splits: Splits, preds: Predictions | None):
    """``splits.val`` when ``preds.indices`` index it: always for images; for cached features only when
    every validation image was embedded (failed ones shift the rows)."""
    if pipe.val_forward is None or (preds is not None and len(preds.indices) == len(splits.val)):
        return splits.val
    return None


def _write_skipped(out: Path, splits: Splits, train_failures: dict[int, str], val_failures) -> int:
    from tlkit.data import summarize_failures, write_skipped

    failures = list(train_failures.items()) + [(len(splits.train) + i, r) for i, r in val_failures]
    if failures:
        write_skipped(out / outputs.SKIPPED, splits.train + splits.val, failures)
        log.warning("%s; see %s", summarize_failures(failures), out / outputs.SKIPPED)
    return len({i for i, _ in failures})


# --------------------------------------------------------------------------- fit


def fit(
    config: TrainConfig,
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    val: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: str = "full",
    task: str = "auto",
    label_delim: str = ";",
    unlabeled: UnlabeledSet | None = None,
) -> FitResult:
    """Fine-tune ``config.backbone`` on a class-folder tree; write checkpoints, metrics and plots to ``out``.

    Args:
        config: the resolved :class:`TrainConfig` (see :func:`tlkit.train.make_config`).
        data: training images: a class-folder tree or a labeled CSV manifest (multi-label: ``path,labels``,
            see :func:`tlkit.data.scan_images`).
        out: the run folder.
        val: validation images; ``None`` holds out a stratified ``config.val_fraction`` of ``data``.
        resume: continue the run in ``out`` from its last finished epoch.
        progress: called with the number of training images just processed.
        on_epoch: called with each epoch's history row.
        checkpoints: ``full`` (best, last, ``train_state.pt``, metrics and plots after each epoch; TensorBoard
            when configured) or ``best`` (best weights and metrics only, no TensorBoard: an active-learning
            round, which a crash restarts whole; :data:`tlkit.train.state.CHECKPOINTS`).
        task: ``auto`` | ``single`` | ``multilabel`` (see :func:`tlkit.data.scan_images`). A multi-label run
            trains one sigmoid per class (:mod:`tlkit.train.multilabel`: ``ce`` means binary cross-entropy,
            ``asl`` the asymmetric loss, ``class_weights`` the positives' weights), monitors ``val_map`` where
            the config says ``val_accuracy``, and stores per-class thresholds chosen on validation data with
            its checkpoints.
        label_delim: the separator of a manifest cell's labels.
        unlabeled: unlabeled images that teach the network too, by FixMatch's consistency loss
            (:mod:`tlkit.train.consistency`; the ``fixmatch_*`` config keys). The history rows then carry
            ``unlabeled_images``, ``pseudo_labels``, ``mask_rate`` and ``pseudo_accuracy``.

    Raises:
        TlkitError: bad data (one class, an empty class folder, val classes unknown to train),
            ``out`` already trained without ``resume``, ``resume`` with another backbone/classes.
    """
    t0 = time.perf_counter()
    cfg, out = config, Path(out)
    if checkpoints not in CHECKPOINTS:
        raise TlkitError(f"checkpoints={checkpoints!r}: choose one of {', '.join(CHECKPOINTS)}")
    if checkpoints == "best" and resume:
        raise TlkitError("resume needs the training state, which checkpoints='best' does not write")
    state_file = check_out_dir(out, resume)
    splits = prepare_splits(data, val, val_fraction=cfg.val_fraction, seed=cfg.seed, task=task,
                            label_delim=label_delim)
    cfg = task_config(cfg, splits)
    if not splits.multilabel and cfg.monitor == "val_map":
        raise TlkitError("monitor=val_map (mean average precision over labels) is for multi-label data; on "
                         "single-label data monitor val_accuracy, val_f1_macro or val_loss")
    warn_if_imbalanced(splits, cfg)
    saved = ckpt.load_train_state(state_file) if state_file else None
    chosen = None
    if saved is not None:  # batch_size auto: the batch the run started with
        cfg, chosen = autobatch.resumed(cfg, saved["config"], env_dist_info().world_size)
        check_resumable(saved, cfg, splits.classes, out)
    rt = setup_runtime(cfg)
    try:
        with flush_denormals(rt.device):
            result = _fit(cfg, splits, out, saved, rt, progress, on_epoch, t0, chosen, checkpoints, unlabeled)
        barrier(rt.dist)  # every rank tears the group down together, after rank 0's final writes
        return result
    finally:
        shutdown()


def task_config(cfg: TrainConfig, splits: Splits) -> TrainConfig:
    """The config for ``splits``' task: its defaults for the fields left ``None``
    (:data:`tlkit.train.config.TASK_DEFAULTS`), then :func:`multilabel_config` on multi-label data."""
    cfg = resolve_task_defaults(cfg, splits.task)
    return multilabel_config(cfg) if splits.multilabel else cfg


def multilabel_config(cfg: TrainConfig) -> TrainConfig:
    """The config of a multi-label run: ``monitor: val_accuracy`` (the default, undefined for label sets)
    becomes ``val_map``; a single-label-only setting is a one-line error."""
    from tlkit.train.multilabel import MULTILABEL_LOSSES

    if cfg.sampler == "balanced":
        raise TlkitError("sampler=balanced draws images by their one class; multi-label data has label sets: use "
                         "--set class_weights=balanced (a pos_weight per label) instead")
    if cfg.loss not in ("ce", *MULTILABEL_LOSSES):
        raise TlkitError(f"loss {cfg.loss!r} is for single-label data; on multi-label data use one of: "
                         f"{', '.join(MULTILABEL_LOSSES)} (--set loss=bce or loss=asl)")
    if cfg.monitor == "val_accuracy":
        log.info("multi-label data: monitoring val_map (macro average precision) for the best epoch")
        cfg = cfg.replace(monitor="val_map")
    return cfg


def warn_if_imbalanced(splits: Splits, cfg: TrainConfig) -> None:
    """One warning when the largest training class has over 10x the images of the smallest and neither
    ``class_weights`` nor ``sampler: balanced`` is set (multi-label: images with each label; the fix is
    ``class_weights=balanced``, a pos_weight per label)."""
    from tlkit.data import class_imbalance

    found = class_imbalance(dict(zip(splits.classes, splits.counts())))
    if splits.multilabel:
        if found is not None and cfg.class_weights is None:
            log.warning("label imbalance in the training split: %s; weight each label's positives with --set "
                        "class_weights=balanced (pos_weight = negatives / positives), and judge the run by macro "
                        "mAP rather than micro figures", found.describe())
        return
    if found is not None and cfg.class_weights is None and cfg.sampler != "balanced":
        log.warning("class imbalance in the training split: %s; weight the loss with --set class_weights=balanced "
                    "or draw classes equally with --set sampler=balanced, and judge the run by macro F1 rather "
                    "than accuracy", found.describe())


def prepare_model(cfg: TrainConfig, num_classes: int, rt: Runtime):
    """The classifier on its device and memory format, mode's freezing applied.

    Returns:
        ``(backbone, model_kwargs, data_config, model)``; ``data_config`` is the backbone's
        :class:`~tlkit.data.DataConfig` at the training image size.
    """
    bb, model_kwargs = create_classifier(cfg, num_classes)
    data_config = bb.data_config.at_size(cfg.image_size)
    model = bb.model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.device.type == "cpu" and rt.amp_dtype == torch.bfloat16:
        log.info("bf16 on CPU: %d depthwise convolutions kept in fp32", keep_depthwise_fp32(model))
    log.debug("%d in-place activations made out-of-place", outplace_activations(model))
    if cfg.sync_bn and rt.dist.enabled:
        if rt.device.type != "cuda":
            raise TlkitError("sync_bn needs CUDA GPUs (SyncBatchNorm has no CPU kernel); drop --set sync_bn=true")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.mode == "linear-probe":
        set_body_trainable(model, False)
    return bb, model_kwargs, data_config, model


@dataclass(frozen=True)
class Pipeline:
    """What one epoch iterates over and which module it trains.

    ``trained`` is the whole model, or only its head when a linear probe runs on cached features
    (then ``prefix`` is the head's name in the model and ``val_forward`` the head).
    """

    train: Iterable
    val: Iterable
    sampler: Any  # has set_epoch(epoch)
    trained: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    val_forward: Callable[[torch.Tensor], torch.Tensor] | None
    prefix: str
    failures: list
    consistency: Consistency | None = None


def make_pipeline(cfg: TrainConfig, model: nn.Module, splits: Splits, data_config: DataConfig, rt: Runtime,
                  unlabeled: UnlabeledSet | None = None) -> Pipeline:
    """Image loaders (augmented) for the model, or cached features for a linear probe's head; with
    ``unlabeled``, FixMatch's unlabeled loader too, the labeled loader cycled to its steps per epoch."""
    from tlkit.train import consistency as fixmatch

    if unlabeled is not None:
        fixmatch.check_supported(cfg)
        if splits.multilabel:
            raise TlkitError("FixMatch's consistency loss (--unlabeled, --ssl fixmatch) needs single-label data: "
                             "its pseudo-label is one class; leave it out for multi-label data")
    if cfg.mode == "linear-probe" and cfg.precompute_features:
        train, val, sampler, failures = feature_loaders(cfg, model, splits, data_config, rt)
        head = head_module(model)
        return Pipeline(train, val, sampler, head, head, head, _module_prefix(model, head), failures)
    train, val, sampler = image_loaders(cfg, splits, data_config, rt)
    forward = wrap_for_training(model, cfg, rt)
    if unlabeled is None:
        return Pipeline(train, val, sampler, model, forward, None, "", [])
    cons = fixmatch.build(unlabeled, cfg, data_config, splits.class_to_idx, len(train), rt)
    cycled = fixmatch.Cycled(train, sampler, cons.steps)
    return Pipeline(cycled, val, cycled, model, forward, None, "", [], cons)


def run_epoch(st: TrainState, cfg: TrainConfig, epoch: int, pipe: Pipeline, loss_fn: nn.Module, mixup,
              rt: Runtime, progress: Progress | None, classes,
              on_step: Callable[[int, torch.Tensor, float], None] | None = None,
              multilabel: bool = False) -> tuple[dict, bool, Predictions]:
    """Train, validate (model and EMA), update best/patience; returns (row, improved, val predictions).

    ``multilabel``: sigmoid outputs; the epoch's validation thresholds go to ``st.last_thresholds``."""
    set_phase(st, cfg, epoch)
    pipe.sampler.set_epoch(epoch)
    # each epoch's randomness depends only on (seed, epoch, rank), not on what ran before it
    # (validation, lazy imports in plotting): a resumed run repeats an uninterrupted one
    seed_everything(cfg.seed * 1_000_003 + epoch * 1_009 + rt.dist.rank)
    if pipe.consistency is not None:
        pipe.consistency.set_epoch(epoch)
    train = train_one_epoch(st, cfg, pipe.train, loss_fn, mixup, rt, progress, on_step, pipe.consistency)
    preds = validate(st.model if pipe.val_forward is None else pipe.trained, pipe.val_forward, pipe.val, rt,
                     multilabel)
    ema_preds = None
    if st.ema is not None:
        ema_preds = validate(st.ema.module, st.ema.module if pipe.val_forward is not None else None, pipe.val, rt,
                             multilabel)
    row = epoch_row(epoch, train, preds, ema_preds, st, multilabel)
    if multilabel:
        from tlkit.train.multilabel import DEFAULT_THRESHOLD, choose_thresholds

        st.last_thresholds = (choose_thresholds(preds.targets, preds.probs) if len(preds.targets)
                              else [DEFAULT_THRESHOLD] * len(classes))
    improved, source = pick_best(row, cfg, st.best)
    if improved:
        st.best_preds = ema_preds if source == "ema" else preds
        st.best = best_entry(row, source, st.best_preds, cfg, classes, multilabel)
    st.bad_epochs = 0 if improved else st.bad_epochs + 1
    st.history.append(row)
    st.epoch = epoch + 1
    return row, improved, preds


def validate_start(st: TrainState, cfg: TrainConfig, pipe: Pipeline, rt: Runtime, classes, multilabel: bool) -> dict:
    """``head_init: probe``: validate the start model (the probe's head on the untouched body) and make it
    the best so far (``epoch: 0``), so that a fine-tune that never beats the probe on the hold-out keeps it."""
    preds = validate(st.model if pipe.val_forward is None else pipe.trained, pipe.val_forward, pipe.val, rt, multilabel)
    row = {"epoch": 0, "val_loss": preds.loss, **{f"val_{k}": v for k, v in _quick(preds, multilabel).items()}}
    st.best_preds = preds
    st.best = best_entry(row, "model", preds, cfg, classes, multilabel)
    log.info("head_init=probe: the start model scores %s %.4f on the hold-out; an epoch must beat it to replace it",
             cfg.monitor, row.get(cfg.monitor, float("nan")))
    return row


def keep_start_refit(st: TrainState, cfg: TrainConfig, splits: Splits) -> bool:
    """Whether the kept start model's head is refitted on the training and hold-out images: ``head_init:
    probe``, no epoch beat the start, single-label, and the hold-out was cut from the training data (a
    ``--val`` folder the user gave stays unseen)."""
    return (cfg.head_init == "probe" and st.best is not None and st.best.get("epoch") == 0
            and "refit" not in st.best and not splits.multilabel and splits.val_origin == "split")


def refit_kept_start(out: Path, st: TrainState, splits: Splits, data_config: DataConfig, cfg: TrainConfig,
                     rt: Runtime) -> None:
    """``best.safetensors`` (the start) with its head refitted on every labeled image; ``metrics.json``'s best
    keeps the hold-out scores measured before the refit and says ``refit: N images``."""
    from tlkit.train.head_init import refit_head_on_all

    sd, meta = ckpt.load_weights(out / "best.safetensors")
    st.model.load_state_dict(sd)
    n = refit_head_on_all(st.model, splits, data_config, cfg, rt)
    st.best["refit"] = n
    ckpt.save_weights(out / "best.safetensors", st.model.state_dict(), {**meta, "refit": n})
    outputs.write_history(out, st.history, st.best)


def _fit(cfg: TrainConfig, splits: Splits, out: Path, saved: dict | None, rt: Runtime, progress, on_epoch,
         t0: float, chosen: dict | None = None, checkpoints: str = "full",
         unlabeled: UnlabeledSet | None = None) -> FitResult:
    k = len(splits.classes)
    bb, model_kwargs, data_config, model = prepare_model(cfg, k, rt)
    probe_start = False  # head_init: probe on a fresh run (a resumed run restores its trained head instead)
    if cfg.head_init == "probe" and saved is None:
        from tlkit.train.head_init import init_head_from_probe

        probe_start = init_head_from_probe(model, splits, data_config, cfg, rt) is not None
    if chosen is None:  # batch_size auto: probed on CUDA; the lr rule applied
        cfg, chosen = autobatch.resolve(cfg, model, rt, len(splits.train), data_config.input_size, k)
    pipe = make_pipeline(cfg, model, splits, data_config, rt, unlabeled)
    chosen["decode"] = {"train": decode_path_of(pipe.train), "val": decode_path_of(pipe.val)}
    steps_per_epoch = max(1, math.ceil(len(pipe.train) / cfg.grad_accum))
    st = build_state(cfg, model, pipe.trained, pipe.forward, steps_per_epoch, rt)
    st.failures.update({int(i): r for i, r in pipe.failures})
    if saved is not None:
        restore(st, saved)
        log.info("resuming %s after epoch %d of %d", out, st.epoch, cfg.epochs)
    ml = splits.multilabel
    loss_fn = build_loss(cfg, k, splits.counts(), multilabel=ml, n_images=len(splits.train)).to(rt.device)
    mixup = build_mixup(cfg, k, multilabel=ml)
    meta = ckpt.RunMeta(bb.name, tuple(splits.classes), data_config, model_kwargs,
                        weights_origin=bb.weights.to_dict(), train="finetune", config=cfg.to_dict(), task=splits.task)
    if rt.dist.is_main:
        outputs.write_run_header(out, cfg, splits.classes, splits.train, splits.val, splits.val_origin, chosen)
    else:  # one progress bar and one log, from rank 0
        progress = on_epoch = None
    tb = outputs.TensorBoardLog(out, enabled=rt.dist.is_main and cfg.tensorboard and checkpoints == "full")
    resumed_from, val_failures, preds = st.epoch, [], None
    stopped = bool(saved and saved.get("stopped"))
    if probe_start:
        start = validate_start(st, cfg, pipe, rt, splits.classes, ml)
        if rt.dist.is_main:
            save_best(out, st, meta, pipe.prefix, start)
    for epoch in range(st.epoch, cfg.epochs if not stopped else st.epoch):
        row, improved, preds = run_epoch(st, cfg, epoch, pipe, loss_fn, mixup, rt, progress, splits.classes,
                                         tb.log_step, ml)
        val_failures = preds.failures
        stopped = bool(cfg.patience) and st.bad_epochs >= cfg.patience
        if rt.dist.is_main:
            save_epoch(out, st, meta, improved, pipe.prefix, stopped, checkpoints)
            tb.log(row)
        barrier(rt.dist)
        if on_epoch:
            on_epoch(row)
        if stopped:
            log.info("early stopping: %s did not improve for %d epochs", cfg.monitor, cfg.patience)
            break
    if rt.dist.is_main and keep_start_refit(st, cfg, splits):
        refit_kept_start(out, st, splits, data_config, cfg, rt)
    if rt.dist.is_main:
        shown = st.best_preds if st.best_preds is not None else preds
        outputs.log_final(tb, cfg, st.best, splits.classes, shown, _val_records(pipe, splits, shown))
    tb.close()
    train_failures: dict[int, str] = {}
    for part in all_gather_objects(st.failures, rt.dist):
        train_failures.update(part)
    if rt.dist.is_main:
        _write_skipped(out, splits, train_failures, val_failures)
    return FitResult(out=out, classes=splits.classes, history=st.history, best=st.best, stopped_early=stopped,
                     resumed_from=resumed_from, elapsed_s=time.perf_counter() - t0,
                     n_train=len(splits.train), n_val=len(splits.val), rank=rt.dist.rank)


__all__ = ["FitResult", "Pipeline", "fit", "make_pipeline", "prepare_model", "run_epoch",
           "train_one_epoch", "validate"]
