"""Where ``tlkit tune`` keeps its study: Optuna's RDB storage in ``OUT/study.db`` (SQLite), so that
``--resume`` continues a search that was killed or ran out of budget.

Each finished trial stores its :class:`~tlkit.train.tune_space.TrialRecord` as a user attribute before it
is told to the study; a trial killed while running has none and is marked failed on resume. The
study also stores the base config and the trial length, and a resume with other ones is refused.

Example:
    >>> study, records, exact = open_study(out, base, space, 3e-3, trial_epochs=3, resume=True)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from tlkit.core.errors import TlkitError
from tlkit.train.config import TrainConfig
from tlkit.train.lr_find import LRFindResult
from tlkit.train.tune_space import TrialRecord, import_optuna, round_value

log = logging.getLogger(__name__)

STUDY_DB = "study.db"
STUDY_NAME = "tlkit-tune"
RECORD = "tlkit_record"


def check_tune_dir(out: Path, resume: bool, base: TrainConfig, trial_epochs: int) -> None:
    """Refuse, before any work, to start over a stored study without ``resume`` (as ``finetune`` refuses a
    trained run), or to resume one with another base config or trial length."""
    if not (out / STUDY_DB).is_file():
        return
    if not resume:
        raise TlkitError(f"{out} already holds a tune study; add --resume to continue it, or choose a new --out")
    study = import_optuna().load_study(study_name=STUDY_NAME, storage=storage_url(out))
    if study.user_attrs:
        _check_same(study, base, trial_epochs, out)


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / STUDY_DB).resolve()}"


def _base_params(base: TrainConfig, searched: list[str]) -> dict[str, Any]:
    return {k: getattr(base, k) for k in searched}


def _check_same(study, base: TrainConfig, trial_epochs: int, out: Path) -> None:
    stored = study.user_attrs.get("base", {})
    changed = sorted(k for k, v in base.to_dict().items() if json.loads(json.dumps(v)) != stored.get(k))
    if changed or study.user_attrs.get("trial_epochs") != trial_epochs:
        what = ", ".join(changed) if changed else "--epochs"
        raise TlkitError(f"--resume: {out} was tuned with other settings ({what}); use the same options or a new --out")


def load_records(study) -> list:
    """The stored trial records, in trial order; trials killed while running are marked failed."""
    from optuna.trial import TrialState

    records = []
    for t in study.get_trials(deepcopy=False):
        if RECORD in t.user_attrs:
            records.append(TrialRecord(**t.user_attrs[RECORD]))
        elif t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
    return records


def save_record(trial, record) -> None:
    """Store ``record`` with its Optuna trial (call before ``study.tell``)."""
    trial.set_user_attr(RECORD, dataclasses.asdict(record))


def open_study(out: Path, base: TrainConfig, space, lr_suggestion: float, *, trial_epochs: int, resume: bool):
    """A seeded TPE study with a median pruner, stored in ``out/study.db``.

    A new study gets the base config (and the base with the suggested lr) enqueued as its first trials;
    a resumed one gets the base enqueued again only when no complete trial of it is stored.

    Returns:
        ``(study, records, exact)``: the stored records, and the trial numbers that run enqueued values
        as they are (not rounded).
    """
    from optuna.trial import TrialState

    optuna = import_optuna()
    study = optuna.create_study(
        storage=storage_url(out), study_name=STUDY_NAME, load_if_exists=resume,
        direction="minimize" if base.monitor.endswith("loss") else "maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    records = load_records(study)
    # a resumed study draws on from another seed, not the first run's random start points again
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials), n_startup_trials=4)
    first = _base_params(base, space.searched)
    if records or study.user_attrs:
        _check_same(study, base, trial_epochs, out)
        if not any(r.params == first and r.state == "complete" for r in records):
            study.enqueue_trial(first)
    else:
        study.set_user_attr("base", json.loads(json.dumps(base.to_dict())))
        study.set_user_attr("trial_epochs", trial_epochs)
        study.enqueue_trial(first)
        if "lr" in first and abs(math.log(lr_suggestion / base.lr)) > math.log(1.5):
            study.enqueue_trial({**first, "lr": round_value("lr", lr_suggestion)})
    exact = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    return study, records, exact


def load_lr_find(out: Path) -> LRFindResult | None:
    """The range test stored by an earlier run in ``out`` (``lr_find.json``), if any."""
    path = out / "lr_find.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    return LRFindResult(tuple(d["lrs"]), tuple(d["losses"]), tuple(d["raw_losses"]), d["suggestion"], d["method"],
                        d["candidates"], d["diverged"], d["seconds"])


__all__ = ["STUDY_DB", "check_tune_dir", "load_lr_find", "load_records", "open_study", "save_record",
           "storage_url"]
