"""Label issues: out-of-fold probabilities of the head, then cleanlab's confident learning.

Each labeled image gets class probabilities from a head (:mod:`tlkit.active.head`) that never saw it
(stratified k-fold over the labeled rows), or from a fine-tuned run's own cross-validated predictions.
cleanlab's ``find_label_issues`` (``prune_by_noise_rate``) decides which labels are issues. They are
ranked (lowest = most suspicious) by a label quality that blends cleanlab's self-confidence (the
out-of-fold probability of the given label) with the share of the image's nearest labeled neighbours
(embeddings) that carry the same label (:data:`KNN_WEIGHT`). tlkit does not reimplement confident
learning.

The ranking's self-confidence comes from a second out-of-fold head regularised far more than the
active-learning head (:data:`AUDIT_C_ROWS`): fitted on noisy labels, it should rank by what most of a
class looks like, not by the few images next to the one judged. cleanlab's flags keep the usual
head's probabilities (its per-class thresholds assume them; with the soft probabilities of the
strong penalty it flagged fewer of the flips on small sets). Chosen on the tuning photo sets only (``benchmarks/tune_audit.py``; cifar10
and clothing, 5 % injected flips; ``benchmarks/results/audit_tuning.txt``), top-k recall (share of the
flipped images among the k most suspicious, k = number flipped):

======================================  ==================  ==================
variant                                 clothing 100-101    clothing 102-103
======================================  ==================  ==================
C 1, self-confidence (before)           66.0 %              --
C 0.01, self-confidence                 77.5 %              79.7 %
C 0.001, self-confidence                --                  82.4 %
C 0.001, 0.7 self-conf + 0.3 knn20      --                  83.7 %
======================================  ==================  ==================

The CIFAR-10 half of the study did not finish on the shared machine; it is the next thing to run.

Multi-label sets (a project with ``task: multilabel``) go through cleanlab's multi-label API
(``cleanlab.multilabel_classification``): out-of-fold probabilities from the one-vs-rest head
(:func:`tlkit.active.head.cross_val_multilabel_proba`) and ``filter.find_label_issues`` for the flags. The
ranking is each row's worst class (:func:`find_multilabel_issues` with :func:`multilabel_knn_share`): the
out-of-fold probabilities blended with the nearest rows' share of each class, a row as suspicious as its
most suspicious class; a class added where it is absent or missing where it is present both show.
cleanlab's own label quality (self-confidence per class, pooled over the classes) ranked before; the
worst class replaced it by a rule fixed before the runs (``benchmarks/results/multilabel_audit_ranking_plan.md``,
tuning mosaics clothing and cifar10, splits 100-102, 5 % of the rows flipped): top-k recall 21.6 % against
12.2 % on the 1,500-mosaic pools, 16.0 % against 15.3 % on 150-mosaic draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.active import head as heads
from tlkit.core.errors import TlkitError
from tlkit.core.io import read_csv

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tlkit[audit]' (or pip install 'cleanlab>=2.9')"
AUDIT_GTOL = 1e-6
"""The multi-label audit's heads are fitted closer than active learning's (:data:`tlkit.active.head.LBFGS_GTOL`,
1e-4): label issues rank rows by small differences of out-of-fold probabilities, and with 1e-4 the test
suite's injected flips among 100 real mosaics ranked 4 of 6 in the top 12 instead of 6 of 6."""

AUDIT_C_ROWS = 2.5
"""The out-of-fold head's inverse L2 strength is ``AUDIT_C_ROWS / n`` for ``n`` training rows, i.e. a
fixed penalty per row (scikit-learn's ``C`` multiplies the summed loss, so a fixed ``C`` would weaken
the penalty as the set grows). 2.5 is ``C = 0.001`` at the tuning folds' ~2,450 rows (clothing): the
module docstring has the study (smaller was better on both tuning sets, from ``C = 1`` down to 0.001)."""
KNN_NEIGHBOURS = 20
"""Labeled neighbours (cosine on centred embeddings) whose labels the agreement term counts."""
KNN_WEIGHT = 0.3
"""Weight of the neighbours' agreement in the label quality (the rest: self-confidence)."""


@dataclass(frozen=True)
class LabelIssues:
    """Out-of-fold view of the labeled rows.

    Attributes:
        probs: ``[m, k]`` out-of-fold probabilities over ``classes``.
        quality: ``[m]`` label quality: self-confidence (the probability of the given label), blended with
            the neighbours' agreement when it is given (:func:`find_issues`); low = suspicious.
        suggested: ``[m]`` int most probable class.
        issues: int rows cleanlab flags, most suspicious first.
        ranking: int all rows, most suspicious first (``argsort(quality)``).
    """

    probs: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    issues: np.ndarray
    ranking: np.ndarray


def check_labels(labels: list[str | None], where: str) -> tuple[str, ...]:
    """The classes of ``labels`` (sorted); one line when there are none."""
    classes = sorted({lab for lab in labels if lab})
    if not classes:
        raise TlkitError(f"{where} has no labels; label issues need labeled images (class folders, a path,label "
                         "manifest, or a project with labels)")
    return tuple(classes)


