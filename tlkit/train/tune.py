"""A small budgeted hyperparameter search: an lr range test, then short Optuna trials of :func:`fit`.

What practitioners tune by hand, in order:

1. the lr range test (:func:`tlkit.train.lr_find.lr_find`) on the base config gives an lr;
2. trial 0 is the base config as it is (the defaults, or ``--recipe``), trial 1 the same with the
   suggested lr; then Optuna's TPE sampler (seeded) proposes ``lr`` (log range centred on the
   suggestion), ``batch_size``, ``weight_decay``, ``scale_min`` (RandomResizedCrop), ``hflip`` and
   ``mode``, each trial a short ``fit`` judged on the validation split;
3. every epoch's validation metric goes to Optuna through ``fit``'s ``on_epoch``; the median pruner
   stops trials that trail the median of earlier trials at the same epoch (from the 2nd epoch on);
4. the budget is wall-clock and hard: the range test gets at most 15% of it, a trial is started only
   when the time left fits the longest finished one, and a trial still running at the deadline is
   cut between two batches (recorded as ``cut``, never chosen);
5. the winner of the search is the best finished trial; a tie on the metric goes to the base config
   (trial 0: the study-backed defaults or the user's recipe are left only on evidence in the monitored
   metric), other ties to the lower validation loss (as ``fit`` picks its best epoch), then to the
   earlier trial;
6. the confirm stage: short trials favour what learns fast (a high lr, little augmentation), not what
   ends best, and the best of many trials on a small validation set wins by chance. So when the
   winner is not the base, both are trained at the recipe's full length and the winner is kept only
   if it beats the base there by more than one binomial standard error of the validation metric
   (:func:`margin`); otherwise the recipe is the base config (README "Tuning" has the study's
   figures without and with this stage). Time for the two runs is kept out of the search when it
   fits in half the budget.

Outputs in ``out`` (each written atomically; all but the range test's rewritten after every trial):
``recipe.yaml``, ``trials.csv``, ``lr_find.png`` (and ``lr_find.json``), ``trials.png``, ``tune.json``;
the Optuna study itself is stored in ``study.db`` (:mod:`tlkit.train.tune_store`) for ``resume``.

Example:
    >>> res = tune(make_config(), data="train/", out="tune/", budget_s=600)    # doctest: +SKIP
    >>> res.best_trial.params, res.recipe_path                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_dir, write_csv, write_json, write_text
from tlkit.train.config import TrainConfig, make_config
from tlkit.train.lr_find import LRFindResult, lr_find
from tlkit.train.tune_plots import save_lr_find
from tlkit.train.tune_space import SEARCHED, TrialRecord, import_optuna, search_space, suggest

log = logging.getLogger(__name__)

RECIPE, TRIALS_CSV, TRIALS_PLOT, SUMMARY = "recipe.yaml", "trials.csv", "trials.png", "tune.json"
LR_FIND_SHARE = 0.15  # of the budget, at most, for the range test
CONFIRM_SHARE = 0.5  # of the budget, at most, for the two full-length runs of the confirm stage
CONFIRM_SLACK = 1.1  # a full-length run is estimated as (longest trial) x epochs / trial epochs x this
MARGIN_SE = 1.0  # the recipe leaves the base only when it wins by more than this many standard errors


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found; ``best`` is the full config the recipe holds (training length of the base)."""

    out: Path
    monitor: str
    base: TrainConfig
    best: TrainConfig
    best_trial: TrialRecord | None
    trials: tuple[TrialRecord, ...]
    lr_find: LRFindResult
    recipe: dict[str, Any]
    elapsed_s: float
    budget_s: float
    stopped: str  # budget | max_trials
    trial_epochs: int
    confirm: Confirmation | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def default_trial(self) -> TrialRecord | None:
        """The trial of the base config (trial 0; a later number when a resume had to run it again)."""
        return base_trial(self.trials, self.base)


def base_trial(trials, base: TrainConfig) -> TrialRecord | None:
    """The base config's trial: its first complete run, else its first run."""
    runs = [t for t in trials if all(getattr(base, k) == v for k, v in t.params.items())]
    return next((t for t in runs if t.state == "complete"), runs[0] if runs else None)


