"""Learners of active learning: fit on the labeled pool rows, return probabilities for pool and test.

One interface for ``al-round`` and ``al-simulate``, in both training modes:

- :class:`HeadLearner` (``--train head``): a linear head on frozen embeddings
  (:mod:`tlkit.active.head`); validation accuracy by cross-validation on the labeled rows (``cv``).
- :class:`tlkit.active.finetune.FinetuneLearner` (``--train finetune``): the finetune engine on the
  labeled images; validation accuracy on the run's held-out split (``val``), or on its training
  images when some class has fewer than 3 (``train``, optimistic).

Every learner returns one :class:`LearnerResult`; a round writes its :meth:`LearnerResult.metrics`
into ``metrics.json`` and :meth:`Validation.from_metrics` reads them back, old rounds included.

Shapes: the pool has ``n`` rows, the test set ``m``, the project ``k`` classes in fixed order
(probabilities of classes without a labeled example are 0).

Multi-label: ``y`` is ``[n, k]`` 0/1 (class j present in row i) instead of ``[n]`` class indices;
:class:`HeadLearner` then fits one-vs-rest sigmoid heads (:func:`tlkit.active.head.fit_multilabel_head`),
its probabilities are independent per class, and its validation is the cross-validated macro mAP
(``Validation.metric == "mAP"``).

Example:
    >>> learner = HeadLearner(x, classes, x_test=x_test)                     # doctest: +SKIP
    >>> res = learner.fit(y >= 0, y, seed=0, needs=("probs",))              # doctest: +SKIP
    >>> res.probs.shape, res.validation.method                               # doctest: +SKIP
    ((1000, 10), 'cv')
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tlkit.core.constants import DEFAULT_FINETUNE_SSL, DEFAULT_SSL, FINETUNE_SSL_MODES, SSL_MODES
from tlkit.core.errors import TlkitError, check_choice

if TYPE_CHECKING:
    from tlkit.active.head import LinearHead, Scaler
    from tlkit.active.semi import PoolGraph

TRAIN_MODES = ("head", "finetune")
"""The learners of ``--train`` (``al-round`` also takes ``auto``: :func:`choose_learner`)."""
AUTO = "auto"
FINETUNE_MIN_PER_CLASS = 300
"""``--train auto`` picks a fine-tune round only on a GPU and when every class has at least this many
labels. Chosen on the tuning sets: at 2-10 labels per class a CPU-sized fine-tune round stayed near
chance on CIFAR-10 (``benchmarks/results/finetune_ssl.md``) while the head reached about 50 %; on the
clothing photos at about 300 labels per class the fine-tuning defaults (128 px, 6 epochs) came level
with a linear head on frozen features (issue #28: 0.876 against 0.884 accuracy). Below that the head is
as good for far less time; from there fine-tuning can improve with more labels, the head cannot."""
CV_MARGIN = 0.05
"""``--train auto`` keeps the self-trained head unless the plain head's cross-validated accuracy beats it by
more than this. Chosen on the tuning sets (``benchmarks/bench_learner_choice.py``, CIFAR-10 and clothing,
splits 100-101, 20-100 labels; ``benchmarks/results/learner_choice.md``): self-training had the higher test
accuracy in all 12 rows, and a margin of 0 lost 1.9 points on average (on clothing at 50 labels the plain
head's cv was 0.02 higher and its test accuracy 22 points lower); 0.05 and 0.1 matched always
self-training. With 20-100 labels the cross-validation is too noisy to overrule the tuned default by less."""
VAL_METHODS = {
    "cv": "cross-validated on the labeled images",
    "val": "on the fine-tuning run's held-out split",
    "train": "on the training images (a class has fewer than 3 labels; optimistic)",
}
"""How a validation accuracy was estimated."""


SSL_BY_TRAIN = {"head": (SSL_MODES, DEFAULT_SSL), "finetune": (FINETUNE_SSL_MODES, DEFAULT_FINETUNE_SSL)}
"""``--ssl`` choices and default of each ``--train`` mode (:mod:`tlkit.core.constants`)."""


def check_train_mode(train: str, *, auto: bool = False) -> str:
    """``train`` when it is one of :data:`TRAIN_MODES` (or ``auto`` where ``auto`` is allowed), else a
    :class:`TlkitError` naming the choices."""
    return check_choice(train, TRAIN_MODES + ((AUTO,) if auto else ()), "--train")


def all_ssl_modes() -> tuple[str, ...]:
    """Every ``--ssl`` value of some learner, in order (``self-training``, ``off``, ``fixmatch``)."""
    return tuple(dict.fromkeys(m for modes, _ in SSL_BY_TRAIN.values() for m in modes))


def resolve_ssl(train: str, given: str | None, configured: str | None = None) -> str:
    """The ``--ssl`` a ``train`` learner uses.

    Args:
        given: ``--ssl``; it must be one of ``train``'s choices (:data:`SSL_BY_TRAIN`).
        configured: project.yaml's ``ssl``: ``off`` turns every learner's off, one of ``train``'s choices
            is used, another learner's choice (``self-training`` for finetune rounds, ``fixmatch`` for
            head rounds) means ``train``'s default.

    Example:
        >>> resolve_ssl("finetune", None, "self-training"), resolve_ssl("head", None, "off")
        ('off', 'off')
    """
    modes, default = SSL_BY_TRAIN[check_train_mode(train)]
    if given is not None:
        if given in modes:
            return given
        check_choice(given, all_ssl_modes(), "--ssl")
        other = next(t for t, (m, _) in SSL_BY_TRAIN.items() if given in m and t != train)
        raise TlkitError(f"--ssl {given} is for --train {other} rounds; --train {train} takes "
                         + " or ".join(modes))
    if configured is not None:
        check_choice(configured, all_ssl_modes(), "project.yaml: ssl")
        return configured if configured in modes else default
    return default


@dataclass(frozen=True)
class Validation:
    """A model's validation accuracy and how it was estimated.

    Attributes:
        accuracy: in [0, 1]; ``None`` without a model or an estimate.
        method: a key of :data:`VAL_METHODS` (``cv``, ``val``, ``train``); ``None`` when not estimated.
    """

    accuracy: float | None = None
    method: str | None = None
    metric: str = "accuracy"  # what ``accuracy`` measures: accuracy, or mAP (macro) for multi-label

    def to_metrics(self) -> dict[str, Any]:
        """The ``metrics.json`` keys: ``val_accuracy``, ``val_method``, and for ``cv`` also
        ``val_accuracy_cv``, the key head rounds wrote before ``val_method`` existed; ``val_metric``
        when the value is not an accuracy (multi-label: ``mAP``)."""
        out: dict[str, Any] = {"val_accuracy": self.accuracy, "val_method": self.method}
        if self.method == "cv":
            out["val_accuracy_cv"] = self.accuracy
        if self.metric != "accuracy":
            out["val_metric"] = self.metric
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> "Validation":
        """Read a round's ``metrics.json``, whichever version wrote it.

        Before ``val_method``, head rounds wrote ``val_accuracy_cv`` and finetune rounds
        ``val_accuracy`` (with ``val_on_train``).
        """
        if "val_method" in metrics:
            return cls(metrics.get("val_accuracy"), metrics["val_method"], metrics.get("val_metric") or "accuracy")
        if "val_accuracy_cv" in metrics:
            return cls(metrics["val_accuracy_cv"], "cv")
        if "val_accuracy" in metrics:
            return cls(metrics["val_accuracy"], "train" if metrics.get("val_on_train") else "val")
        return cls()


@dataclass(frozen=True, eq=False)
class LearnerResult:
    """What a learner's :meth:`Learner.fit` returns.

    Attributes:
        probs: ``[n, k]`` pool probabilities; ``None`` without a model (fewer than two classes labeled).
        mc_probs: ``[n, k, T]`` stochastic predictions for BALD, when asked for and the learner has them.
        test_probs: ``[m, k]`` test-set probabilities, when the learner has a test set and a model.
        validation: the model's validation accuracy and how it was estimated.
        train_s: seconds to fit and score.
        head: the fitted linear head (head mode; ``None`` otherwise).
        run: the fine-tuning run folder, when the learner keeps it (finetune mode with ``run_dir``).
        notes: learner-specific entries for the round's ``metrics.json`` (e.g. ``warm_start``).
    """

    probs: np.ndarray | None
    validation: Validation
    train_s: float
    mc_probs: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    head: "LinearHead | None" = None
    run: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """The round's ``metrics.json`` entries: ``train_s``, the validation keys, the notes."""
        return {"train_s": round(self.train_s, 3), **self.validation.to_metrics(), **self.notes}


class Learner(Protocol):
    """Fits on the labeled rows of a pool it was built over, then scores the pool (and a test set)."""

    def fit(self, labeled: np.ndarray, y: np.ndarray, *, seed: int, needs: tuple[str, ...] = ()) -> LearnerResult:
        """Fit on the rows where ``labeled`` ([n] bool) is set, with classes ``y`` ([n] int, read there only;
        multi-label: ``[n, k]`` 0/1).

        ``needs`` are the strategy's inputs (:class:`tlkit.active.strategies.StrategyInfo`);
        ``"mc_probs"`` asks for stochastic predictions.
        """
        ...


@dataclass(eq=False)
class HeadLearner:
    """Head mode: a linear head on frozen embeddings (:mod:`tlkit.active.head`), by default
    self-trained on the unlabeled pool too (:mod:`tlkit.active.semi`).

    Args:
        x: ``[n, d]`` pool embeddings; the feature scaler is fitted on all of them, once.
        classes: the ``k`` class names.
        x_test: ``[m, d]`` test embeddings, scored into ``test_probs`` when given.
        validate: estimate the accuracy by 5-fold cross-validation on the labeled rows (five more
            fits, each with its own self-training; the simulator, which measures on its test set,
            turns it off).
        ssl: ``self-training`` (pseudo-labels from the pool) or ``off`` (the labeled rows alone).
    """

    x: np.ndarray
    classes: tuple[str, ...]
    x_test: np.ndarray | None = None
    validate: bool = True
    ssl: str = DEFAULT_SSL
    scaler_: "Scaler | None" = field(default=None, init=False, repr=False)
    graph_: "PoolGraph | None" = field(default=None, init=False, repr=False)

    def fit(self, labeled: np.ndarray, y: np.ndarray, *, seed: int, needs: tuple[str, ...] = ()) -> LearnerResult:
        """See :meth:`Learner.fit`; ``mc_probs`` come from a bootstrap ensemble of 8 plain heads.
        A ``[n, k]`` ``y`` fits the multi-label head (:meth:`_fit_multilabel`)."""
        from tlkit.active import head as heads
        from tlkit.active.semi import check_ssl

        check_ssl(self.ssl)
        t = time.perf_counter()
        if self.scaler_ is None:
            self.scaler_ = heads.Scaler.fit(self.x)
        if np.ndim(y) == 2:
            return self._fit_multilabel(labeled, y, seed, t)
        xl, yl, classes = self.x[labeled], y[labeled], tuple(self.classes)
        method = "cv" if self.validate else None
        notes: dict[str, Any] = {"learner": "head" if self.ssl == "off" else f"head+{self.ssl}"}
        head = self._fit(labeled, y, seed, notes)
        if head is None:
            return LearnerResult(None, Validation(None, method), time.perf_counter() - t, notes=notes)
        mc = None
        if "mc_probs" in needs:
            mc = heads.ensemble_probs(xl, yl, self.x, classes, scaler=self.scaler_, seed=seed)
        test = head.predict_proba(self.x_test) if self.x_test is not None else None
        cv = self._cross_val(labeled, y, seed) if self.validate else None
        return LearnerResult(head.predict_proba(self.x), Validation(cv, method), time.perf_counter() - t,
                             mc_probs=mc, test_probs=test, head=head, notes=notes)

    def _fit_multilabel(self, labeled: np.ndarray, Y: np.ndarray, seed: int, t: float) -> LearnerResult:
        """One-vs-rest sigmoid heads on the labeled rows. Self-training is single-label
        (:mod:`tlkit.active.semi`), so a multi-label head learns from the labeled rows alone; the notes say so."""
        from tlkit.active import head as heads

        notes: dict[str, Any] = {"learner": "head"}
        if self.ssl != "off":
            notes["ssl"] = "off (multi-label)"
        method = "cv" if self.validate else None
        xl, yl, classes = self.x[labeled], Y[labeled], tuple(self.classes)
        head = heads.fit_multilabel_head(xl, yl, classes, scaler=self.scaler_, seed=seed)
        if head is None:
            return LearnerResult(None, Validation(None, method, "mAP"), time.perf_counter() - t, notes=notes)
        cv = None
        if self.validate:
            oof = heads.cross_val_multilabel_proba(xl, yl, classes, scaler=self.scaler_, seed=seed)
            cv = heads.mean_average_precision(yl, oof) if oof is not None else None
        test = head.predict_proba(self.x_test) if self.x_test is not None else None
        return LearnerResult(head.predict_proba(self.x), Validation(cv, method, "mAP"), time.perf_counter() - t,
                             test_probs=test, head=head, notes=notes)

    def _fit(self, labeled: np.ndarray, y: np.ndarray, seed: int, notes: dict[str, Any] | None = None
             ) -> "LinearHead | None":
        """The head on the rows where ``labeled`` is set, self-trained on the pool unless ``ssl`` is off."""
        from tlkit.active import head as heads
        from tlkit.active import semi

        head = heads.fit_head(self.x[labeled], y[labeled], tuple(self.classes), scaler=self.scaler_, seed=seed)
        if head is None or self.ssl == "off":
            return head
        cfg = semi.SelfTraining()
        graph = self._graph(labeled, cfg, seed)
        rows, pseudo, weight = semi.pseudo_labels(graph, head.predict_proba(self.x[graph.rows]), labeled, y, cfg)
        if notes is not None:
            notes["pseudo_labels"] = int(rows.size)
        if rows.size == 0:
            return head
        x = np.concatenate([np.asarray(self.x[labeled], np.float32), np.asarray(self.x[rows], np.float32)])
        w = np.concatenate([np.ones(int(labeled.sum()), np.float32), weight])
        return heads.fit_head(x, np.concatenate([y[labeled], pseudo]), tuple(self.classes), scaler=self.scaler_,
                              seed=seed, sample_weight=w)

    def _graph(self, labeled: np.ndarray, cfg, seed: int) -> "PoolGraph":
        """The pool graph, rebuilt only when a labeled row is not in it (never when it covers the whole
        pool; on a big pool once per round, since cross-validation folds label a subset)."""
        from tlkit.active import semi

        if self.graph_ is not None and np.isin(np.flatnonzero(labeled), self.graph_.rows).all():
            return self.graph_
        rows = semi.graph_rows(len(self.x), labeled, cfg.max_points, np.random.default_rng(seed))
        self.graph_ = semi.PoolGraph.build(self.x, rows, cfg.neighbours)
        return self.graph_

    def _cross_val(self, labeled: np.ndarray, y: np.ndarray, seed: int) -> float | None:
        """Stratified k-fold accuracy on the labeled rows, each fold's model fitted as :meth:`_fit` fits."""
        from tlkit.active import head as heads

        lab = np.flatnonzero(labeled)

        def fit_fold(train: np.ndarray):
            mask = np.zeros(len(self.x), bool)
            mask[lab[train]] = True
            return self._fit(mask, y, seed)

        return heads.cross_val_accuracy(self.x[labeled], y[labeled], tuple(self.classes), scaler=self.scaler_,
                                        seed=seed, fit=fit_fold)


__all__ = ["SSL_BY_TRAIN", "TRAIN_MODES", "VAL_METHODS", "HeadLearner", "all_ssl_modes", "resolve_ssl", "Learner", "LearnerResult", "Validation", "check_train_mode"]


# --------------------------------------------------------------------------- the learner choice (--train auto)


@dataclass(frozen=True)
class Candidate:
    """One learner ``--train auto`` weighed.

    Attributes:
        learner: ``head``, ``head+self-training`` or ``finetune``.
        cv_accuracy: cross-validated accuracy on the labeled images; ``None`` when not fitted.
        seconds: what its fit (with the cross-validation) cost; ``None`` when not fitted.
        note: why it was not fitted or not eligible (empty otherwise).
    """

    learner: str
    cv_accuracy: float | None = None
    seconds: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"learner": self.learner, "cv_accuracy": self.cv_accuracy,
                "seconds": None if self.seconds is None else round(self.seconds, 3), "note": self.note}


