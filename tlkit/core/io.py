"""Atomic file writes and hashing.

Every file tlkit writes goes through :func:`atomic_write`: the bytes go to a temporary file in
the destination folder, are flushed and fsynced, and then ``os.replace`` puts them in place. A
crash or SIGKILL at any point leaves either the old file or the new one, never a torn file. A full
disk (``ENOSPC``) leaves the old file too, and the error names the destination (``filename``).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success, rename it onto ``path``.

    Args:
        path: the final destination.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Example:
        >>> with atomic_write("out/meta.json") as f:
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and not e.filename:
            raise OSError(errno.ENOSPC, e.strerror or os.strerror(errno.ENOSPC), str(path)) from e
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that renames in it survive a power cut (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (header + rows) as text, as :func:`write_csv` writes it.

    Lines end in ``\\n``. A row with a carriage return in a field (a legal file-name character) is
    written with every field quoted: the minimal quoting quotes only ``\\n``, and a bare ``\\r``
    would end the record when read back.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quote_all = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for row in rows:
        (quote_all if any("\r" in str(v) for v in row) else writer).writerow(row)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file (header + rows) atomically."""
    write_text(path, csv_text(header, rows))


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a UTF-8 CSV file with a header into a list of dicts.

    Raises:
        TlkitError: the file is not UTF-8 text (e.g. saved as Windows-1252 by Excel) or not a CSV file.
    """
    from tlkit.core.errors import TlkitError

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise TlkitError(not_utf8_message(path, e)) from None
    except csv.Error as e:
        raise TlkitError(f"{path} is not a readable CSV file ({e}); save it as a UTF-8 CSV file") from None


def not_utf8_message(path: str | os.PathLike, error: UnicodeDecodeError) -> str:
    """One line saying that ``path`` is not UTF-8 and how to fix it.

    Windows-1252 (what Excel writes for "CSV") is not accepted silently: nearly any byte sequence
    decodes as Windows-1252 or Latin-1, so a guess could not be told from a misread file.
    """
    byte = error.object[error.start:error.start + 1].hex()
    how = "(in Excel: Save As > 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8 OLD > NEW`)"
    return (f"{path} is not UTF-8 text (byte 0x{byte} at offset {error.start}); save it as UTF-8"
            + (f" {how}" if Path(path).suffix.lower() == ".csv" else ""))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a NumPy array atomically."""
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_digest(*parts: Any) -> str:
    """A short sha256 over ``parts`` (strings or sequences of strings)."""
    h = hashlib.sha256()
    for p in parts:
        for s in [p] if isinstance(p, str) else p:
            h.update(s.encode())
            h.update(b"\0")
    return h.hexdigest()


def save_png(fig, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Render a matplotlib figure to PNG, write it atomically, and close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def yaml_problem(error: Exception) -> str:
    """One line describing a YAML syntax error, e.g. ``line 2, column 9: expected ',' or ']', but got ':'``."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def check_output_file(path: str | os.PathLike, *, option: str = "--out", example: str = "predictions.csv") -> Path:
    """``path`` as a file tlkit may write: not an existing folder, and no existing file on its way.

    Called before any work starts, so a bad ``--out`` fails at once with one line instead of after the work.

    Raises:
        TlkitError: ``path`` is a folder, or one of its parents is a file.
    """
    from tlkit.core.errors import TlkitError

    path = Path(path)
    if path.is_dir():
        raise TlkitError(f"{option} {path} is a folder; give a file path, e.g. {option} {path / example}")
    _check_parents(path, option)
    return path


def check_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """``path`` as a folder tlkit may create or fill: not an existing file, and no existing file on its way.

    Raises:
        TlkitError: ``path`` or one of its parents is an existing file.
    """
    from tlkit.core.errors import TlkitError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TlkitError(f"{option} {path} is an existing file, not a folder; choose a new folder name for {option}")
    _check_parents(path, option)
    return path


def _check_parents(path: Path, option: str) -> None:
    from tlkit.core.errors import TlkitError

    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise TlkitError(f"{option} {path}: {parent} is a file, not a folder; choose another {option}")
            return