@dataclass(frozen=True)
class Confirmation:
    """The confirm stage: the search's winner and the base config, each trained at the recipe's full
    length (``base.epochs``) and compared on validation (:func:`decide`).

    Attributes:
        base / challenger: the two full-length runs (``stage="confirm"``; ``number`` is the search trial
            they repeat), ``None`` when not run.
        margin: the gain the challenger needed: :data:`MARGIN_SE` binomial standard errors of the base's
            value on ``n_val`` validation images (0 for a loss monitor).
        chosen: ``challenger`` or ``base``; reason: one line on why.
    """

    base: TrialRecord | None
    challenger: TrialRecord | None
    margin: float
    chosen: str
    reason: str
    n_val: int


class BudgetSpent(Exception):
    """Raised between two batches of a trial once the deadline has passed."""


# --------------------------------------------------------------------------- one trial


@contextlib.contextmanager
def _trial_folder(work: Path, number: int) -> Iterator[Path]:
    """A scratch run folder for one trial's ``fit``, deleted afterwards (the recipe is the product)."""
    folder = Path(tempfile.mkdtemp(prefix=f".trial-{number:04d}-", dir=work))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _best_row(rows: list[dict], monitor: str) -> dict | None:
    sign = -1 if monitor.endswith("loss") else 1
    finite = [r for r in rows if r.get(monitor) is not None and math.isfinite(r[monitor])]
    return max(finite, key=lambda r: sign * r[monitor]) if finite else None


def fit_record(cfg: TrainConfig, params: dict[str, Any], number: int, *, data, val, work: Path, deadline: float,
               progress: Callable[[int], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
               stage: str = "search", task: str = "auto", label_delim: str = ";") -> TrialRecord:
    """``fit(cfg)`` in a scratch folder as one :class:`TrialRecord`: ``cut`` between two batches once
    ``deadline`` has passed, ``pruned`` when ``on_epoch`` raises ``optuna.TrialPruned``."""
    from tlkit.train.engine import fit

    optuna = import_optuna()
    rows: list[dict] = []
    t0 = time.monotonic()

    def epoch_done(row: dict) -> None:
        rows.append(row)
        if on_epoch:
            on_epoch(row)

    def on_batch(n: int) -> None:
        if progress:
            progress(n)
        if time.monotonic() > deadline:
            raise BudgetSpent()

    state = "complete"
    with _trial_folder(work, number) as run:
        try:
            res = fit(cfg, data=data, val=val, out=run, progress=on_batch, on_epoch=epoch_done, task=task,
                      label_delim=label_delim)
        except optuna.TrialPruned:
            state = "pruned"
        except BudgetSpent:
            state = "cut"
    best = res.best if state == "complete" else _best_row(rows, cfg.monitor)
    value = best.get(cfg.monitor) if best else None
    if state == "complete" and (value is None or not math.isfinite(value)):
        state = "failed"
    return TrialRecord(number, params, value, state, len(rows), time.monotonic() - t0,
                       best.get("val_loss") if best else None, stage)


def run_trial(trial, cfg: TrainConfig, params: dict[str, Any], *, data, val, work: Path, deadline: float,
              progress: Callable[[int], None] | None = None, task: str = "auto", label_delim: str = ";") -> TrialRecord:
    """One search trial: :func:`fit_record` reporting each epoch to the Optuna ``trial``, which may prune it."""
    optuna = import_optuna()

    def on_epoch(row: dict) -> None:
        trial.report(row[cfg.monitor], row["epoch"] - 1)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return fit_record(cfg, params, trial.number, data=data, val=val, work=work, deadline=deadline,
                      progress=progress, on_epoch=on_epoch, task=task, label_delim=label_delim)


def _tell(study, trial, record: TrialRecord) -> None:
    from optuna.trial import TrialState

    if record.state == "complete":
        study.tell(trial, record.value)
    else:
        study.tell(trial, state=TrialState.FAIL if record.state == "failed" else TrialState.PRUNED)


# --------------------------------------------------------------------------- choosing


def _rank(t: TrialRecord, monitor: str) -> tuple[float, bool, float]:
    sign = -1 if monitor.endswith("loss") else 1
    loss = t.val_loss if t.val_loss is not None and math.isfinite(t.val_loss) else math.inf
    return sign * t.value, t.number == 0, -loss


def pick_winner(trials, monitor: str) -> TrialRecord | None:
    """The best complete trial; a tie on the metric goes to trial 0 (the base config), other ties to the
    lower validation loss, then to the earlier trial."""
    best = None
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == "complete" and (best is None or _rank(t, monitor) > _rank(best, monitor)):
            best = t
    return best


def margin(value: float | None, n_val: int, monitor: str) -> float:
    """The gain a challenger needs over the base's ``value``: :data:`MARGIN_SE` binomial standard errors
    on ``n_val`` validation images for a metric in [0, 1] (accuracy, F1), 0 for a loss.

    Validation sets are small (tens to hundreds of images): one image more right is a gain of ``1/n``,
    and the best of many short trials wins such gains by chance. The winner of the search must repeat
    its lead at full length by more than the noise of the measurement."""
    if value is None or monitor.endswith("loss") or not 0.0 <= value <= 1.0 or n_val < 1:
        return 0.0
    return MARGIN_SE * math.sqrt(value * (1.0 - value) / n_val)


def decide(base: TrialRecord | None, challenger: TrialRecord | None, *, monitor: str, n_val: int,
           at: str = "at full length") -> Confirmation:
    """The confirm stage's choice: the challenger only when both full-length runs completed and it beats
    the base by more than :func:`margin`; the base otherwise (a cut or failed run proves nothing)."""
    done = [r for r in (base, challenger) if r is not None and r.state == "complete"]
    if len(done) < 2:
        missing = "the budget ran out" if any(r is None or r.state == "cut" for r in (base, challenger)) else "a run failed"
        return Confirmation(base, challenger, 0.0, "base", f"kept the base config: {missing} before both "
                            "full-length runs finished", n_val)
    need = margin(base.value, n_val, monitor)
    sign = -1 if monitor.endswith("loss") else 1
    gain = sign * (challenger.value - base.value)
    vs = f"{monitor} {challenger.value:.4f} vs {base.value:.4f} {at}"
    if gain > need:
        return Confirmation(base, challenger, need, "challenger",
                            f"trial {challenger.number} confirmed: {vs} (needed +{need:.4f})", n_val)
    return Confirmation(base, challenger, need, "base", f"kept the base config: trial {challenger.number} did not "
                        f"confirm its lead ({vs}, needed +{need:.4f} on {n_val} images)", n_val)


def full_run_estimate(trials, base: TrainConfig, trial_epochs: int) -> float | None:
    """Seconds one full-length run (``base.epochs``) should take, from the longest complete trial."""
    done = [t.seconds for t in trials if t.state == "complete" and t.stage == "search"]
    return max(done) * base.epochs / trial_epochs * CONFIRM_SLACK if done else None


def recipe_of(cfg: TrainConfig) -> dict[str, Any]:
    """The keys of ``cfg`` that differ from :class:`TrainConfig`'s defaults (what a recipe lists)."""
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}