def too_few_classes(labels: list[str | None], where: str) -> str | None:
    """Why label issues cannot be looked for in ``labels`` (fewer than two classes), or None when they can."""
    classes = sorted({lab for lab in labels if lab})
    if len(classes) >= 2:
        return None
    has = f"one class only ({classes[0]!r})" if classes else "no labels"
    return f"label issues: skipped ({where} has {has}; they need labels of two or more classes)"


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0,
                      scaler: heads.Scaler | None = None, C: float = heads.DEFAULT_C) -> np.ndarray:
    """``[m, k]`` probabilities of each row from a head fitted on the other folds.

    Args:
        x: ``[m, d]`` embeddings of the labeled rows.
        y: ``[m]`` int classes in ``0..n_classes-1``.
        folds: k of the k-fold (fewer when a class has fewer rows; plain k-fold below 2 per class).
        scaler: the standardisation (default: fitted on ``x``).
        C: the head's inverse regularisation; ``None``: ``AUDIT_C_ROWS / rows in the fold`` (the
            ranking head of :func:`ranking_probs`).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    scaler = scaler or heads.Scaler.fit(x)
    classes = tuple(str(c) for c in range(n_classes))
    smallest = np.bincount(y, minlength=n_classes)[np.unique(y)].min()
    k = max(2, min(folds, len(y) // 2))
    splitter = (StratifiedKFold(min(k, smallest), shuffle=True, random_state=seed) if smallest >= 2
                else KFold(k, shuffle=True, random_state=seed))
    probs = np.zeros((len(y), n_classes), np.float32)
    for tr, te in splitter.split(x, y):
        c = C if C is not None else AUDIT_C_ROWS / len(tr)  # a fixed penalty per row
        head = heads.fit_head(x[tr], y[tr], classes, scaler=scaler, seed=seed, C=c)
        probs[te] = head.predict_proba(x[te]) if head is not None else 1.0 / n_classes
    return probs


def find_multilabel_issues(Y: np.ndarray, probs: np.ndarray, agreement: np.ndarray | None = None) -> LabelIssues:
    """cleanlab's multi-label label issues of ``Y [m, k]`` (0/1) under out-of-fold ``probs [m, k]`` (per class).

    With ``agreement [m, k]`` (:func:`multilabel_knn_share`; what ``tlkit audit`` passes) each row is ranked
    by its worst class, ``1 - max_j |Y_ij - q_ij|`` with ``q`` the probabilities blended with the neighbours'
    share of each class (:data:`KNN_WEIGHT`); without it, by cleanlab's label quality
    (``rank.get_label_quality_scores``: self-confidence per class, pooled over the classes). The module
    docstring has the study that chose the worst class.

    ``suggested`` is unused for sets (zeros): the suggested set is ``probs >= 0.5``.
    """
    try:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores
    except ImportError:
        raise TlkitError(f"label issues need cleanlab, which is not installed: {INSTALL_HINT}") from None
    labels = [list(np.flatnonzero(row)) for row in Y]
    if agreement is None:
        quality = get_label_quality_scores(labels, probs).astype(np.float32)
    else:
        q = (1 - KNN_WEIGHT) * np.asarray(probs, np.float32) + KNN_WEIGHT * np.asarray(agreement, np.float32)
        quality = (1.0 - np.abs(np.asarray(Y, np.float32) - q).max(1)).astype(np.float32)
    issues = np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1),
                        np.int64)
    issues = issues[np.argsort(quality[issues], kind="stable")]
    return LabelIssues(probs, quality, np.zeros(len(Y), np.int64), issues, np.argsort(quality, kind="stable"))


def multilabel_out_of_fold_probs(x: np.ndarray, Y: np.ndarray, *, folds: int = 5, seed: int = 0,
                                 scaler: heads.Scaler | None = None) -> np.ndarray:
    """``[m, k]`` per-class probabilities of each row from one-vs-rest heads fitted on the other folds."""
    scaler = scaler or heads.Scaler.fit(x)
    classes = tuple(str(c) for c in range(Y.shape[1]))
    probs = heads.cross_val_multilabel_proba(x, Y, classes, scaler=scaler, folds=folds, seed=seed, tol=AUDIT_GTOL)
    if probs is None:
        raise TlkitError(f"label issues need at least 4 labeled images (found {len(Y)})")
    return probs


def multilabel_knn_share(x: np.ndarray, Y: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """``[m, c]`` share of each labeled row's ``k`` nearest labeled rows (cosine on mean-centred embeddings
    ``x [m, d]``, itself excluded) that carry each class (``Y [m, c]`` 0/1)."""
    Y = np.asarray(Y, np.float32)
    if len(Y) < 2:
        return Y.copy()
    index, valid = _labeled_neighbours(x, k)
    share = np.zeros_like(Y)
    for j in range(index.shape[1]):  # one neighbour rank at a time: [m, c] at most, never [m, k, c]
        share += Y[np.where(valid[:, j], index[:, j], 0)] * valid[:, j, None]
    return (share / np.maximum(valid.sum(1), 1)[:, None]).astype(np.float32)


def _labeled_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, valid)`` ``[m, k]``: each row's ``k`` nearest other rows of ``x [m, d]`` (cosine on mean-centred
    embeddings) and which of those slots hold a neighbour (:func:`tlkit.audit.neighbours.search`)."""
    from tlkit.audit.neighbours import normalise, search

    x = np.asarray(x, np.float32)
    nb = search(normalise(x - x.mean(0, dtype=np.float64).astype(np.float32)), k=k)
    return nb.index, nb.index >= 0


