"""Features: images -> embeddings on disk (``features.npy``, ``index.csv``, ``meta.json``).

* :mod:`~tlkit.features.extract` -- ``extract_features``: streamed, resumable, incremental (unchanged
  images keep their rows), one writer per folder.
* :mod:`~tlkit.features.store` -- the folder's format: row files, free space, the final swap,
  ``load_features``; the ``OUT/shards/`` layout (:class:`~tlkit.features.store.Shard`).
* :mod:`~tlkit.features.shards` -- one extraction split over processes or machines, and the merge.
* :mod:`~tlkit.features.warm` -- the warm start: a cached OpenVINO model used without torch or timm.

Built on :mod:`tlkit.data`, :mod:`tlkit.models` and :mod:`tlkit.engines`; active learning, the audit
and the public function ``tlkit.extract(...)`` use it. Importing this package imports none of them.
"""