def write_recipe(path: Path, cfg: TrainConfig, comment: str) -> dict[str, Any]:
    """``recipe.yaml`` for ``cfg`` (only keys that differ from the defaults), checked by loading it back."""
    recipe = recipe_of(cfg)
    text = f"# {comment}\n" + (yaml.safe_dump(recipe, sort_keys=False) if recipe else "{}\n")
    write_text(path, text)
    if make_config(path) != cfg:
        raise RuntimeError(f"{path} does not load back as the tuned config; please report this")
    return recipe


# --------------------------------------------------------------------------- outputs


def _comment(winner: TrialRecord | None, trials, base: TrainConfig, trial_epochs: int,
             confirm: Confirmation | None = None) -> str:
    if winner is None:
        return f"tlkit tune: no trial finished within the budget; the base config ({base.monitor} not measured)"
    first = base_trial(trials, base)
    than = f" (base config {first.value:.4f})" if first and first.state == "complete" and first is not winner else ""
    line = (f"tlkit tune: trial {winner.number} of {len(trials)}, validation {base.monitor} {winner.value:.4f}{than} "
            f"after {trial_epochs}-epoch trials")
    return f"{line}; {confirm.reason}" if confirm is not None else line


def write_outputs(out: Path, res: TuneResult) -> dict[str, Path]:
    """Every output file for the trials so far (atomic writes); returns ``{name: path}``."""
    from tlkit.train.tune_plots import plot_trials

    keys = list(SEARCHED)
    runs = [*res.trials, *(r for r in (res.confirm.base, res.confirm.challenger) if r is not None and r.stage == "confirm")
            ] if res.confirm else res.trials
    rows = [[t.number, *(t.params.get(k, "") for k in keys), "" if t.value is None else t.value, t.state, t.epochs,
             round(t.seconds, 2), t.stage] for t in runs]
    write_csv(out / TRIALS_CSV, ["number", *keys, "value", "state", "epochs", "seconds", "stage"], rows)
    write_json(out / SUMMARY, summary(res))
    files = {"recipe": out / RECIPE, "trials": out / TRIALS_CSV, "summary": out / SUMMARY,
             "lr_find": out / "lr_find.png"}
    if res.trials:
        files["trials_plot"] = plot_trials(res.trials, res.monitor, out / TRIALS_PLOT)
    return files


