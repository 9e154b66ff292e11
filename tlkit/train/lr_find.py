"""The learning-rate range test (Smith 2015; fastai's ``lr_find``) and a robust suggestion.

A fresh copy of the configured classifier trains for at most ``steps`` mini-batches of the training
split while the learning rate grows exponentially from ``start_lr`` to ``end_lr``; the loss of each
step is recorded, smoothed, and the sweep stops once the smoothed loss diverges (over 4x its
minimum, one mini-batch loss over 10x, or not finite). The sweep ends at ``end_lr=1`` by default:
for AdamW a larger rate is never useful, and weights blown up by it make each CPU step many times
slower. Nothing the caller holds is trained: the model is built for the test and
thrown away afterwards.

The suggestion (:func:`suggest_lr`) combines two rules that each fail differently, then clamps:

* ``valley``: the longest descending stretch of the smoothed curve (a longest decreasing
  subsequence, so a small bump does not end it), and the point 2/3 of the way down it;
* ``min/10``: the learning rate of the smoothed loss's minimum, divided by 10;
* suggestion = the geometric mean of the two, clamped into ``[start of the sweep, lr at the
  minimum / 2]`` (never at or past the bottom of the curve, where training is already unstable).

The "steepest slope" rule is not used: on a noisy mini-batch curve the steepest point jumps
between runs by orders of magnitude. When the curve barely falls (less than 5% below its first
smoothed value) it says nothing about the lr: :func:`lr_find` then keeps the configured lr (method
``flat: configured lr kept``) and logs one warning that asks for more steps. Fewer than
:data:`MIN_STEPS` steps are refused: a handful of points across seven decades of lr suggests noise.

As in ``fit``, ``cfg.lr`` is the head's peak learning rate; layer-wise decay keeps scaling the
body's groups below it during the sweep, so the suggestion can be used as ``lr`` directly.

Example:
    >>> res = lr_find(make_config(backbone="test_resnet", pretrained=False), data="train/")  # doctest: +SKIP
    >>> res.suggestion, res.method                                                           # doctest: +SKIP
    (0.0042, 'valley+min/10')
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from tlkit.core.errors import TlkitError
from tlkit.core.runtime import autocast
from tlkit.train.config import TrainConfig
from tlkit.train.speedups import flush_denormals

log = logging.getLogger(__name__)

DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this x its minimum
FLAT_DROP = 0.05  # a curve whose minimum is less than 5% below its start says little
MIN_STEPS = 20  # fewer steps are refused, and a time limit never shortens the sweep below this many...
HARD_LIMIT = 2.0  # ...but a sweep still running at this many times its time limit is cut


@dataclass(frozen=True)
class LRFindResult:
    """One range test.

    Attributes:
        lrs: ``[n]`` learning rate of each step taken (head lr).
        losses: ``[n]`` smoothed (debiased EMA) training loss of each step.
        raw_losses: ``[n]`` the mini-batch losses as measured.
        suggestion: the suggested ``lr`` (see the module docstring for the rule).
        method: ``valley+min/10``; ``flat: configured lr kept`` when the curve barely fell, or
            ``cut (time limit): configured lr kept`` (then ``suggestion`` is ``cfg.lr``).
        candidates: each rule's value, e.g. ``{"valley": 3e-3, "min/10": 5e-3, "min": 5e-2}``.
        diverged: the sweep stopped early because the loss blew up.
        seconds: wall time of the sweep.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    raw_losses: tuple[float, ...]
    suggestion: float
    method: str
    candidates: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"suggestion": self.suggestion, "method": self.method, "candidates": self.candidates,
                "diverged": self.diverged, "steps": len(self.lrs), "seconds": self.seconds,
                "lrs": list(self.lrs), "losses": list(self.losses), "raw_losses": list(self.raw_losses)}


# --------------------------------------------------------------------------- the suggestion (pure)


def smooth(losses: Iterable[float], beta: float) -> np.ndarray:
    """Debiased exponential moving average ``[n]`` (fastai's smoothing), ``beta`` in [0, 1).

    Example:
        >>> smooth([1.0, 1.0, 1.0], 0.9).round(6).tolist()
        [1.0, 1.0, 1.0]
    """
    out, avg = [], 0.0
    for i, x in enumerate(losses):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out, dtype=float)


def smoothing_for(steps: int) -> float:
    """EMA factor with a window of about a tenth of the sweep: 0.9 for 100 steps, within [0.6, 0.98]."""
    return float(min(0.98, max(0.6, 1 - 10 / max(1, steps))))


def longest_descent(losses: np.ndarray) -> tuple[int, int]:
    """``(start, end)`` indices of the longest strictly decreasing subsequence of ``losses``.

    Example:
        >>> longest_descent(np.array([5.0, 4.0, 4.5, 3.0, 2.0, 6.0]))
        (0, 4)
    """
    n = len(losses)
    length, start = np.ones(n, dtype=int), np.arange(n)
    for i in range(1, n):
        before = np.flatnonzero(losses[:i] > losses[i])
        if len(before):  # of the longest predecessors, the latest: the stretch stays tight
            j = before[len(before) - 1 - np.argmax(length[before][::-1])]
            length[i], start[i] = length[j] + 1, start[j]
    end = int(np.argmax(length))
    return int(start[end]), end


