"""Checkpoints: inference weights (``.safetensors`` + JSON sidecar) and the training state for resume.

Files in a run folder:

    best.safetensors / best.json    weights of the best epoch (model or EMA) + how to rebuild them
    last.safetensors / last.json    weights after the last finished epoch
    train_state.pt                  everything ``--resume`` needs, in ONE file: model, optimizer,
                                    scheduler, grad scaler, EMA, epoch, step, RNG states, history

Every file is written to a temporary name and renamed into place (:mod:`tlkit.core.io`), so a SIGKILL
leaves the previous complete file. The sidecar's content is also stored inside the
``.safetensors`` header (``__metadata__["tlkit"]``), which is what :func:`load_weights` trusts: a
weights file always carries its own description, even if the kill fell between the two renames.

The training state holds only tensors and plain Python types and is read back with
``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tlkit
from tlkit.core.errors import TlkitError
from tlkit.core.io import write_bytes, write_json
from tlkit.data.config import DataConfig
from tlkit.models.weights import one_line, read_safetensors, torch_load

log = logging.getLogger(__name__)

FORMAT = "tlkit-checkpoint/1"
TRAIN_STATE = "train_state.pt"


@dataclass(frozen=True)
class RunMeta:
    """What a checkpoint says about itself: enough to rebuild the model without the original command.

    One schema for every writer: the finetune engine (``train="finetune"``, ``config`` the resolved
    :class:`~tlkit.train.config.TrainConfig`) and head-mode active-learning rounds (``train="head"``,
    the linear head folded into the backbone's classifier). :meth:`from_dict` also reads the two
    shapes written before this schema (see there).

    Attributes:
        backbone: the backbone name (timm name or ``tv:<name>``).
        classes: the K class names in output order.
        data_config: the preprocessing the model was trained with (:class:`~tlkit.data.DataConfig`,
            ``input_size`` at the training size); a dict is converted.
        model_kwargs: every constructor argument needed to rebuild the architecture.
        weights_origin: the starting weights (``WeightsInfo.to_dict()``: source, location, sha256).
        train: how the weights were trained: ``finetune`` or ``head``.
        config: the training settings (``TrainConfig.to_dict()`` for finetune; the head's description).
        epoch: the epoch the weights are from (finetune checkpoints).
        metrics: that epoch's history row.
        weights_from: ``model`` or ``ema``.
        task: ``single`` (softmax over the classes) or ``multilabel`` (one sigmoid per class).
        thresholds: multi-label only: per-class probability thresholds chosen on validation data (predict
            label k where ``sigmoid(logit_k) >= thresholds[k]``).

    Example:
        >>> meta = RunMeta("resnet18", ("cat", "dog"), {"input_size": (3, 224, 224), "mean": (0.5,) * 3,
        ...                "std": (0.5,) * 3})
        >>> RunMeta.from_dict(meta.to_dict()) == meta
        True
    """

    backbone: str
    classes: tuple[str, ...]
    data_config: DataConfig
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_origin: dict[str, Any] | None = None
    train: str = "finetune"
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    metrics: dict[str, Any] | None = None
    weights_from: str | None = None
    task: str = "single"
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_config", DataConfig.from_dict(self.data_config))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def at_epoch(self, epoch: int, metrics: dict[str, Any], weights_from: str,
                 thresholds: tuple[float, ...] | None = None) -> "RunMeta":
        """A copy describing the weights of one epoch (multi-label: with their validation thresholds)."""
        return replace(self, epoch=epoch, metrics=metrics, weights_from=weights_from,
                       thresholds=tuple(thresholds) if thresholds is not None else self.thresholds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); the per-epoch keys only when set; ``task`` and ``thresholds`` only
        for a multi-label model (a single-label checkpoint reads as before)."""
        out = {
            "backbone": self.backbone, "classes": list(self.classes), "num_classes": self.num_classes,
            "model_kwargs": dict(self.model_kwargs),
            "data_config": self.data_config.to_dict(),
            "weights_origin": self.weights_origin, "train": self.train, "config": dict(self.config),
        }
        for key in ("epoch", "metrics", "weights_from"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.multilabel:
            out["task"] = self.task
            if self.thresholds is not None:
                out["thresholds"] = list(self.thresholds)
        return out

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> "RunMeta":
        """Read :meth:`to_dict`'s output, or a checkpoint written before :class:`RunMeta`.

        Older shapes: finetune runs had no ``train`` key; head-mode rounds wrote ``weights``
        instead of ``weights_origin`` and ``config={"train": "head", ...}``. Unknown keys
        (``format``, ``tlkit_version``, ``num_classes``) are ignored.
        """
        config = dict(meta.get("config") or {})
        train = meta.get("train")
        if train is None:  # written before RunMeta: a head round said so in its config
            train = "head" if config.get("train") == "head" else "finetune"
            if train == "head":
                del config["train"]
        return cls(
            backbone=meta["backbone"], classes=tuple(meta["classes"]),
            data_config=DataConfig.from_dict(meta["data_config"]),
            model_kwargs=dict(meta.get("model_kwargs") or {}),
            weights_origin=meta.get("weights_origin", meta.get("weights")),
            train=train, config=config, epoch=meta.get("epoch"), metrics=meta.get("metrics"),
            weights_from=meta.get("weights_from"), task=meta.get("task", "single"),
            thresholds=tuple(float(t) for t in meta["thresholds"]) if meta.get("thresholds") is not None else None,
        )


def weights_path(run: str | os.PathLike, which: str = "best") -> Path:
    """``RUN/<which>.safetensors``."""
    return Path(run) / f"{which}.safetensors"


def _plain_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``path`` (``.safetensors``, meta in its header) and ``path.with_suffix('.json')``.

    Args:
        path: the ``.safetensors`` destination.
        state_dict: model weights.
        meta: JSON-ready description; for a model, :meth:`RunMeta.to_dict`.
    """
    from safetensors.torch import save

    path = Path(path)
    meta = {"format": FORMAT, "tlkit_version": tlkit.__version__, **meta}
    text = json.dumps(meta, default=str)
    write_bytes(path, save(_plain_state_dict(state_dict), metadata={"tlkit": text}))
    write_json(path.with_suffix(".json"), json.loads(text))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The description stored inside a ``.safetensors`` written by :func:`save_weights`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"no checkpoint at {path}; train one with `tlkit finetune --out {path.parent}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("tlkit")
    except Exception as e:  # noqa: BLE001 - a damaged file is a user-facing condition
        raise TlkitError(f"{path} is not a readable .safetensors file ({one_line(e)}); the checkpoint is damaged: "
                         f"use the other one (--checkpoint best|last) or train again") from None
    if raw is None:
        raise TlkitError(f"{path} was not written by tlkit (no tlkit metadata); use it as --weights instead")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise TlkitError(f"{path}: checkpoint format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of a ``.safetensors`` checkpoint."""
    meta = read_meta(path)
    return read_safetensors(path), meta


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for device, cuda_state in cuda_states_to_restore(state["cuda"], visible):
            torch.cuda.set_rng_state(cuda_state, device)


def cuda_states_to_restore(saved: list, visible: int) -> list[tuple[int, Any]]:
    """``[(device index, RNG state)]`` of the saved per-GPU states that fit the ``visible`` GPUs.

    A run saved on 8 GPUs and resumed on 1 (or another ``CUDA_VISIBLE_DEVICES``, or the CPU) restores
    the first ``min(8, visible)`` states; one warning says the GPU's random draws then differ from an
    uninterrupted run's (each epoch reseeds from the seed, so later epochs do not).

    Example:
        >>> [i for i, _ in cuda_states_to_restore([torch.zeros(16, dtype=torch.uint8)] * 8, 1)]
        [0]
    """
    saved = list(saved)
    if len(saved) != visible:
        log.warning("--resume: the training state holds the CUDA RNG state of %d GPU(s) and %d %s visible here; "
                    "restoring %d: this epoch's random draws on the GPU differ from an uninterrupted run's",
                    len(saved), visible, "is" if visible == 1 else "are", min(len(saved), visible))
    return list(enumerate(saved[:visible]))


# --------------------------------------------------------------------------- training state


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` (tensors and plain types only) to bytes, then write atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state with ``torch.load(weights_only=True)``."""
    return torch_load(path, what="a readable training state", map_location=map_location,
                      fix="the run cannot resume from it: train again with a new --out")


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state without its lr functions (they are rebuilt from the config)."""
    sd = scheduler.state_dict()
    if "lr_lambdas" in sd:
        sd["lr_lambdas"] = [None] * len(sd["lr_lambdas"])
    return sd


__all__ = [
    "FORMAT",
    "RunMeta",
    "TRAIN_STATE",
    "load_train_state",
    "load_weights",
    "read_meta",
    "rng_state",
    "save_train_state",
    "save_weights",
    "scheduler_state",
    "set_rng_state",
    "cuda_states_to_restore",
    "weights_path",
]
