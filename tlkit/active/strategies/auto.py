"""``auto``, the default: coverage while labels are few, uncertainty plus diversity after.

The switch rule (re-tune the constants, e.g. from a simulator; they are read at call time):

* no model yet (``probs`` is None) -> :data:`AUTO_COLD` (``maxherding``);
* labels < :func:`auto_threshold` ``= max(AUTO_MIN_LABELS, AUTO_LABELS_PER_CLASS * n_classes)``
  -> :data:`AUTO_FEW` (``maxherding-entropy``: coverage of where the model is unsure; the model is
  not trustworthy enough yet to pick by uncertainty alone);
* otherwise -> :data:`AUTO_WARM` (``margin+kmeans``): the ``AUTO_CANDIDATE_FACTOR * n`` lowest-margin
  candidates, k-means into ``n`` clusters among them, the most uncertain point of each cluster.

"Labels" counts labeled rows with a known class (``labels >= 0``), or the labeled rows when
``labels`` is None; ``n_classes`` is the width of ``probs``.

A multi-label pool follows the same rule with its own constants (:data:`AUTO_ML_COLD`,
:data:`AUTO_ML_FEW`, :data:`AUTO_ML_WARM`), today MaxHerding in all three phases; a combined plan
(:data:`ENTROPY_KMEANS`) uses the mean binary entropy
(:func:`~tlkit.active.strategies.uncertainty.mean_entropy_scores`) wherever single-label uses
entropy or margin.
"""

from __future__ import annotations

import logging

import numpy as np

from tlkit.active.strategies._common import rank_top
from tlkit.active.strategies._geometry import kmeans, take_rows
from tlkit.active.strategies._registry import PoolView, Selection, get_strategy, register_strategy
from tlkit.active.strategies.uncertainty import margin_scores, mean_entropy_scores

log = logging.getLogger(__name__)

