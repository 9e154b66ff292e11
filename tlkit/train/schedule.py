"""Per-step learning-rate schedules, as multipliers of each parameter group's peak lr.

A schedule is a pure function ``(step, spec) -> factor`` registered by name; the optimizer's
groups carry their own peak lr (``cfg.lr`` x layer scale), and a ``torch`` ``LambdaLR`` applies the
factor after every optimizer step, so the scheduler's state is just its step count.

Example:
    >>> spec = ScheduleSpec(total_steps=100, warmup_steps=10, steps_per_epoch=10)
    >>> round(lr_factor("cosine", 10, spec), 3), round(lr_factor("cosine", 99, spec), 3)
    (1.0, 0.01)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from tlkit.core.errors import TlkitError, did_you_mean

WARMUP_START = 0.01  # factor at step 0 of a linear warmup


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule needs to know; steps count optimizer steps."""

    total_steps: int
    warmup_steps: int = 0
    steps_per_epoch: int = 1
    min_ratio: float = 0.01  # final / peak (cosine, onecycle); floor for cyclic
    step_epochs: float = 3.0  # step: decay period; cyclic: half-cycle length
    gamma: float = 0.1


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    description: str
    fn: Callable[[int, ScheduleSpec], float]


_SCHEDULES: dict[str, ScheduleInfo] = {}


def register_schedule(name: str, *, description: str) -> Callable:
    """Register ``fn(step, spec) -> factor`` under ``name``."""

    def deco(fn: Callable[[int, ScheduleSpec], float]) -> Callable[[int, ScheduleSpec], float]:
        _SCHEDULES[name] = ScheduleInfo(name, description, fn)
        return fn

    return deco


def list_schedules() -> list[ScheduleInfo]:
    return list(_SCHEDULES.values())


def get_schedule(name: str) -> ScheduleInfo:
    if name not in _SCHEDULES:
        raise TlkitError(f"unknown schedule {name!r}{did_you_mean(name, _SCHEDULES)}; choose one of: {', '.join(_SCHEDULES)}")
    return _SCHEDULES[name]


def _warmup(step: int, spec: ScheduleSpec) -> float | None:
    """Linear ramp from WARMUP_START to 1 during warmup; ``None`` after it."""
    if step < spec.warmup_steps:
        return WARMUP_START + (1.0 - WARMUP_START) * step / spec.warmup_steps
    return None


def _progress(step: int, spec: ScheduleSpec) -> float:
    """Fraction of the post-warmup steps done, in [0, 1]."""
    span = max(1, spec.total_steps - spec.warmup_steps - 1)
    return min(1.0, max(0.0, (step - spec.warmup_steps) / span))


@register_schedule("cosine", description="linear warmup, then cosine decay to min_lr_ratio (default)")
def cosine(step: int, spec: ScheduleSpec) -> float:
    w = _warmup(step, spec)
    if w is not None:
        return w
    return spec.min_ratio + (1 - spec.min_ratio) * 0.5 * (1 + math.cos(math.pi * _progress(step, spec)))


@register_schedule("onecycle", description="one cycle: cosine up over the warmup (30% if none), cosine down")
def onecycle(step: int, spec: ScheduleSpec) -> float:
    up = spec.warmup_steps or max(1, int(0.3 * spec.total_steps))
    start = 1 / 25
    if step < up:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / up))
    t = min(1.0, (step - up) / max(1, spec.total_steps - up - 1))
    return spec.min_ratio + (1 - spec.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@register_schedule("step", description="warmup, then x gamma every step_epochs epochs")
def step_decay(step: int, spec: ScheduleSpec) -> float:
    w = _warmup(step, spec)
    if w is not None:
        return w
    period = max(1, round(spec.step_epochs * spec.steps_per_epoch))
    return spec.gamma ** ((step - spec.warmup_steps) // period)


@register_schedule("exponential", description="warmup, then x gamma per epoch, smoothly")
def exponential(step: int, spec: ScheduleSpec) -> float:
    w = _warmup(step, spec)
    if w is not None:
        return w
    return spec.gamma ** ((step - spec.warmup_steps) / spec.steps_per_epoch)


@register_schedule("cyclic", description="triangular cycles between min_lr_ratio and 1, half-cycle step_epochs")
def cyclic(step: int, spec: ScheduleSpec) -> float:
    half = max(1, round(spec.step_epochs * spec.steps_per_epoch))
    pos = (step % (2 * half)) / half  # 0..2
    tri = pos if pos <= 1 else 2 - pos
    return spec.min_ratio + (1 - spec.min_ratio) * tri


@register_schedule("constant", description="warmup, then constant")
def constant(step: int, spec: ScheduleSpec) -> float:
    w = _warmup(step, spec)
    return 1.0 if w is None else w


def lr_factor(name: str, step: int, spec: ScheduleSpec) -> float:
    """The multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    return get_schedule(name).fn(step, spec)


@dataclass(frozen=True)
class PhasedSchedule:
    """A schedule restarted at each phase boundary, each phase with its own lr multiplier.

    ``phases`` is ``[(n_steps, scale), ...]``; a plain run has one phase. Picklable (no lambdas), so
    ``LambdaLR.state_dict()`` stores it.
    """

    name: str
    phases: tuple[tuple[int, float], ...]
    spec: ScheduleSpec

    def __call__(self, step: int) -> float:
        start = 0
        for i, (n, scale) in enumerate(self.phases):
            if step < start + n or i == len(self.phases) - 1:
                spec = ScheduleSpec(
                    total_steps=n,
                    warmup_steps=min(self.spec.warmup_steps, max(0, n - 1)),
                    steps_per_epoch=self.spec.steps_per_epoch,
                    min_ratio=self.spec.min_ratio,
                    step_epochs=self.spec.step_epochs,
                    gamma=self.spec.gamma,
                )
                return scale * lr_factor(self.name, step - start, spec)
            start += n
        raise AssertionError("unreachable")


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, phases: list[tuple[int, float]], spec: ScheduleSpec
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``PhasedSchedule(name, phases, spec)`` once per optimizer step."""
    get_schedule(name)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PhasedSchedule(name, tuple(phases), spec))


__all__ = [
    "PhasedSchedule",
    "ScheduleInfo",
    "ScheduleSpec",
    "build_scheduler",
    "get_schedule",
    "list_schedules",
    "lr_factor",
    "register_schedule",
]
