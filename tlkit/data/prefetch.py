"""Decode batches in background threads while the caller runs the model: :func:`threaded_batches`.

PIL's JPEG decoder and resize, the tensor conversion, and both inference engines release the GIL,
so one decoding thread overlaps decoding with inference inside one process: no worker processes
to fork or to copy the model into, and no idle core while the other one decodes.

Measured (2 cores, efficientnet_lite0 at 224 px, OpenVINO bf16, 600 JPEG crops, whole `tlkit
extract` runs, machine shared): decoding in the main thread between batches 9-21 img/s in the loop,
one decoding thread 176-195, two threads 173-187. Decoding in the main thread leaves OpenVINO's
worker threads spinning against the decoder; one thread is the default (``TLKIT_DECODE_THREADS``).
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from tlkit.data.loader import Batch

DECODE_THREADS = int(os.environ.get("TLKIT_DECODE_THREADS", "1"))


def inference_batches(dataset: Sequence, *, batch_size: int, workers: int, device) -> Iterable[Batch]:
    """Batches for inference, in order: with ``workers`` processes a DataLoader; with none on a CPU,
    :func:`threaded_batches` (``TLKIT_DECODE_THREADS``, default 1; 0 decodes between batches)."""
    if workers == 0 and str(device).startswith("cpu") and DECODE_THREADS > 0:
        return threaded_batches(dataset, batch_size=batch_size, threads=DECODE_THREADS)
    from tlkit.data.loader import make_loader

    return make_loader(dataset, batch_size=batch_size, workers=workers, device=device)


def threaded_batches(dataset: Sequence, *, batch_size: int, threads: int = 1, ahead: int | None = None,
                     collate: Callable[[list], Any] | None = None) -> Iterator[Batch]:
    """The dataset's items in order as :class:`Batch` es, each batch decoded by one of ``threads`` threads.

    Args:
        dataset: an :class:`~tlkit.data.ImageDataset` (anything whose items :func:`collate_skipping` takes).
        batch_size: items per batch (before failed files are dropped).
        threads: decoding threads (>= 1).
        ahead: batches decoded ahead of the consumer (default ``threads + 1``); bounds memory.
        collate: items -> batch (default :func:`~tlkit.data.collate_skipping`; torch-free:
            :func:`~tlkit.data.numpy_transform.collate_arrays`).

    Example:
        >>> for batch in threaded_batches(ds, batch_size=8):          # doctest: +SKIP
        ...     feats = engine(batch.images)
    """
    if collate is None:
        from tlkit.data.loader import collate_skipping as collate
    ahead = max(1, ahead or threads + 1)
    n = len(dataset)

    def load(start: int) -> Batch:
        return collate([dataset[i] for i in range(start, min(start + batch_size, n))])

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