def read_pred_probs(file: Path, paths: list[str], classes: tuple[str, ...], *, multilabel: bool = False) -> np.ndarray:
    """``[m, k]`` probabilities from a CSV with a ``path`` column and one column per class.

    For cross-validated predictions of a fine-tuned model; rows are matched to ``paths`` by path, and
    each is scaled to sum to 1 (``multilabel``: kept as they are, each in [0, 1]).

    Raises:
        TlkitError: a column or a row missing, or a row that is not a probability vector (a NaN, inf or
            negative value, or only zeros): one line naming the first such row.
    """
    rows = read_csv(file)
    missing_cols = [c for c in ("path", *classes) if not rows or c not in rows[0]]
    if missing_cols:
        raise TlkitError(f"{file} needs the columns path,{','.join(classes)}; missing {missing_cols}")
    by_path = {r["path"]: r for r in rows}
    absent = [p for p in paths if p not in by_path]
    if absent:
        raise TlkitError(f"{file} has no row for {len(absent)} labeled images, e.g. {absent[0]!r}; predict every one")
    try:
        probs = np.array([[float(by_path[p][c]) for c in classes] for p in paths], np.float32)
    except ValueError as e:
        raise TlkitError(f"{file}: a probability is not a number ({e})") from None
    sums = probs.sum(1, dtype=np.float64)  # float32 values never overflow it
    if multilabel:
        bad = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | (probs > 1).any(1)
        if bad.any():
            i = int(np.argmax(bad))
            raise TlkitError(f"{file}: the row of {paths[i]!r} is not per-class probabilities in [0, 1] (bad rows: "
                             f"{bad.sum()}); give each class's own probability (sigmoid outputs)")
        return probs
    bad = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | ~(sums > 0)
    if bad.any():
        i = int(np.argmax(bad))
        what = ("NaN or inf" if not np.isfinite(probs[i]).all() else "a negative value" if (probs[i] < 0).any()
                else "only zeros")
        raise TlkitError(f"{file}: the row of {paths[i]!r} has {what} (bad rows: {bad.sum()}); give finite, "
                         "non-negative probabilities with a positive sum on every row")
    return (probs / sums[:, None]).astype(np.float32)


def ranking_probs(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0,
                  scaler: heads.Scaler | None = None) -> np.ndarray:
    """``[m, k]`` out-of-fold probabilities of the strongly regularised head (:data:`AUDIT_C_ROWS`) that
    ranks the suspects; cleanlab's flags keep the active-learning head's (:func:`out_of_fold_probs`),
    whose probabilities its per-class thresholds were made for."""
    return out_of_fold_probs(x, y, n_classes, folds=folds, seed=seed, scaler=scaler, C=None)


def knn_agreement(x: np.ndarray, y: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """``[m]`` share of each labeled row's ``k`` nearest labeled rows (cosine on mean-centred
    embeddings ``x [m, d]``, itself excluded) whose label is its own ``y [m]``."""
    if len(y) < 2:
        return np.ones(len(y), np.float32)
    index, valid = _labeled_neighbours(x, k)
    same = (y[np.where(valid, index, 0)] == y[:, None]) & valid
    return (same.sum(1) / np.maximum(valid.sum(1), 1)).astype(np.float32)


def find_issues(y: np.ndarray, probs: np.ndarray, agreement: np.ndarray | None = None,
                rank_probs: np.ndarray | None = None) -> LabelIssues:
    """cleanlab's label issues of ``y [m]`` under out-of-fold ``probs [m, k]``, ranked by the label
    quality: the self-confidence under ``rank_probs`` (default ``probs``; :func:`ranking_probs`),
    blended with ``agreement [m]`` (:func:`knn_agreement`) when given."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise TlkitError(f"label issues need cleanlab, which is not installed: {INSTALL_HINT}") from None
    quality = (probs if rank_probs is None else rank_probs)[np.arange(len(y)), y].astype(np.float32)
    if agreement is not None:
        quality = ((1 - KNN_WEIGHT) * quality + KNN_WEIGHT * agreement).astype(np.float32)
    issues = np.asarray(find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1), np.int64)
    issues = issues[np.argsort(quality[issues], kind="stable")]
    return LabelIssues(probs, quality, probs.argmax(1), issues, np.argsort(quality, kind="stable"))
