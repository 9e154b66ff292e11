"""The training state: what changes while training, how it is checkpointed and restored.

:class:`TrainState` is a plain container the loop's functions update; :func:`save_epoch` writes
the best/last weights and the single-file training state after every epoch, :func:`restore` loads
it back for ``--resume``, and :func:`check_resumable` refuses to resume into a different model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_dir
from tlkit.train import checkpoint as ckpt
from tlkit.train import outputs
from tlkit.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything that changes while training; the loop's functions read and update it."""

    model: nn.Module  # the classifier, unwrapped (what checkpoints store)
    forward: Callable[[torch.Tensor], torch.Tensor]  # what the loop calls (DDP / compiled / head on features)
    trained: nn.Module  # the module whose weights the optimizer and EMA track
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any  # tlkit.core.runtime.grad_scaler()'s GradScaler (fp16), else None
    ema: nn.Module | None
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    bad_epochs: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    best_preds: Any = None  # the best epoch's validation Predictions, for plots (this call only, not checkpointed)
    last_thresholds: list[float] | None = None  # multi-label: the last epoch's validation thresholds


def check_out_dir(out: Path, resume: bool) -> Path | None:
    """The training state to resume from, or None; refuses to overwrite a trained run."""
    check_output_dir(out)
    state = out / ckpt.TRAIN_STATE
    if resume:
        if state.is_file():
            return state
        log.warning("--resume: %s holds no training state yet; starting from epoch 1", out)
        return None
    if state.is_file() or any(out.glob("*.safetensors")):
        raise TlkitError(f"{out} already holds a training run; add --resume to continue it, or choose a new --out")
    return None


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, classes: tuple[str, ...], out: Path) -> None:
    """Refuse to resume into a different model; warn about other changed settings."""
    old = saved["config"]
    for key, now in (("backbone", cfg.backbone), ("mode", cfg.mode), ("image_size", cfg.image_size)):
        if old.get(key) != now:
            raise TlkitError(
                f"--resume: {out} was trained with {key} {old.get(key)!r}, not {now!r}; "
                f"use the same {key} or a new --out"
            )
    if tuple(saved["classes"]) != tuple(classes):
        raise TlkitError(
            f"--resume: {out} was trained on classes {', '.join(saved['classes'])}, the data now has "
            f"{', '.join(classes)}; use the same data or a new --out"
        )
    changed = sorted(k for k, v in cfg.to_dict().items() if old.get(k) != v)
    if changed:
        log.warning("--resume: settings changed since the run started: %s", ", ".join(changed))


def restore(st: TrainState, saved: dict[str, Any]) -> None:
    """Load a training state written by :func:`save_epoch` into ``st``."""
    st.model.load_state_dict(saved["model"])
    st.optimizer.load_state_dict(saved["optimizer"])
    st.scheduler.load_state_dict(saved["scheduler"])
    if st.scaler is not None and saved.get("scaler"):
        st.scaler.load_state_dict(saved["scaler"])
    if st.ema is not None and saved.get("ema"):
        st.ema.load_state_dict(saved["ema"])
    st.epoch, st.step = int(saved["epoch"]), int(saved["step"])
    st.history, st.best, st.bad_epochs = list(saved["history"]), saved["best"], int(saved["bad_epochs"])
    st.failures = {int(k): v for k, v in saved.get("failures", {}).items()}
    ckpt.set_rng_state(saved["rng"])


def export_state_dict(st: TrainState, use_ema: bool, prefix: str) -> dict[str, torch.Tensor]:
    """The classifier's weights, with the EMA copy of the trained part when ``use_ema``."""
    sd = dict(st.model.state_dict())
    if use_ema and st.ema is not None:
        sd.update({prefix + k: v for k, v in st.ema.module.state_dict().items()})
    return sd


def train_state_dict(st: TrainState, meta: ckpt.RunMeta, stopped: bool) -> dict[str, Any]:
    """Everything ``--resume`` needs (tensors and plain types only)."""
    return {
        "format": ckpt.FORMAT, "backbone": meta.backbone, "classes": list(meta.classes), "config": meta.config,
        "epoch": st.epoch, "step": st.step, "stopped": stopped,
        "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
        "scheduler": ckpt.scheduler_state(st.scheduler),
        "scaler": st.scaler.state_dict() if st.scaler is not None else None,
        "ema": st.ema.state_dict() if st.ema is not None else None,
        "rng": ckpt.rng_state(), "history": st.history, "best": st.best, "bad_epochs": st.bad_epochs,
        "failures": {str(k): v for k, v in st.failures.items()},
    }


#: what :func:`save_epoch` writes after each epoch: everything (``tlkit finetune``), or only the best
#: weights and the history (an active-learning round: short, and restarted whole after a crash, so the
#: full training state, ``last.safetensors`` and the plots buy nothing there)
CHECKPOINTS = ("full", "best")


def save_best(out: Path, st: TrainState, meta: ckpt.RunMeta, prefix: str, row: dict[str, Any]) -> None:
    """``best.safetensors``: the weights ``st.best`` names (model or EMA), described by ``row``."""
    source = st.best["weights_from"]
    ckpt.save_weights(out / "best.safetensors", export_state_dict(st, source == "ema", prefix),
                      meta.at_epoch(row["epoch"], row, source, st.best.get("thresholds")).to_dict())


def save_epoch(out: Path, st: TrainState, meta: ckpt.RunMeta, improved: bool, prefix: str, stopped: bool,
               checkpoints: str = "full") -> None:
    """best (if improved), last, the training state, then metrics/log/plots; each file atomic.

    ``checkpoints="best"``: only best (if improved) and metrics/log (:data:`CHECKPOINTS`)."""
    row = st.history[-1]
    if improved:
        save_best(out, st, meta, prefix, row)
    if checkpoints == "best":
        outputs.write_history(out, st.history, st.best)
        return
    ckpt.save_weights(out / "last.safetensors", export_state_dict(st, False, prefix),
                      meta.at_epoch(row["epoch"], row, "model", st.last_thresholds).to_dict())
    ckpt.save_train_state(out / ckpt.TRAIN_STATE, train_state_dict(st, meta, stopped))
    outputs.write_history(out, st.history, st.best)
    outputs.write_plots(out, st.history, st.best, list(meta.classes), st.best_preds if improved else None,
                        multilabel=meta.multilabel)


__all__ = ["CHECKPOINTS", "TrainState", "check_out_dir", "check_resumable", "export_state_dict", "restore", "save_best",
           "save_epoch", "train_state_dict"]
