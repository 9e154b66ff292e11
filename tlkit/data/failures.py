"""Files that could not be decoded: :func:`write_skipped` (``skipped.csv``) and :func:`summarize_failures`.

Failures are ``(dataset index, reason)`` pairs as batches report them (:attr:`tlkit.data.Batch.failures`).
No torch here: the extract fast path (:mod:`tlkit.features.warm`) writes the same files without it.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Sequence

from tlkit.core.io import write_csv
from tlkit.data.sources import ImageRecord


def _unique_failures(failures: Iterable[tuple[int, str]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for index, reason in failures:
        out.setdefault(int(index), reason)
    return dict(sorted(out.items()))


def write_skipped(path: str | os.PathLike, records: Sequence[ImageRecord],
                  failures: Iterable[tuple[int, str]]) -> None:
    """Write the skipped files as CSV ``path,reason`` (``rel`` paths, dataset order), atomically.

    ``failures`` are ``(dataset index, reason)`` pairs, e.g. gathered from :attr:`Batch.failures`;
    an index reported twice (several epochs) is written once.
    """
    rows = [(records[i].rel, reason) for i, reason in _unique_failures(failures).items()]
    write_csv(path, ("path", "reason"), rows)


def summarize_failures(failures: Iterable[tuple[int, str]]) -> str:
    """One line for a warning: ``"3 files skipped (2 truncated, 1 empty file)"``.

    Reasons are grouped by their text before the first ``:`` ("corrupt: ..." -> "corrupt").
    """
    unique = _unique_failures(failures)
    if not unique:
        return "no files skipped"
    kinds = collections.Counter(reason.split(":", 1)[0] for reason in unique.values())
    ranked = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    detail = ", ".join(f"{n} {kind}" for kind, n in ranked)
    noun = "file" if len(unique) == 1 else "files"
    return f"{len(unique)} {noun} skipped ({detail})"


__all__ = ["summarize_failures", "write_skipped"]
