"""`tlkit tune` and the lr range test: the suggestion rule on known curves, a real range test, a real
budgeted search whose recipe `tlkit finetune --recipe` trains with, pruning and the budget cut, bad input."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tests.conftest import run_cli
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv, read_json
from tlkit.train import make_config
from tlkit.train.config import MODES, TrainConfig
from tlkit.train.lr_find import longest_descent, lr_find, suggest_lr
from tlkit.train.tune import decide, margin, pick_winner, recipe_of, run_confirm, run_trial, trial_fits, write_recipe
from tlkit.train.tune_plots import save_lr_find
from tlkit.train.tune_space import TrialRecord, import_optuna, search_space

optuna = pytest.importorskip("optuna")

TINY = dict(backbone="test_resnet", pretrained=False, image_size=32, batch_size=8, workers=0, precision="fp32")
TINY_SET = [f"{k}={str(v).lower()}" for k, v in TINY.items() if k not in ("backbone", "image_size")]


# --------------------------------------------------------------------------- the suggestion rule


def _curve(lrs: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A range-test-like loss: flat, a descent between 1e-4 and 1e-2, a blow-up beyond 0.1."""
    x = np.log10(lrs)
    loss = 2.3 - 1.8 / (1 + np.exp(-2 * (x + 3))) + np.where(x > -1, 3 * (x + 1) ** 2, 0)
    return loss + np.random.default_rng(seed).normal(0, noise, len(lrs))


@pytest.mark.parametrize("seed", range(3))
def test_suggestion_lies_on_the_descent_below_the_minimum(seed):
    from tlkit.train.lr_find import smooth, smoothing_for

    lrs = np.geomspace(1e-7, 1, 100)
    smoothed = smooth(_curve(lrs, 0.1, seed), smoothing_for(100))
    lr, method, cand = suggest_lr(lrs, smoothed)
    assert method == "valley+min/10"
    assert 1e-4 < lr < 3e-2 and lr <= cand["min"] / 2
    assert set(cand) == {"valley", "min/10", "min"}


def test_flat_curve_is_labelled_and_the_suggestion_stays_in_range():
    lrs = np.geomspace(1e-6, 1e-1, 30)
    lr, method, _ = suggest_lr(lrs, np.full(30, 2.0) + np.linspace(0, -0.01, 30))
    assert method == "flat" and lrs[0] <= lr <= lrs[-1]
    with pytest.raises(TlkitError, match="fewer than 2 finite losses"):
        suggest_lr([1e-3, 1e-2], [np.nan, 1.0])


def test_longest_descent_survives_a_bump_and_stays_tight():
    assert longest_descent(np.array([2.0, 2.0, 2.0, 1.5, 1.6, 1.2, 0.9, 3.0])) == (2, 6)


# --------------------------------------------------------------------------- search pieces


def _record(number, value, state="complete", val_loss=1.0, **params):
    return TrialRecord(number, {"lr": 1e-3, **params}, value, state, 2, 1.0, val_loss)


def test_winner_ties_go_to_the_base_then_the_lower_loss_and_never_to_a_cut_trial():
    trials = [_record(0, 0.8), _record(1, 0.8, val_loss=2.0), _record(2, 0.9, "cut"), _record(3, 0.95, "pruned"),
              _record(5, 0.8)]
    assert pick_winner(trials, "val_accuracy").number == 0
    trials.append(_record(4, 0.8, val_loss=0.5))
    assert pick_winner(trials, "val_accuracy").number == 0  # a lower loss alone does not leave the base
    assert pick_winner(trials[1:], "val_accuracy").number == 4  # without the base: the lower loss
    trials.append(_record(6, 0.85, val_loss=3.0))
    assert pick_winner(trials, "val_accuracy").number == 6  # a better metric does
    assert pick_winner([_record(0, 0.4), _record(1, 0.3)], "val_loss").number == 1
    assert pick_winner([_record(0, 0.9, "cut")], "val_accuracy") is None


