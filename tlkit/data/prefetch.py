"""Decode batches in background threads while the caller runs the model: :func:`threaded_batches`.

PIL's JPEG decoder and resize, the tensor conversion, and both inference engines release the GIL,
so one decoding thread overlaps decoding with inference inside one process: no worker processes
to fork or to copy the model into, and no idle core while the other one decodes.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

from tlkit.data.loader import Batch, collate_skipping


def threaded_batches(dataset: Sequence, *, batch_size: int, threads: int = 1, ahead: int | None = None) -> Iterator[Batch]:
    """The dataset's items in order as :class:`Batch` es, each batch decoded by one of ``threads`` threads.

    Args:
        dataset: an :class:`~tlkit.data.ImageDataset` (anything whose items :func:`collate_skipping` takes).
        batch_size: items per batch (before failed files are dropped).
        threads: decoding threads (>= 1).
        ahead: batches decoded ahead of the consumer (default ``threads + 1``); bounds memory.

    Example:
        >>> for batch in threaded_batches(ds, batch_size=8):          # doctest: +SKIP
        ...     feats = engine(batch.images)
    """
    ahead = max(1, ahead or threads + 1)
    n = len(dataset)

    def load(start: int) -> Batch:
        return collate_skipping([dataset[i] for i in range(start, min(start + batch_size, n))])

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="tlkit-decode") as pool:
        starts = iter(range(0, n, batch_size))
        pending: collections.deque = collections.deque()
        try:
            for start in starts:
                pending.append(pool.submit(load, start))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