AUTO_LABELS_PER_CLASS = 10
"""Labels per class from which the model's uncertainty alone is trusted.

Tuned with ``benchmarks/tune_auto.py`` on data the README does not report (digits pixels and digits
efficientnet_lite0 at 224 px split by ``random_state`` 100-104, one seed each; photo crops, crop seed
13, 5 seeds), start 10, batches of 10 to 200, with ``AUTO_FEW = "maxherding-entropy"``. AUBC:

==============================  ======  =====  ======
variant                         pixels  lite0  photos
==============================  ======  =====  ======
10 per class (chosen)           0.898   0.846  0.930
6 per class                     0.896   0.846  0.930
3 per class                     0.893   0.844  0.928
previous auto (maxherding, 6)   0.890   0.837  0.919
==============================  ======  =====  ======

With the entropy-weighted coverage the few-labels phase already uses the model, so a longer phase
costs nothing below 100 labels and gains at 200 (pixels 95.7 vs 95.4 %, lite0 93.4 vs 92.7 %).

Checked on wider tuning data (``tune_auto.py --wide``: splits 100-109 x 2 seeds, digits-lite0-96
too, photo crops 13 x 10 seeds), AUBC pixels / lite0 / lite0-96 / photos: 10 per class 0.900 /
0.844 / 0.800 / 0.930; 15 per class 0.900 / 0.844 / 0.801 / 0.929; ``maxherding-entropy`` to 200
labels 0.899 / 0.844 / 0.800 / 0.929. Within noise of each other; 10 is kept.

Over a longer horizon (10-500 labels, ``tune_auto.py --wide --rounds 49``;
``benchmarks/results/tune_auto_horizon500.txt``), AUBC minus this rule's, in points, pixels / lite0 /
lite0-96 / photos: 20 per class -0.08 / -0.01 / +0.03 / +0.05; 30 per class -0.09 / -0.01 / +0.06 /
+0.15; never switching (``maxherding-entropy``) -0.10 / -0.01 / +0.07 / +0.17. The switch gains on
pixels at 210-300 labels and costs photos 0.2-0.4 points at 210-500; no value is ahead everywhere,
so 10 is kept. Which phase wins after the switch varies from split to split (-0.8 to +0.7 points of
AUBC on splits 100-109), so the README's report split can land on either side.
"""
AUTO_MIN_LABELS = 20
"""...and never below this many labels in total."""
AUTO_CANDIDATE_FACTOR = 3
"""margin+kmeans clusters the ``factor * n`` most uncertain candidates.
Tuned with ``benchmarks/tune_auto.py`` on the tuning data above (it only matters from the threshold
on, i.e. at 100-200 labels on digits and 150-200 on photos). AUBC over 10-200 labels:
=====================================  ======  =====  ======
variant                                pixels  lite0  photos
=====================================  ======  =====  ======
factor 3 (chosen)                      0.899   0.848  0.931
factor 10 (before)                     0.898   0.846  0.930
factor 1 (plain margin after 100)      0.898   0.848  0.930
``maxherding-entropy`` to 200 labels   0.897   0.847  0.930
=====================================  ======  =====  ======
"""
MARGIN_KMEANS = "margin+kmeans"
AUTO_COLD = "maxherding"
"""The registered strategy ``auto`` runs before there is a model (cold start: no ``probs``)."""
AUTO_FEW = "maxherding-entropy"
"""The registered strategy ``auto`` runs once there is a model but labels are few (below
:func:`auto_threshold`); may use ``probs``.

Chosen with ``tune_auto.py`` on the tuning data above, AUBC over 10-200 labels of each candidate
used on its own (``herding.HERDING_WEIGHT_FLOOR`` has the weighting study):

====================  ======  =====  ======
AUTO_FEW              pixels  lite0  photos
====================  ======  =====  ======
maxherding-entropy    0.897   0.847  0.930
maxherding            0.887   0.816  0.915
clue                  0.883   0.822  0.893
typiclust (earlier)   0.897   0.816  0.894
====================  ======  =====  ======

At 20-30 labels on pixels it matches scikit-activeml's Clue (75.4 / 82.2 % against 75.8 / 82.4 %),
where plain MaxHerding trailed by 2-3 points; on the two embedding sets it leads both.
"""
AUTO_WARM = MARGIN_KMEANS
""":data:`MARGIN_KMEANS` or a registered strategy: what ``auto`` runs from the threshold on.

Alternatives measured on the tuning data (``benchmarks/results/tune_auto_late.txt``; the designs are
in ``benchmarks/tune_experiments.py``), AUBC minus ``auto``'s, pixels / lite0 / lite0-96 / photos: a
soft hand-over from ``maxherding-entropy`` between 10 and 20 labels per class +0.02 / +0.01 / +0.05
/ -0.00; coverage weighted by margin instead of entropy +0.07 / -0.05 / -0.00 / +0.00. Within noise
(standard errors 0.01-0.14), so the simpler hard switch is kept."""


ENTROPY_KMEANS = "mean-entropy+kmeans"
AUTO_ML_COLD = "maxherding"
"""``auto`` on a multi-label pool without a model."""
AUTO_ML_FEW = "maxherding"
"""``auto`` on a multi-label pool below :func:`auto_threshold` labels: plain coverage (MaxHerding).

Chosen on the tuning mosaics only (``benchmarks/bench_multilabel_al.py --tune``: clothing, splits 100-101 x
seeds 0-1, 10..200 labels; ``benchmarks/results/multilabel_al_tune.txt``), AUBC over mAP in points:
MaxHerding before the threshold 57.42 ± 0.14, ``maxherding-entropy`` 57.00 ± 0.39, ``maxherding-entropy``
to 200 labels 57.23 ± 0.29, random 55.12 ± 0.66. The first three are within noise; the best mean is kept.
"""
AUTO_ML_WARM = "maxherding"
""":data:`ENTROPY_KMEANS` or a registered multi-label strategy: ``auto`` on a multi-label pool from the
threshold on. Plain coverage (MaxHerding) here too, so multi-label ``auto`` is MaxHerding throughout.

Re-tuned on two tuning sets, by a rule fixed before the runs (``benchmarks/results/multilabel_al_retune_plan.md``):
the imbalanced ``clothing`` mosaics and the balanced ``cifar10`` mosaics, splits 100-102 x seeds 0-1, AUBC over
macro mAP in points (``multilabel_al_retune_{cifar10,clothing}.txt``):

=================================================  =======  ========  =====
from the threshold on                              cifar10  clothing  mean
=================================================  =======  ========  =====
``maxherding`` (kept)                              53.66    56.27     54.97
``max-margin-adaptive``                            53.50    56.31     54.91
``maxherding-entropy``                             53.48    56.27     54.88
``mmc``                                            53.45    56.11     54.78
:data:`ENTROPY_KMEANS` (before)                    53.36    56.06     54.71
``random`` (the whole curve)                       52.92    54.24     53.58
=================================================  =======  ========  =====

The earlier choice, :data:`ENTROPY_KMEANS`, was made on ``clothing`` alone, where every uncertainty strategy
beat random; on balanced data the model's uncertainty on whole-image embeddings of multi-label images adds
nothing over coverage at these budgets."""