def test_the_confirm_margin_is_one_standard_error_and_a_cut_run_keeps_the_base():
    assert margin(0.96, 180, "val_accuracy") == pytest.approx(math.sqrt(0.96 * 0.04 / 180))
    assert margin(1.0, 50, "val_accuracy") == 0.0 and margin(0.3, 50, "val_loss") == 0.0
    base = _record(0, 0.96)
    kept = decide(base, _record(4, 0.97, lr=3e-3), monitor="val_accuracy", n_val=180)  # +1 image in 180
    assert kept.chosen == "base" and "did not confirm" in kept.reason and kept.margin > 0.01
    won = decide(base, _record(4, 0.99, lr=3e-3), monitor="val_accuracy", n_val=180)
    assert won.chosen == "challenger" and won.reason.startswith("trial 4 confirmed")
    assert decide(base, _record(4, 1.0, "cut"), monitor="val_accuracy", n_val=180).chosen == "base"
    assert decide(base, None, monitor="val_accuracy", n_val=180).reason.endswith("budget ran out before both "
                                                                                 "full-length runs finished")
    assert decide(_record(0, 0.5), _record(2, 0.4), monitor="val_loss", n_val=10).chosen == "challenger"


def test_space_holds_the_base_values_and_drops_freeze_unfreeze_for_one_epoch_trials():
    base = make_config(batch_size=24, lr=0.5, weight_decay=0.0, hflip=0.3)
    space = search_space(base, 1e-3, fixed=("mode",), trial_epochs=1)
    assert 24 in space.batch_size and 0.3 in space.hflip and space.lr == (2e-4, 0.5)
    assert space.weight_decay[0] == 0.0 and "freeze-unfreeze" not in space.mode
    assert "mode" not in space.searched and "lr" in space.searched
    assert search_space(base, 1e-3, trial_epochs=3).mode == MODES
    with pytest.raises(TlkitError, match="unknown config keys to keep fixed: hfilp"):
        search_space(base, 1e-3, fixed=("hfilp",), trial_epochs=3)


def test_another_trial_starts_only_when_the_longest_finished_one_fits():
    trials = [_record(0, 0.5), _record(1, 0.5, "pruned")]
    trials = [TrialRecord(t.number, t.params, t.value, t.state, 2, s, 1.0) for t, s in zip(trials, (10.0, 30.0))]
    assert trial_fits([], 0.1) and not trial_fits([], 0.0)
    assert trial_fits(trials, 10.5) and not trial_fits(trials, 9.0)  # pruned trials do not count


def test_recipe_lists_only_what_differs_and_loads_back(tmp_path):
    d = TrainConfig()  # the defaults may change; the recipe follows them
    cfg = make_config(lr=d.lr * 3, epochs=d.epochs + 1)
    assert recipe_of(cfg) == {"epochs": d.epochs + 1, "lr": d.lr * 3}
    assert recipe_of(TrainConfig()) == {}
    write_recipe(tmp_path / "recipe.yaml", cfg, "tuned")
    assert make_config(tmp_path / "recipe.yaml") == cfg
    assert (tmp_path / "recipe.yaml").read_text().startswith("# tuned\n")


# --------------------------------------------------------------------------- real runs


def test_lr_find_on_real_digits_suggests_a_finite_lr_and_plots_it(digits_dir, tmp_path):
    res = lr_find(make_config(**TINY), data=digits_dir, steps=30, start_lr=1e-6, end_lr=1.0)
    assert 2 <= len(res.lrs) <= 30 and len(res.losses) == len(res.raw_losses) == len(res.lrs)
    assert math.isfinite(res.suggestion) and 1e-6 <= res.suggestion <= res.lrs[-1]
    assert all(b > a for a, b in zip(res.lrs, res.lrs[1:]))
    files = save_lr_find(res, tmp_path)
    assert files["lr_find_plot"].stat().st_size > 1000
    assert read_json(files["lr_find_json"])["suggestion"] == res.suggestion