def suggest_lr(lrs: Iterable[float], losses: Iterable[float]) -> tuple[float, str, dict[str, float]]:
    """The suggested lr of a smoothed range-test curve: ``(lr, method, candidates)``.

    Args:
        lrs: ``[n]`` increasing learning rates, n >= 2.
        losses: ``[n]`` smoothed losses at those rates (up to divergence).

    Example:
        >>> lrs = np.geomspace(1e-6, 1, 61)
        >>> loss = 2 - np.clip(np.log10(lrs) + 4, 0, 3.5) / 2 + 10 * (lrs > 0.3)
        >>> lr, method, _ = suggest_lr(lrs, loss)
        >>> 1e-3 < lr < 1e-1, method
        (True, 'valley+min/10')
    """
    lrs, losses = np.asarray(list(lrs), dtype=float), np.asarray(list(losses), dtype=float)
    ok = np.isfinite(losses)
    lrs, losses = lrs[ok], losses[ok]
    if len(lrs) < 2:
        raise TlkitError("the lr range test recorded fewer than 2 finite losses; lower start_lr or use more steps")
    i_min = int(np.argmin(losses))
    start, end = longest_descent(losses)
    valley = float(lrs[start + round(2 / 3 * (end - start))])
    min_lr = float(lrs[i_min])
    lr = math.sqrt(valley * min_lr / 10)
    lr = float(min(max(lr, lrs[0]), max(lrs[0], min_lr / 2)))
    flat = losses[i_min] > (1 - FLAT_DROP) * losses[0]
    return lr, "flat" if flat else "valley+min/10", {"valley": valley, "min/10": min_lr / 10, "min": min_lr}


# --------------------------------------------------------------------------- the sweep


