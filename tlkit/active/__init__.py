"""Active learning: the project folder on disk, labels in and out, rounds, strategies, simulation.

:mod:`~tlkit.active.project` (the folder, validated labels.csv) with :mod:`~tlkit.active.labeltext`,
:mod:`~tlkit.active.poolpath` and :mod:`~tlkit.active.pool` below it; :mod:`~tlkit.active.labelstudio`
and :mod:`~tlkit.active.labels` (files in and out); :mod:`~tlkit.active.round` (one round: embed,
fit a learner, ask a strategy from :mod:`tlkit.active.strategies`); :mod:`~tlkit.active.simulate`
(strategies replayed on labeled data). Importing this package imports none of them.
"""
