"""``auto``, the default: typicality while labels are few, uncertainty plus diversity after.

The switch rule (re-tune the constants, e.g. from a simulator; they are read at call time):

* no model yet (``probs`` is None) -> ``typiclust``;
* labels < :func:`auto_threshold` ``= max(AUTO_MIN_LABELS, AUTO_LABELS_PER_CLASS * n_classes)``
  -> ``typiclust`` (the model is not trustworthy yet);
* otherwise -> ``margin+kmeans``: the ``AUTO_CANDIDATE_FACTOR * n`` lowest-margin candidates, k-means
  into ``n`` clusters among them, the most uncertain point of each cluster.

"Labels" counts labeled rows with a known class (``labels >= 0``), or the labeled rows when
``labels`` is None; ``n_classes`` is the width of ``probs``.
"""

from __future__ import annotations

import logging

import numpy as np

from tlkit.active.strategies._common import rank_top
from tlkit.active.strategies._geometry import kmeans
from tlkit.active.strategies._registry import PoolView, Selection, get_strategy, register_strategy
from tlkit.active.strategies.uncertainty import margin_scores

log = logging.getLogger(__name__)

AUTO_LABELS_PER_CLASS = 4
"""Labels per class from which the model's uncertainty is trusted.

Chosen with ``tlkit al-simulate`` (``benchmarks/bench_auto.py``; start 10, batches of 10, 5 seeds).
The value is the AUBC of ``auto``, with its worst gap to the best single strategy in brackets:

=========  ======================  ======================  ======================
per class  digits pixels           digits lite0 224 px     15 photo crops
=========  ======================  ======================  ======================
4          **0.8959** (0.3 pt)     0.8195 (0.2 pt)         **0.8998** (0.3 pt)
5          0.8951 (1.1 pt)         **0.8198** (0.0 pt)     0.8996 (0.9 pt)
6          0.8905 (1.3 pt)         0.8102 (1.6 pt)
7          0.8931 (0.4 pt)         0.8112 (1.9 pt)
=========  ======================  ======================  ======================

A gradual hand-over (a growing share of each batch by margin+kmeans between T and 2T labels)
scored lower than the hard switch (pixels AUBC 0.8897-0.8898 vs 0.8951 at 5 per class) and was
dropped.
"""
AUTO_MIN_LABELS = 20
"""...and never below this many labels in total."""
AUTO_CANDIDATE_FACTOR = 10
"""margin+kmeans clusters the ``factor * n`` most uncertain candidates."""
MARGIN_KMEANS = "margin+kmeans"
AUTO_COLD = "maxherding"
"""The registered strategy ``auto`` runs while labels are few (below :func:`auto_threshold`)."""
AUTO_WARM = MARGIN_KMEANS
""":data:`MARGIN_KMEANS` or a registered strategy: what ``auto`` runs from the threshold on."""


def auto_threshold(n_classes: int) -> int:
    """Number of labels from which ``auto`` switches from typiclust to margin+kmeans."""
    return max(AUTO_MIN_LABELS, AUTO_LABELS_PER_CLASS * int(n_classes))


def auto_plan(pool: PoolView) -> str:
    """Which behaviour ``auto`` uses on ``pool``: :data:`AUTO_COLD` or :data:`AUTO_WARM`."""
    if pool.probs is None:
        return AUTO_COLD
    return AUTO_COLD if pool.n_labels < auto_threshold(pool.probs.shape[1]) else AUTO_WARM


def margin_kmeans(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Top ``AUTO_CANDIDATE_FACTOR * n`` candidates by margin uncertainty, k-means into ``n`` clusters
    among them, the most uncertain of each cluster (then the next most uncertain if clusters
    collapse). Score = margin uncertainty.

    Cost: O(c·k) to score, O(m·n·d) per k-means pass for m = factor·n, O(m·d) memory.
    """
    cand = pool.candidate_indices
    m = min(cand.size, AUTO_CANDIDATE_FACTOR * n)
    top, s = rank_top(cand, margin_scores(pool.probs[cand]), m, rng)  # best first
    if m == n:
        return Selection(top, s)
    labels, _ = kmeans(pool.embeddings[top], n, rng)
    by_cluster = np.lexsort((np.arange(m), labels))  # cluster, then position (= most uncertain first)
    first = np.r_[True, labels[by_cluster][1:] != labels[by_cluster][:-1]]
    chosen = np.zeros(m, dtype=bool)
    chosen[by_cluster[first]] = True
    order = np.r_[np.flatnonzero(chosen), np.flatnonzero(~chosen)][:n]
    return Selection(top[order], s[order])


@register_strategy(
    "auto",
    description="default: typiclust while labels are few, then margin uncertainty + k-means diversity",
    needs=("embeddings",),
)
def auto(pool: PoolView, n: int, rng: np.random.Generator) -> Selection:
    """Dispatch on :func:`auto_plan`; ``Selection.strategy`` says which ran, e.g. ``auto(typiclust)``."""
    plan = auto_plan(pool)
    log.info("auto: %d labels, %s classes -> %s", pool.n_labels, pool.n_classes, plan)
    sel = margin_kmeans(pool, n, rng) if plan == MARGIN_KMEANS else get_strategy(plan).fn(pool, n, rng)
    return Selection(sel.indices, sel.scores, f"auto({plan})")