def summary(res: TuneResult) -> dict[str, Any]:
    """``tune.json``: budget, states, the range test, the base and the best trial, the recipe."""
    states = {s: sum(t.state == s for t in res.trials) for s in ("complete", "pruned", "cut", "failed")}
    lr = {k: v for k, v in res.lr_find.to_dict().items() if k not in ("lrs", "losses", "raw_losses")}

    def trial(t: TrialRecord | None):
        return None if t is None else {"number": t.number, "value": t.value, "params": t.params, "state": t.state,
                                       "epochs": t.epochs, "seconds": round(t.seconds, 2), "stage": t.stage}

    return {"monitor": res.monitor, "budget_s": res.budget_s, "elapsed_s": round(res.elapsed_s, 2),
            "stopped": res.stopped, "trial_epochs": res.trial_epochs, "trials": len(res.trials), "states": states,
            "lr_find": lr, "base": trial(res.default_trial), "best": trial(res.best_trial), "recipe": res.recipe,
            "confirm": None if res.confirm is None else {
                "base": trial(res.confirm.base), "challenger": trial(res.confirm.challenger),
                "margin": res.confirm.margin, "n_val": res.confirm.n_val, "chosen": res.confirm.chosen,
                "reason": res.confirm.reason}}


# --------------------------------------------------------------------------- tune


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines off (tune reports trials itself), restored afterwards."""
    optuna = import_optuna()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def trial_fits(trials, seconds_left: float) -> bool:
    """Whether another trial fits in ``seconds_left``: as long as the longest complete trial so far."""
    done = [t.seconds for t in trials if t.state == "complete"]
    return seconds_left > (max(done) if done else 0.0)


def _check_args(budget_s: float, trial_epochs: int, max_trials: int | None) -> None:
    if not budget_s > 0:
        raise TlkitError(f"--budget {budget_s / 60:g}: give a positive number of minutes, e.g. --budget 30")
    if trial_epochs < 1:
        raise TlkitError(f"--epochs {trial_epochs}: each trial needs at least 1 epoch, e.g. --epochs 3")
    if max_trials is not None and max_trials < 1:
        raise TlkitError(f"--trials {max_trials}: give at least 1 (trial 0 is the base config)")


def tune(
    base: TrainConfig,
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    budget_s: float,
    val: str | os.PathLike | None = None,
    trial_epochs: int = 3,
    fixed: Iterable[str] = (),
    max_trials: int | None = None,
    lr_find_steps: int = 100,
    resume: bool = False,
    confirm: bool = True,
    progress: Callable[[int], None] | None = None,
    on_lr_find: Callable[[LRFindResult], None] | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    task: str = "auto",
    label_delim: str = ";",
) -> TuneResult:
    """Search the settings that matter for ``base`` within ``budget_s`` seconds; write the outputs to ``out``.

    Args:
        base: the config to start from (trial 0); its ``epochs`` stay in the recipe, trials run ``trial_epochs``.
        data: training images; val: validation images (``None``: ``base.val_fraction`` of ``data``, the same
            split for every trial).
        out: the output folder (``recipe.yaml``, ``trials.csv``, ``lr_find.png``, ``trials.png``, ``tune.json``).
        budget_s: hard wall-clock budget of the whole search, range test and confirm stage included.
        fixed: config keys not to search (they keep ``base``'s value).
        max_trials: stop after this many trials (of this call) even with time left.
        resume: continue the study stored in ``out`` (``study.db``): its trials count, its range test is
            reused, and the budget is this call's.
        confirm: run the confirm stage (module docstring, :func:`run_confirm`); ``False``: the search's
            winner as is.
        lr_find_steps: mini-batches of the range test (at most; it also gets at most 15% of the budget).
        progress: called with the images of each training step; on_lr_find / on_trial: after each stage
            (on_trial also gets the confirm stage's runs, ``stage="confirm"``).
        task, label_delim: as for :func:`tlkit.train.fit`; on multi-label data the search maximises validation
            mAP (``monitor: val_map`` where the base says ``val_accuracy``).

    Raises:
        TlkitError: Optuna missing, a budget <= 0, bad data (as for ``fit``), an unknown fixed key, a study
            already in ``out`` without ``resume``, or ``resume`` with another base config or trial length.
    """
    import_optuna()
    _check_args(budget_s, trial_epochs, max_trials)
    from tlkit.train.splits import prepare_splits
    from tlkit.train.tune_store import check_tune_dir

    out = check_output_dir(out)
    # bad data fails before any work; the validation size sets the confirm stage's margin
    splits = prepare_splits(data, val, val_fraction=base.val_fraction, seed=base.seed, task=task,
                            label_delim=label_delim)
    n_val = len(splits.val)
    from tlkit.train.engine import task_config

    base = task_config(base, splits)
    check_tune_dir(out, resume, base, trial_epochs)  # before the range test and any trial
    job = _Job(base, data, val, out, trial_epochs, budget_s, time.monotonic(), progress, task, label_delim)
    found = _range_test(job, resume, lr_find_steps)
    if on_lr_find:
        on_lr_find(found)
    res, trials = _search(job, found, fixed=fixed, max_trials=max_trials, resume=resume, confirm=confirm,
                          on_trial=on_trial)
    if confirm:
        conf = run_confirm(base, trials, trial_epochs=trial_epochs, n_val=n_val, data=data, val=val, work=out,
                           deadline=job.deadline, budget_s=budget_s, progress=progress, on_trial=on_trial,
                           task=task, label_delim=label_delim)
        res = _result(job, trials, found, res.stopped, conf)
    log.info("tune: %d trials in %.0f s, best %s", len(trials), res.elapsed_s, res.best_trial)
    return res


@dataclass(frozen=True)
class _Job:
    """What every stage of one :func:`tune` call shares."""

    base: TrainConfig
    data: Any
    val: Any
    out: Path
    trial_epochs: int
    budget_s: float
    t0: float
    progress: Callable[[int], None] | None
    task: str = "auto"
    label_delim: str = ";"

    @property
    def deadline(self) -> float:
        return self.t0 + self.budget_s

    @property
    def trial_base(self) -> TrainConfig:
        return self.base.replace(epochs=self.trial_epochs, tensorboard=False)  # trials are throwaway runs


def _range_test(job: _Job, resume: bool, steps: int) -> LRFindResult:
    """The stored range test of a resumed study, else a new one (saved in ``job.out``)."""
    from tlkit.train.tune_store import load_lr_find

    found = load_lr_find(job.out) if resume else None
    if found is None:
        found = lr_find(job.trial_base, data=job.data, val=job.val, steps=steps,
                        max_seconds=LR_FIND_SHARE * job.budget_s, progress=job.progress, task=job.task,
                        label_delim=job.label_delim)
        job.out.mkdir(parents=True, exist_ok=True)
        save_lr_find(found, job.out)
    return found


def _search(job: _Job, found: LRFindResult, *, fixed, max_trials, resume: bool, confirm: bool,
            on_trial) -> tuple[TuneResult, list[TrialRecord]]:
    """The Optuna trials, until the budget (less the confirm stage's reserve) or ``max_trials``."""
    from tlkit.train.tune_store import open_study, save_record

    base, trial_base = job.base, job.trial_base
    space = search_space(base, found.suggestion, fixed=fixed, trial_epochs=job.trial_epochs)
    with _optuna_quiet():
        study, trials, exact = open_study(job.out, base, space, found.suggestion, trial_epochs=job.trial_epochs,
                                          resume=resume)
        res, new = _result(job, trials, found, "budget"), 0
        while max_trials is None or new < max_trials:
            reserve = confirm_reserve(trials, base, job.trial_epochs, job.budget_s) if confirm else 0.0
            if not trial_fits(trials, job.deadline - time.monotonic() - reserve):
                break
            trial = study.ask()
            params = suggest(trial, space, exact=trial.number in exact)
            record = run_trial(trial, trial_base.replace(**params), params, data=job.data, val=job.val, work=job.out,
                               deadline=job.deadline, progress=job.progress, task=job.task,
                               label_delim=job.label_delim)
            save_record(trial, record)
            _tell(study, trial, record)
            trials.append(record)
            new += 1
            stopped = "max_trials" if new == max_trials and record.state != "cut" else "budget"
            res = _result(job, trials, found, stopped)
            if on_trial:
                on_trial(record)
    return res, trials


def confirm_reserve(trials, base: TrainConfig, trial_epochs: int, budget_s: float) -> float:
    """Seconds the search leaves for the confirm stage: two full-length runs when they fit in
    :data:`CONFIRM_SHARE` of the budget (estimated from the trials so far), else none."""
    if trial_epochs >= base.epochs:
        return 0.0
    one = full_run_estimate(trials, base, trial_epochs)
    return 2 * one if one is not None and 2 * one <= CONFIRM_SHARE * budget_s else 0.0


def run_confirm(base: TrainConfig, trials, *, trial_epochs: int, n_val: int, data, val, work: Path, deadline: float,
                budget_s: float, progress=None, on_trial=None, task: str = "auto",
                label_delim: str = ";") -> Confirmation | None:
    """The confirm stage (module docstring): when the search's winner is not the base, train both at full
    length (``base.epochs``) and keep the winner only if it beats the base by more than :func:`margin`.
    Without the time for two full-length runs (:data:`CONFIRM_SHARE` of the budget), the short trials are
    compared with the same margin. ``None`` when no trial completed."""
    winner, first = pick_winner(trials, base.monitor), base_trial(trials, base)
    if winner is None:
        return None
    if winner is first or all(getattr(base, k) == v for k, v in winner.params.items()):
        return Confirmation(winner, None, 0.0, "base", "the base config led the search", n_val)
    if trial_epochs >= base.epochs or not confirm_reserve(trials, base, trial_epochs, budget_s):
        short = trial_epochs < base.epochs
        at = (f"in {trial_epochs}-epoch trials; the budget is too short for two full-length runs" if short
              else "at full length")
        return decide(first, winner, monitor=base.monitor, n_val=n_val, at=at)
    full = base.replace(tensorboard=False)
    runs = []
    for number, params in ((first.number if first else 0, {k: getattr(base, k) for k in winner.params}),
                           (winner.number, dict(winner.params))):
        run = fit_record(full.replace(**params), params, number, data=data, val=val, work=work,
                         deadline=deadline, progress=progress, stage="confirm", task=task, label_delim=label_delim)
        runs.append(run)
        if on_trial:
            on_trial(run)
        if run.state != "complete":
            runs.append(None)
            break
    return decide(runs[0], runs[1], monitor=base.monitor, n_val=n_val)


def _result(job: _Job, trials: list[TrialRecord], found: LRFindResult, stopped: str,
            confirm: Confirmation | None = None) -> TuneResult:
    """The result so far, with the recipe and every output file (re)written. Before the confirm stage the
    recipe is the search's winner; after it, the confirm stage's choice."""
    base, out = job.base, job.out
    winner = pick_winner(trials, base.monitor)
    if confirm is not None and confirm.chosen == "base":
        winner = base_trial(trials, base)
    best = base.replace(**winner.params) if winner else base
    recipe = write_recipe(out / RECIPE, best, _comment(winner, trials, base, job.trial_epochs, confirm))
    res = TuneResult(out, base.monitor, base, best, winner, tuple(trials), found, recipe,
                     time.monotonic() - job.t0, job.budget_s, stopped, job.trial_epochs, confirm)
    return dataclasses.replace(res, files=write_outputs(out, res))


__all__ = ["BudgetSpent", "Confirmation", "TuneResult", "decide", "fit_record", "margin", "pick_winner", "recipe_of",
           "run_trial", "trial_fits", "tune", "write_recipe"]
