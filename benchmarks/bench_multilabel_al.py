"""Multi-label active learning: tlkit's strategies against modAL's ``modAL.multilabel`` in tlkit's simulator (#30).

Like ``benchmarks/peers.py`` for scikit-activeml, modAL's multi-label strategies are registered as tlkit
strategies (benchmark only; nothing in ``tlkit/`` imports this file), so they run in the same simulator
with the same learner (tlkit's one-vs-rest head), the same random start sets and the same budgets:

* ``modal-svm-binary-minimum`` (Brinker 2006): the smallest |decision value| over the binary problems;
  modAL's function returns one index, so it is called once per pick on the remaining candidates;
* ``modal-max-loss`` (Yang et al. 2009's MMC without the cardinality model) and ``modal-mean-max-loss``
  (Li et al. 2004);
* ``modal-min-confidence``, ``modal-avg-confidence``, ``modal-max-score``, ``modal-avg-score``.

modAL reads ``predict_proba`` / ``predict`` / ``decision_function`` of a one-vs-rest classifier; the
adapter hands it the simulator's head through :class:`_Precomputed` (probabilities, p >= 0.5, and the
logits as decision values), so nothing is refitted and every strategy sees the same model.

Data: ``benchmarks/multilabel_data.py`` mosaics (``load_embeddings``: efficientnet_lite0 embeddings of
224 px mosaics). The TUNING set (``clothing``, splits 100-104) chooses ``auto``'s multi-label plan and
``max-margin-adaptive``'s beta (``--tune``); the REPORT set (``intel``, splits 0-4, 2 seeds) is only
measured. Start 10 random labels, batches of 10, to 200 labels; AUBC over mAP (macro) on the test mosaics.

Usage (from the repository root; about 15 CPU minutes for the report, 8 for the tuning):
  python benchmarks/bench_multilabel_al.py                 # report set -> results/multilabel_al_intel.{json,txt}
  (what was run and found: benchmarks/results/multilabel_al_report.md)
  python benchmarks/bench_multilabel_al.py --tune          # tuning set -> results/multilabel_al_tune.{json,txt}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlkit.active.strategies import PoolView, Selection, register_strategy  # noqa: E402
from tlkit.core.constants import MULTILABEL, TASKS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODAL = ("svm-binary-minimum", "max-loss", "mean-max-loss", "min-confidence", "avg-confidence", "max-score",
         "avg-score")
TLKIT = ("random", "mean-entropy", "max-margin", "mmc", "max-margin-adaptive", "maxherding-entropy", "auto")
START, BATCH, ROUNDS = 10, 10, 19  # 10..200 labels
BUDGETS_SHOWN = (10, 20, 50, 100, 150, 200)


class _Precomputed:
    """The slice of a fitted ``OneVsRestClassifier`` that modAL's multi-label strategies read, over the
    candidates' precomputed probabilities ``P [c, k]``."""

    def __init__(self, P: np.ndarray):
        self.P = np.asarray(P, np.float64)
        self.classes_ = np.arange(self.P.shape[1])
        f = np.log(np.clip(self.P, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(self.P, 1e-6, 1 - 1e-6))
        self.estimator = type("OvR", (), {"estimators_": [_Decision(f[:, j]) for j in range(f.shape[1])]})()

    def _check(self, X):
        if len(X) != len(self.P):
            raise ValueError(f"expected the {len(self.P)} candidate rows, got {len(X)}")

    def predict_proba(self, X, **_):
        self._check(X)
        return self.P

    def predict(self, X, **_):
        self._check(X)
        return (self.P >= 0.5).astype(np.int64)


class _Decision:
    def __init__(self, f: np.ndarray):
        self.f = f

    def decision_function(self, X):
        """The logits of the rows ``X`` names (``[m, 1]`` positions among the candidates)."""
        return self.f[np.asarray(X, np.int64).ravel()]


def _modal_selection(name: str, pool: PoolView, n: int) -> Selection:
    import modAL.multilabel as mm

    cand = pool.candidate_indices
    P = pool.probs[cand]
    if name == "svm-binary-minimum":  # one index per call: pick n times from what is left
        left, picked = np.arange(cand.size), []
        for _ in range(n):
            clf = _Precomputed(P[left])
            j = int(mm.SVM_binary_minimum(clf, np.arange(left.size).reshape(-1, 1)))
            picked.append(left[j])
            left = np.delete(left, j)
        idx = np.asarray(picked, np.int64)
        return Selection(cand[idx], np.linspace(1.0, 0.0, idx.size))
    fn = getattr(mm, name.replace("-", "_"))
    idx, values = fn(_Precomputed(P), np.zeros((cand.size, 1)), n_instances=n)
    idx = np.asarray(idx, np.int64)
    order = np.argsort(-np.asarray(values, np.float64), kind="stable")
    if name in ("min-confidence",):  # multi_argmin: the smallest first
        order = np.argsort(np.asarray(values, np.float64), kind="stable")
    return Selection(cand[idx[order]], np.linspace(1.0, 0.0, idx.size))


def register_modal() -> list[str]:
    """Register modAL's multi-label strategies as ``modal-<name>`` (idempotent); returns the names."""
    from tlkit.active.strategies._registry import _REGISTRY

    names = [f"modal-{m}" for m in MODAL]
    for m, name in zip(MODAL, names):
        if name in _REGISTRY:
            continue
        register_strategy(name, description=f"modAL.multilabel {m.replace('-', '_')} (benchmark only)",
                          tasks=(MULTILABEL,))(lambda pool, n, rng, m=m: _modal_selection(m, pool, n))
    return names


# ------------------------------------------------------------------------------------- tuning variants

AUTO_VARIANTS = {  # name -> (AUTO_ML_FEW, AUTO_ML_WARM)
    "auto": None,
    "auto-few-maxherding": ("maxherding", None),
    "auto-warm-mean-entropy": (None, "mean-entropy"),
    "auto-warm-adaptive": (None, "max-margin-adaptive"),
    "auto-warm-mmc": (None, "mmc"),
    "auto-warm-badge": (None, "badge"),
    "auto-few-only": (None, "maxherding-entropy"),
    "auto-herding-only": (None, "maxherding"),
}
BETAS = (0.25, 0.5, 0.75)
LATE_VARIANTS = {"auto-late-mmc": "mmc", "auto-late-adaptive": "max-margin-adaptive"}
"""``auto``, then this strategy from :data:`LATE_PER_CLASS` labels per class (``results/multilabel_al_late_plan.md``)."""
LATE_PER_CLASS = 20


def register_variants() -> list[str]:
    """Tuning-only strategies: ``auto`` with another multi-label plan, ``max-margin-adaptive`` with another beta."""
    from tlkit.active.strategies import auto as A
    from tlkit.active.strategies import multilabel as ml
    from tlkit.active.strategies._common import top_selection
    from tlkit.active.strategies._registry import _REGISTRY, get_strategy

    def auto_with(few, warm):
        def fn(pool, n, rng):
            old = A.AUTO_ML_FEW, A.AUTO_ML_WARM
            A.AUTO_ML_FEW, A.AUTO_ML_WARM = few or old[0], warm or old[1]
            try:
                return A.auto(pool, n, rng)
            finally:
                A.AUTO_ML_FEW, A.AUTO_ML_WARM = old
        return fn

    names = []
    for name, plan in AUTO_VARIANTS.items():
        if plan is None:
            names.append(name)
            continue
        if name not in _REGISTRY:
            register_strategy(name, description="tuning variant of auto", needs=("embeddings",), full_dim=True,
                              tasks=TASKS)(auto_with(*plan))
        names.append(name)
    for name, late in LATE_VARIANTS.items():
        if name not in _REGISTRY:
            def fn(pool, n, rng, late=late):
                if pool.probs is not None and pool.n_labels >= LATE_PER_CLASS * pool.probs.shape[1]:
                    sel = get_strategy(late).fn(pool, n, rng)
                    return Selection(sel.indices, sel.scores, f"auto-late({late})")
                return A.auto(pool, n, rng)
            register_strategy(name, description="tuning variant of auto with a late phase", needs=("embeddings",),
                              full_dim=True, tasks=TASKS)(fn)
        names.append(name)
    for beta in BETAS:
        name = f"adaptive-beta-{int(beta * 100)}"
        if name not in _REGISTRY:
            register_strategy(name, description="tuning variant of max-margin-adaptive", tasks=(MULTILABEL,))(
                lambda pool, n, rng, b=beta: top_selection(
                    pool, ml.adaptive_scores(pool.probs[pool.candidates], ml._labeled_sets(pool), b), n, rng))
        names.append(name)
    return names


# ------------------------------------------------------------------------------------- running


def run(name: str, splits: list[int], seeds: list[int], strategies: list[str], rounds: int = ROUNDS) -> dict:
    """Simulate every strategy on every split x seed; per strategy the AUBC of each run and mean mAP by budget."""
    from benchmarks.multilabel_data import load_embeddings
    from tlkit.active.simulate import aubc_by_seed, simulate

    runs: dict[str, list[float]] = {s: [] for s in strategies}
    curves: dict[str, dict[int, list[float]]] = {s: {} for s in strategies}
    seconds: dict[str, float] = {s: 0.0 for s in strategies}
    for split in splits:
        xp, xt, yp, yt, classes = load_embeddings(name, split)
        for s in strategies:
            t = time.perf_counter()
            res = simulate(xp, yp, xt, yt, strategies=[s], start=START, batch=BATCH, rounds=rounds, seeds=seeds,
                           classes=classes, ssl="off")
            seconds[s] += time.perf_counter() - t
            runs[s].extend(aubc_by_seed(res.rows, s).values())
            for _, _, labels, value in res.rows:
                curves[s].setdefault(labels, []).append(value)
            print(f"{name} split {split} {s}: AUBC {np.mean(list(aubc_by_seed(res.rows, s).values())):.4f} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    return {"set": name, "splits": splits, "seeds": seeds, "start": START, "batch": BATCH, "rounds": rounds,
            "strategies": {s: {"aubc": float(np.mean(runs[s])), "aubc_se": float(np.std(runs[s]) / np.sqrt(len(runs[s]))),
                               "runs": runs[s], "map": {b: float(np.mean(v)) for b, v in sorted(curves[s].items())},
                               "seconds": round(seconds[s], 1)} for s in strategies}}


def table(result: dict) -> str:
    """A text table: AUBC (mAP) ± s.e. and mean mAP at some budgets, best AUBC first."""
    last = START + BATCH * result.get("rounds", ROUNDS)
    shown = tuple(b for b in BUDGETS_SHOWN + tuple(range(250, last + 1, 50)) if b <= last)
    lines = [f"{result['set']} splits {result['splits']} seeds {result['seeds']}: AUBC over mAP (macro), "
             f"{START}..{last} labels",
             f"{'strategy':28s} {'AUBC':>14s} " + " ".join(f"{b:>6d}" for b in shown)]
    for s, v in sorted(result["strategies"].items(), key=lambda kv: -kv[1]["aubc"]):
        m = {int(b): x for b, x in v["map"].items()}  # JSON keys are text
        lines.append(f"{s:28s} {100 * v['aubc']:7.2f} ± {100 * v['aubc_se']:4.2f} "
                     + " ".join(f"{100 * m[b]:6.2f}" for b in shown if b in m))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="the tuning set (clothing, splits 100-104, 1 seed)")
    ap.add_argument("--set", default=None, help="the mosaic set (default: clothing with --tune, else intel); "
                    "cifar10 is the second tuning set (results/multilabel_al_retune_plan.md)")
    ap.add_argument("--splits", default=None, help="comma-separated splits (default: 0-4, or 100-104 with --tune)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1; --tune: 0)")
    ap.add_argument("--strategies", default=None, help="comma-separated names (default: tlkit's + modAL's)")
    ap.add_argument("--out", default=None, help="results file stem under benchmarks/results/ (default: by set)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"batches of {BATCH} after the {START} start "
                    f"(default {ROUNDS}: to {START + BATCH * ROUNDS} labels)")
    args = ap.parse_args(argv)
    modal = register_modal()
    variants = register_variants()
    name = args.set or ("clothing" if args.tune else "intel")
    splits = [int(s) for s in (args.splits or ("100,101,102,103,104" if args.tune else "0,1,2,3,4")).split(",")]
    seeds = [int(s) for s in (args.seeds or ("0" if args.tune else "0,1")).split(",")]
    default = (variants + ["random", "mean-entropy"]) if args.tune else list(TLKIT) + modal
    strategies = args.strategies.split(",") if args.strategies else default
    from threadpoolctl import threadpool_limits

    t = time.perf_counter()
    with threadpool_limits(limits=1):  # small products: a second thread only spins on a shared machine
        result = run(name, splits, seeds, strategies, args.rounds)
    result["cpu_minutes"] = round((time.perf_counter() - t) / 60, 1)
    stem = RESULTS / (args.out or ("multilabel_al_tune" if args.tune else f"multilabel_al_{name}"))
    RESULTS.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".txt").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