def _study_with_a_perfect_trial(epochs: int):
    """A study whose one earlier trial scored 1.0 at every epoch, and a pruner that may prune at once."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=0))
    study.add_trial(create_trial(params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-4, 1e-2)},
                                 value=1.0, intermediate_values={e: 1.0 for e in range(epochs)}))
    return study


def test_a_trailing_trial_is_pruned_and_a_late_one_cut_cleanly(digits_dir, tmp_path):
    cfg = make_config(**TINY, epochs=3)
    study = _study_with_a_perfect_trial(3)
    rec = run_trial(study.ask(), cfg, {"lr": 1e-3}, data=digits_dir, val=None, work=tmp_path,
                    deadline=time.monotonic() + 600)
    assert rec.state == "pruned" and rec.epochs == 1 and rec.value is not None
    rec = run_trial(study.ask(), cfg, {"lr": 1e-3}, data=digits_dir, val=None, work=tmp_path,
                    deadline=time.monotonic())
    assert rec.state == "cut" and rec.epochs == 0 and rec.value is None
    assert list(tmp_path.iterdir()) == [], "trial folders are removed"


def test_confirm_trains_both_at_full_length_and_keeps_the_base_when_time_runs_out(digits_dir, tmp_path):
    base = make_config(**TINY, epochs=2, lr=1e-9)  # the base cannot learn; the search found an lr that can
    trials = [TrialRecord(0, {"lr": 1e-9}, 0.1, "complete", 1, 1.0, 2.3),
              TrialRecord(3, {"lr": 3e-3}, 0.5, "complete", 1, 1.0, 1.5)]
    kw = dict(trial_epochs=1, n_val=12, data=digits_dir, val=None, work=tmp_path, budget_s=600)
    seen = []
    conf = run_confirm(base, trials, deadline=time.monotonic() + 600, on_trial=seen.append, **kw)
    assert [(r.number, r.stage, r.epochs, r.state) for r in seen] == [(0, "confirm", 2, "complete"),
                                                                        (3, "confirm", 2, "complete")]
    assert (conf.base, conf.challenger) == tuple(seen) and seen[1].params == {"lr": 3e-3}
    assert conf == decide(seen[0], seen[1], monitor="val_accuracy", n_val=12)  # the rule decided, on these runs
    cut = run_confirm(base, trials, deadline=time.monotonic(), **kw)
    assert cut.chosen == "base" and cut.base.state == "cut" and cut.challenger is None
    same = run_confirm(base, trials[:1], deadline=time.monotonic() + 600, **kw)
    assert same.chosen == "base" and same.reason == "the base config led the search"
    assert list(tmp_path.iterdir()) == [], "run folders are removed"


@pytest.mark.slow
def test_tune_within_a_tiny_budget_writes_a_recipe_that_finetune_trains_with(digits_dir, tmp_path):
    from typer.testing import CliRunner

    import tlkit.cli.tune  # noqa: F401
    from tlkit.cli._app import app

    out, budget_s = tmp_path / "tune", 15
    args = ["tune", str(digits_dir), "--out", str(out), "-b", "test_resnet", "--image-size", "32", "--epochs", "2",
            "--budget", str(budget_s / 60), "--seed", "1", *[a for s in TINY_SET for a in ("--set", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    # the budget bounds the search from its start (tune's own clock; wall time here also counts the
    # process's imports and data checks, which a loaded CI machine stretches)
    summary = read_json(out / "tune.json")
    assert summary["stopped"] == "budget" and summary["elapsed_s"] <= budget_s + 3
    assert summary["base"]["number"] == 0 and summary["base"]["params"]["lr"] == TrainConfig().lr  # defaults first
    assert summary["confirm"]["chosen"] in ("base", "challenger") and " ".join(summary["confirm"]["reason"].split()) in " ".join(r.output.split())
    rows = read_csv(out / "trials.csv")
    search = [r for r in rows if r["stage"] == "search"]
    assert rows[0]["number"] == "0" and len(search) == summary["trials"] >= 1
    assert {"lr", "batch_size", "weight_decay", "scale_min", "hflip", "mode", "value", "state", "seconds",
            "stage"} <= set(rows[0])
    for name in ("recipe.yaml", "lr_find.png", "trials.png", "tune.json", "trials.csv"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no trial folder or temp file left"
    assert f"--recipe {out / 'recipe.yaml'}" in r.output
    tuned = make_config(out / "recipe.yaml")
    assert {"backbone": "test_resnet", "batch_size": 8, "workers": 0}.items() <= recipe_of(tuned).items()
    run = tmp_path / "run"
    res = run_cli("finetune", "--data", str(digits_dir), "--out", str(run), "--recipe", str(out / "recipe.yaml"),
                  "--epochs", "1")
    assert res.returncode == 0, res.stderr
    assert read_json(run / "best.json")["config"] == tuned.replace(epochs=1).to_dict()


def test_resume_continues_the_stored_study_and_refuses_other_settings(digits_dir, tmp_path):
    from tlkit.train.tune import tune

    base, out = make_config(**TINY, hflip=0.0), tmp_path / "tune"
    kw = dict(data=digits_dir, out=out, budget_s=120, trial_epochs=1, lr_find_steps=20, confirm=False)
    first = tune(base, max_trials=2, **kw)
    assert [t.number for t in first.trials] == [0, 1] and (out / "study.db").is_file()
    with pytest.raises(TlkitError, match="already holds a tune study; add --resume"):
        tune(base, max_trials=1, **kw)
    with pytest.raises(TlkitError, match=r"other settings \(lr\)"):
        tune(base.replace(lr=0.5), max_trials=1, resume=True, **kw)
    again = tune(base, max_trials=1, resume=True, **kw)
    assert [t.number for t in again.trials] == [0, 1, 2] and again.trials[:2] == first.trials
    assert again.lr_find == first.lr_find and again.default_trial == first.trials[0]
    assert len(read_csv(out / "trials.csv")) == 3


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(digits_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tlkit.cli.tune  # noqa: F401
    from tlkit.cli._app import app

    runner = CliRunner()
    cases = [(["--budget", "0"], "--budget 0: give a positive number of minutes"),
             (["--budget", "-1"], "--budget -1: give a positive number of minutes"),
             (["--epochs", "0"], "--epochs 0: each trial needs at least 1 epoch")]
    for extra, message in cases:
        r = runner.invoke(app, ["tune", str(digits_dir), "--out", str(tmp_path / "o"), *extra])
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
    r = runner.invoke(app, ["tune", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "o").exists(), "nothing written"
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)
    with pytest.raises(TlkitError, match=r'pip install "tlkit\[tune\]"'):
        import_optuna()
    r = runner.invoke(app, ["tune", str(digits_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and 'pip install "tlkit[tune]"' in r.output, r.output


def test_trials_plot_when_lr_is_fixed(tmp_path):
    """``--set lr=...`` keeps lr out of the trials' params: the right panel plots weight decay instead."""
    from tlkit.train.tune_plots import plot_trials

    trials = [TrialRecord(i, {"weight_decay": 10.0 ** -i, "hflip": 0.0}, 0.5 + 0.1 * i, "complete", 1, 1.0)
              for i in range(3)]
    assert plot_trials(trials, "val_accuracy", tmp_path / "a.png").stat().st_size > 1000
    fixed = [TrialRecord(i, {"hflip": 0.0}, 0.5, "complete", 1, 1.0) for i in range(2)]
    assert plot_trials(fixed, "val_accuracy", tmp_path / "b.png").stat().st_size > 1000