@dataclass(frozen=True)
class LearnerChoice:
    """What ``--train auto`` chose and why (``metrics.json``: ``learner_choice``).

    Attributes:
        train: the chosen ``--train`` mode; ssl: its ``--ssl``; chosen: the learner's name.
        candidates: every learner weighed; reason: one line.
    """

    train: str
    ssl: str
    chosen: str
    candidates: tuple[Candidate, ...]
    reason: str

    def to_metrics(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "train": self.train, "ssl": self.ssl, "reason": self.reason,
                "candidates": [c.to_dict() for c in self.candidates]}


def finetune_rule(min_per_class: int, gpu: bool) -> tuple[bool, str]:
    """``(finetune, why)``: the :data:`FINETUNE_MIN_PER_CLASS` rule of ``--train auto``."""
    if not gpu:
        return False, "no GPU: a fine-tune round would cost minutes to hours per round on a CPU"
    if min_per_class < FINETUNE_MIN_PER_CLASS:
        return False, (f"{min_per_class} labels in the smallest class < {FINETUNE_MIN_PER_CLASS}: on the tuning sets "
                       "the head was as good or better there")
    return True, f"a GPU and >= {FINETUNE_MIN_PER_CLASS} labels in every class (the smallest has {min_per_class})"


def choose_head(fits: dict[str, LearnerResult], margin: float = CV_MARGIN) -> tuple[str, str]:
    """``(ssl, reason)`` between the fitted heads ``{"off": ..., "self-training": ...}`` by their
    cross-validated accuracy: self-training unless the plain head beats it by more than ``margin``."""
    off, st = fits["off"].validation.accuracy, fits["self-training"].validation.accuracy
    if off is None or st is None:
        return DEFAULT_SSL, "too few labels to cross-validate: the default, self-training"
    if off > st + margin:
        return "off", f"cv: plain head {off:.3f} > self-trained {st:.3f} + {margin:g}"
    return "self-training", f"cv: self-trained {st:.3f}, plain head {off:.3f} (not > +{margin:g})"