def _cycle(loader, sampler) -> Iterator:
    """The loader's batches, epoch after epoch (reshuffled), skipping undecodable or 1-image batches."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            if batch.images is not None and len(batch.targets) >= 2:
                empty = False
                yield batch
        if empty:
            raise TlkitError("no training batch could be decoded for the lr range test; check the images")
        epoch += 1


class _Schedule:
    """Exponential lrs from ``start`` to ``end`` over ``n`` steps; :meth:`shorten` re-spaces the rest."""

    def __init__(self, start: float, end: float, n: int):
        self.end, self.lrs = end, list(np.geomspace(start, end, n))

    def shorten(self, done: int, n: int) -> None:
        if done < n < len(self.lrs):
            self.lrs = self.lrs[:done] + list(np.geomspace(self.lrs[done], self.end, n - done))


def _step(st, cfg: TrainConfig, batch, loss_fn, rt, lr: float) -> float:
    """One optimizer step at head lr ``lr`` (groups keep their layer-decay scale); the batch loss."""
    from tlkit.train.engine import optimizer_step
    from tlkit.train.loaders import to_device

    for g in st.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    x, y = to_device(batch.images, rt), batch.targets.to(rt.device, non_blocking=True)
    with autocast(rt.device, rt.amp_dtype):
        logits = st.forward(x)
    loss = loss_fn(logits.float(), y)
    (st.scaler.scale(loss) if st.scaler is not None else loss).backward()
    optimizer_step(st, cfg)
    return float(loss.detach())


def sweep(st, cfg: TrainConfig, batches: Iterator, loss_fn, rt, schedule: _Schedule, *,
          max_seconds: float | None = None, progress: Callable[[int], None] | None = None):
    """Run the schedule; returns ``(lrs, raw_losses, smoothed, diverged)`` up to where it stopped
    (``diverged`` None: cut at :data:`HARD_LIMIT` times ``max_seconds``, the curve incomplete)."""
    t0 = time.perf_counter()
    beta = smoothing_for(len(schedule.lrs))
    lrs: list[float] = []
    raw: list[float] = []
    best, avg, diverged = math.inf, 0.0, False
    i = 0
    while i < len(schedule.lrs):
        batch = next(batches)
        loss = _step(st, cfg, batch, loss_fn, rt, schedule.lrs[i])
        lrs.append(schedule.lrs[i])
        raw.append(loss)
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta ** (i + 1))
        i += 1
        if progress:
            progress(len(batch.targets))
        if max_seconds is not None and i == 3:  # time three steps, then fit the sweep into max_seconds
            per_step = (time.perf_counter() - t0) / 3
            schedule.shorten(i, max(MIN_STEPS, int(max_seconds / per_step)))
        if max_seconds is not None and time.perf_counter() - t0 > HARD_LIMIT * max_seconds:
            return lrs, raw, smooth(raw, beta), None  # cut: steps far slower than timed
        if not math.isfinite(smoothed) or (i > 3 and (smoothed > DIVERGE_FACTOR * best or loss > 10 * best)):
            diverged = True
            break
        best = min(best, smoothed)
    return lrs, raw, smooth(raw, beta), diverged


def lr_find(
    cfg: TrainConfig,
    *,
    data: str | os.PathLike,
    val: str | os.PathLike | None = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    max_seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
    task: str = "auto",
    label_delim: str = ";",
) -> LRFindResult:
    """The lr range test on the training split of ``data`` with ``cfg``'s model, mode and batch size.

    Args:
        cfg: the configuration to test (its ``lr`` is ignored; EMA and mixup are off during the sweep).
        data: training images (class folders or a labeled CSV).
        val: validation images; only decides, as in :func:`tlkit.train.fit`, which images are held out.
        steps: mini-batches of the sweep (at most; divergence stops it sooner).
        start_lr, end_lr: the head lr of the first and the last step.
        max_seconds: fit the sweep into about this long: after three timed steps it is shortened
            (to no fewer than 20 steps), the rate still ending at ``end_lr``; a sweep still running
            at twice this long is cut and suggests ``cfg.lr`` (method ``cut ...``).
        progress: called with the number of images of each step.
        task, label_delim: as for :func:`tlkit.train.fit` (multi-label data: the multi-label loss).

    Raises:
        TlkitError: bad data (as for ``fit``), ``start_lr``/``end_lr`` out of order, or fewer than
            :data:`MIN_STEPS` steps.
    """
    from tlkit.train import autobatch
    from tlkit.train.engine import build_state, make_pipeline, prepare_model, set_phase
    from tlkit.train.loaders import setup_runtime
    from tlkit.train.losses import build_loss
    from tlkit.train.splits import prepare_splits

    if not 0 < start_lr < end_lr:
        raise TlkitError(f"lr range test: need 0 < start_lr < end_lr (got {start_lr}, {end_lr})")
    if steps < MIN_STEPS:
        raise TlkitError(f"lr range test: --steps {steps} is too few to suggest an lr between {start_lr:g} and "
                         f"{end_lr:g}; use --steps {MIN_STEPS} or more (the default is 100)")
    cfg = cfg.replace(ema=False)
    splits = prepare_splits(data, val, val_fraction=cfg.val_fraction, seed=cfg.seed, task=task,
                            label_delim=label_delim)
    from tlkit.train.engine import task_config

    cfg = task_config(cfg, splits)
    rt = setup_runtime(cfg)
    t0 = time.perf_counter()
    with flush_denormals(rt.device):
        _, _, data_config, model = prepare_model(cfg, len(splits.classes), rt)
        cfg, _ = autobatch.resolve(cfg, model, rt, len(splits.train), data_config.input_size, len(splits.classes))
        pipe = make_pipeline(cfg, model, splits, data_config, rt)
        st = build_state(cfg, model, pipe.trained, pipe.forward, 1, rt)
        set_phase(st, cfg, 0)
        loss_fn = build_loss(cfg, len(splits.classes), splits.counts(), multilabel=splits.multilabel,
                             n_images=len(splits.train)).to(rt.device)
        lrs, raw, smoothed, diverged = sweep(st, cfg, _cycle(pipe.train, pipe.sampler), loss_fn, rt,
                                             _Schedule(start_lr, end_lr, steps), max_seconds=max_seconds,
                                             progress=progress)
    if diverged is None:  # cut by the time limit: the curve never reached the high rates
        lr, method, candidates, diverged = cfg.lr, "cut (time limit): configured lr kept", {}, False
        log.warning("lr range test cut after %d steps by its time limit (%.0f s): keeping lr %.3g",
                    len(lrs), max_seconds, cfg.lr)
    else:  # the last point of a diverged sweep is the blow-up itself: suggest from the curve before it
        keep = len(lrs) - 1 if diverged and len(lrs) > 2 else len(lrs)
        lr, method, candidates = suggest_lr(lrs[:keep], smoothed[:keep])
        if method == "flat":  # the loss never fell: any lr read off this curve is noise
            log.warning("lr range test: the loss did not fall over %d steps from lr %.3g to %.3g, so there is no "
                        "suggestion; keeping lr %.3g: a longer range test may find one (tlkit lr-find --steps %d)",
                        len(lrs), lrs[0], lrs[-1], cfg.lr, max(100, 2 * steps))
            lr, method, candidates = cfg.lr, "flat: configured lr kept", {}
    result = LRFindResult(tuple(lrs), tuple(float(x) for x in smoothed), tuple(raw), lr, method, candidates,
                          diverged, time.perf_counter() - t0)
    log.info("lr range test: %d steps%s, suggestion %.3g (%s)", len(lrs), ", diverged" if diverged else "", lr, method)
    return result


__all__ = ["LRFindResult", "longest_descent", "lr_find", "smooth", "smoothing_for", "suggest_lr", "sweep"]
