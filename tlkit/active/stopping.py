"""A stopping signal for labeling teams: do more labels still pay?

Stabilising predictions (Bloodgood & Vijay-Shanker 2009): every round predicts a fixed *stop set*
of unlabeled pool images; once consecutive models agree on it (Cohen's kappa ≥
:data:`STABLE_KAPPA`) for :data:`STABLE_ROUNDS` rounds in a row, new labels have stopped changing
the model, and so, in the simulator, its accuracy. It needs no held-out labels, costs one
prediction of at most :data:`STOP_SET_SIZE` rows per round, and is recorded in each round's
``metrics.json`` as ``stopping.kappa``. The cross-validated accuracy gain since the previous round
(``stopping.cv_gain``) is recorded next to it and quoted in the hint.

The stop set is the :data:`STOP_SET_SIZE` pool paths with the smallest hash of the path, so it stays
the same when the pool grows (only new paths with smaller hashes join it) and needs no state.

Evidence (``benchmarks/bench_auto.py --stopping``, README "When to stop labeling").
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

STOP_SET_SIZE = 2000
"""Pool images whose predictions are compared between rounds."""
STABLE_KAPPA = 0.97
"""Consecutive models agreeing at least this much (Cohen's kappa on the stop set) count as stable."""
STABLE_ROUNDS = 3
"""Stable rounds in a row before the hint says the gains have flattened."""


def stop_set(paths: Sequence[str]) -> np.ndarray:
    """``[m]`` positions (ascending) of the ≤ :data:`STOP_SET_SIZE` paths with the smallest path hash."""
    keys = np.array([int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "big") for p in paths], dtype=np.uint64)
    m = min(STOP_SET_SIZE, len(paths))
    return np.sort(np.argsort(keys, kind="stable")[:m])


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa between two ``[m]`` int label vectors (1.0 when both are one identical constant)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return float("nan")
    observed = float(np.mean(a == b))
    classes = np.union1d(a, b)
    pa = np.array([np.mean(a == c) for c in classes])
    pb = np.array([np.mean(b == c) for c in classes])
    expected = float(pa @ pb)
    return 1.0 if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def agreement(previous: dict[str, str], current: dict[str, str]) -> float | None:
    """Kappa between two rounds' ``{path: predicted class}`` on their common paths; None without any."""
    common = sorted(set(previous) & set(current))
    if not common:
        return None
    names = {c: i for i, c in enumerate(sorted({previous[p] for p in common} | {current[p] for p in common}))}
    return cohen_kappa(np.array([names[previous[p]] for p in common]), np.array([names[current[p]] for p in common]))


def stable_streak(kappas: Sequence[float | None]) -> int:
    """Rounds at the end of ``kappas`` (oldest first) with kappa ≥ :data:`STABLE_KAPPA`."""
    n = 0
    for k in reversed(list(kappas)):
        if k is None or k < STABLE_KAPPA:
            break
        n += 1
    return n


def stopping_hint(rounds: Sequence[dict[str, Any]]) -> str | None:
    """A plain-language hint from the rounds' ``stopping`` records (oldest first), or None.

    Example: ``"accuracy gains have flattened for 3 rounds: the model's predictions on 2000 pool images
    changed little (kappa ≥ 0.97) ..."``.
    """
    stops = [r.get("stopping") or {} for r in rounds]
    kappas = [s.get("kappa") for s in stops]
    if not any(k is not None for k in kappas):
        return None
    streak = stable_streak(kappas)
    gains = [s.get("cv_gain") for s in stops[-max(streak, 1):] if s.get("cv_gain") is not None]
    gain = f"; cross-validated accuracy moved {100 * sum(gains):+.1f} points over them" if gains else ""
    if streak >= STABLE_ROUNDS:
        return (f"accuracy gains have flattened for {streak} rounds: the model's predictions on the pool changed little "
                f"between rounds (kappa ≥ {STABLE_KAPPA}){gain}. More labels are unlikely to pay much; consider stopping "
                "or checking the errors by hand")
    last = next((k for k in reversed(kappas) if k is not None), None)
    return (f"more labels still pay: the model's predictions on the pool still change between rounds "
            f"(kappa {last:.3f} in the last round; stable is ≥ {STABLE_KAPPA} for {STABLE_ROUNDS} rounds)")
