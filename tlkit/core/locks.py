"""OS-level folder locks: one writer at a time, released by the kernel when the holder dies.

:func:`hold_lock` takes an exclusive, non-blocking ``flock`` on a lock file. A second holder fails
at once with a :class:`~tlkit.core.errors.TlkitError` naming the first (the lock file holds
``"<what> (pid N)"``). Because the lock belongs to the open file description, a process killed
with SIGKILL never leaves the folder locked; the stale text in the file is simply overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from tlkit.core.errors import TlkitError


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str, *, name: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file, e.g. ``out/.lock``.
        what: who holds it, shown to a second caller, e.g. ``"tlkit extract"``.
        name: what is busy in the message (default: the lock file's folder).

    Raises:
        TlkitError: another process holds the lock.

    Example:
        >>> with hold_lock("feats/.lock", "tlkit extract"):   # doctest: +SKIP
        ...     ...  # only this process writes into feats/
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise TlkitError(
                f"{name or path.parent} is busy: {holder} is working on it; wait for it to finish and run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)