def auto_threshold(n_classes: int) -> int:
    """Number of labels from which ``auto`` switches from :data:`AUTO_FEW` to :data:`AUTO_WARM`."""
    return max(AUTO_MIN_LABELS, AUTO_LABELS_PER_CLASS * int(n_classes))


def auto_plan(pool: PoolView) -> str:
    """Which behaviour ``auto`` uses on ``pool``: :data:`AUTO_COLD`, :data:`AUTO_FEW` or :data:`AUTO_WARM`."""
    if pool.multilabel:
        if pool.probs is None:
            return AUTO_ML_COLD
        return AUTO_ML_FEW if pool.n_labels < auto_threshold(pool.probs.shape[1]) else AUTO_ML_WARM
    if pool.probs is None:
        return AUTO_COLD
    return AUTO_FEW if pool.n_labels < auto_threshold(pool.probs.shape[1]) else AUTO_WARM


def margin_kmeans(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Top ``AUTO_CANDIDATE_FACTOR * n`` candidates by margin uncertainty, k-means into ``n`` clusters
    among them, the most uncertain of each cluster (then the next most uncertain if clusters
    collapse). Score = margin uncertainty.

    Cost: O(c·k) to score, O(m·n·d) per k-means pass for m = factor·n, O(m·d) memory.
    """
    return _uncertain_kmeans(pool, n, rng, margin_scores)


def entropy_kmeans(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """:func:`margin_kmeans` with the multi-label mean binary entropy as the uncertainty."""
    return _uncertain_kmeans(pool, n, rng, mean_entropy_scores)


def _uncertain_kmeans(pool: PoolView, n: int, rng: np.random.Generator, scores) -> Selection:
    """Top ``AUTO_CANDIDATE_FACTOR * n`` candidates by ``scores(probs)``, the most uncertain of each of ``n`` k-means clusters."""
    cand = pool.candidate_indices
    m = min(cand.size, AUTO_CANDIDATE_FACTOR * n)
    top, s = rank_top(cand, scores(pool.probs[cand]), m, rng)  # best first
    if m == n:
        return Selection(top, s)
    labels, _ = kmeans(take_rows(pool.embeddings, top), n, rng)
    by_cluster = np.lexsort((np.arange(m), labels))  # cluster, then position (= most uncertain first)
    first = np.r_[True, labels[by_cluster][1:] != labels[by_cluster][:-1]]
    chosen = np.zeros(m, dtype=bool)
    chosen[by_cluster[first]] = True
    order = np.r_[np.flatnonzero(chosen), np.flatnonzero(~chosen)][:n]
    return Selection(top[order], s[order])


@register_strategy(
    "auto",
    description="default: maxherding while labels are few, then margin uncertainty + k-means diversity",
    needs=("embeddings",),
    full_dim=True,
)
def auto(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Dispatch on :func:`auto_plan`; ``Selection.strategy`` says which ran, e.g. ``auto(maxherding)``."""
    plan = auto_plan(pool)
    log.info("auto: %d labels, %s classes -> %s", pool.n_labels, pool.n_classes, plan)
    combined = {MARGIN_KMEANS: margin_kmeans, ENTROPY_KMEANS: entropy_kmeans}
    sel = combined[plan](pool, n, rng) if plan in combined else get_strategy(plan).fn(pool, n, rng)
    return Selection(sel.indices, sel.scores, f"auto({plan})")
