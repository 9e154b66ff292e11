"""The search of ``tlkit tune``: what a trial may change (:class:`SearchSpace`), the values Optuna proposes
(:func:`suggest`, rounded as a recipe writes them), and what one trial was (:class:`TrialRecord`).

Below both the search loop (:mod:`tlkit.train.tune`) and the study it keeps (:mod:`tlkit.train.tune_store`).

Example:
    >>> space = search_space(make_config(), 3e-3, trial_epochs=2)    # doctest: +SKIP
    >>> space.lr, space.searched                                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from tlkit.core.errors import TlkitError
from tlkit.train.config import MODES, TrainConfig

LR_SPAN = 5.0  # lr range: suggestion / 5 .. suggestion x 5
#: the searched keys and how: log-uniform, uniform, or a list of choices
SEARCHED = {"lr": "log", "batch_size": "choice", "weight_decay": "log", "scale_min": "uniform", "hflip": "choice",
            "mode": "choice"}
INSTALL_HINT = 'pip install "tlkit[tune]"'


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may change: a ``(low, high)`` range or a tuple of choices per key of :data:`SEARCHED`.

    Keys in ``fixed`` keep the base config's value (e.g. ``--set hflip=0`` for digits or text, which a
    mirror changes the meaning of).
    """

    lr: tuple[float, float]
    batch_size: tuple[int, ...] = (16, 32, 64)
    weight_decay: tuple[float, float] = (1e-5, 0.1)
    scale_min: tuple[float, float] = (0.08, 1.0)
    hflip: tuple[float, ...] = (0.0, 0.5)
    mode: tuple[str, ...] = MODES
    fixed: frozenset[str] = frozenset()

    @property
    def searched(self) -> list[str]:
        return [k for k in SEARCHED if k not in self.fixed]


@dataclass(frozen=True)
class TrialRecord:
    """One trial.

    Attributes:
        number: 0 = the base config, 1 = the base with the suggested lr, then Optuna's proposals.
        params: the searched keys' values this trial trained with.
        value: the monitored validation metric of its best epoch (of the epochs run, if not complete).
        state: ``complete``, ``pruned`` (trailing the median), ``cut`` (the budget ran out) or ``failed``.
        epochs: epochs finished; seconds: wall time; val_loss: the best epoch's validation loss.
        stage: ``search`` (a short Optuna trial) or ``confirm`` (a full-length run, see :func:`run_confirm`).
    """

    number: int
    params: dict[str, Any]
    value: float | None
    state: str
    epochs: int
    seconds: float
    val_loss: float | None = None
    stage: str = "search"


def import_optuna():
    """``optuna``, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise TlkitError(f"tlkit tune needs Optuna, which is not installed; {INSTALL_HINT}") from None
    return optuna


def _widen(bounds: tuple[float, float], value: float) -> tuple[float, float]:
    return min(bounds[0], value), max(bounds[1], value)


def search_space(base: TrainConfig, lr_suggestion: float, *, fixed: Iterable[str] = (),
                 trial_epochs: int) -> SearchSpace:
    """The default space around ``base`` and the lr suggestion; every range and list includes the
    base's own value, so trial 0 is a point of the space. ``freeze-unfreeze`` needs 2+ epochs a trial."""
    unknown = sorted(set(fixed) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TlkitError(f"unknown config keys to keep fixed: {', '.join(unknown)}")
    s = SearchSpace(lr=(lr_suggestion / LR_SPAN, lr_suggestion * LR_SPAN))
    modes = tuple(m for m in MODES if m != "freeze-unfreeze" or trial_epochs > base.freeze_epochs)
    wd = _widen(s.weight_decay, base.weight_decay) if base.weight_decay > 0 else (0.0, s.weight_decay[1])
    return SearchSpace(
        lr=_widen(s.lr, base.lr), batch_size=tuple(sorted({*s.batch_size, _batch(base)})), weight_decay=wd,
        scale_min=s.scale_min if base.scale_min is None else _widen(s.scale_min, base.scale_min), hflip=tuple(sorted({*s.hflip, base.hflip})),
        mode=tuple(dict.fromkeys((*modes, base.mode))), fixed=frozenset(fixed))


def _batch(cfg: TrainConfig) -> int:
    """The base config's batch as a point of the space (``auto``: the CPU default, 32)."""
    return cfg.batch


def round_value(key: str, value: Any) -> Any:
    """Values as a recipe would write them: 3 significant digits for rates, 2 decimals for scale_min."""
    if SEARCHED[key] == "log":
        return float(f"{value:.3g}")
    return round(float(value), 2) if key == "scale_min" else value


def suggest(trial, space: SearchSpace, *, exact: bool = False) -> dict[str, Any]:
    """One trial's values of the searched keys (Optuna ``trial.suggest_*``), rounded as in a recipe
    unless ``exact`` (the enqueued base config runs with its own values)."""
    out: dict[str, Any] = {}
    for key in space.searched:
        bounds, kind = getattr(space, key), SEARCHED[key]
        if kind == "choice":
            out[key] = trial.suggest_categorical(key, list(bounds))
        else:
            out[key] = trial.suggest_float(key, *bounds, log=kind == "log" and bounds[0] > 0)
        out[key] = out[key] if exact else round_value(key, out[key])
    return out


__all__ = ["INSTALL_HINT", "LR_SPAN", "SEARCHED", "SearchSpace", "TrialRecord", "import_optuna", "round_value",
           "search_space", "suggest"]
