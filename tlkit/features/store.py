"""The on-disk format of an extract folder: row files, free-space checks, the final swap, loading.

Layout (what users read)::

    features.npy   float32 [N, D] (float16 with ``--dtype float16``); row i is the image on row i of index.csv
    index.csv      path (relative to the input root), label (when known), fingerprint
    meta.json      settings, count, dim, and ``files``: size/mtime/sha256 of features.npy and the
                   row count/sha256 of index.csv. Written LAST: it seals the set.
    skipped.csv    path, reason; only when some files could not be decoded

While a run works: ``.lock`` (flock, :mod:`tlkit.core.locks`), ``features.partial.npy`` (rows stream in
with ``pwrite``, never through a writable memmap: a full disk is an ``ENOSPC`` error, not SIGBUS;
the file is preallocated with ``posix_fallocate`` so a full disk shows before the first batch),
``progress.json`` (rows done, committed after an fsync of the rows) and ``.next/``.

Final swap: every new file is written into ``.next/`` (``features.npy`` is the partial file
renamed, or compacted when files were skipped), ``.next/meta.json`` last. Then each file is renamed
into place and ``meta.json`` goes last. A crash between renames leaves ``.next/meta.json``; the next
run (under the lock) finishes the renames first (:func:`recover`). A reader in between sees a
``meta.json`` that does not describe ``features.npy``/``index.csv``; :func:`load_features` checks
this and names the file that disagrees, so a mixed set is never returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tlkit.core.errors import TlkitError
from tlkit.core.io import fsync_dir, read_csv, read_json, sha256_file, write_csv, write_json

if TYPE_CHECKING:
    from tlkit.data import ImageSource

log = logging.getLogger(__name__)

FEATURES, INDEX, META, SKIPPED = "features.npy", "index.csv", "meta.json", "skipped.csv"
PARTIAL, PROGRESS, NEXT, LOCK = "features.partial.npy", "progress.json", ".next", ".lock"
MARGIN = 1 << 20  # bytes kept free beyond what a step asks for: meta, filesystem slack
DTYPES = ("float32", "float16")
"""Storage types of features.npy. float16 halves the disk and memory of a pool (a million 1,280-d rows:
2.4 GiB instead of 4.9); its relative rounding error is at most 2^-11 (≈ 0.05 %), and values above
65,504 would overflow, which pooled backbone features never reach (checked when rows are written)."""


SHARDS = "shards"
"""The folder under ``OUT`` that holds the shard folders (:mod:`tlkit.features.shards` runs and merges them)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> "Shard":
        """``"i/N"`` (``0 <= i < N``), else a one-line :class:`TlkitError`."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
        if not m or not int(m[1]) < int(m[2]):
            raise TlkitError(f"--shard {spec}: give i/N with 0 <= i < N, e.g. --shard 0/4 for the first of 4 shards")
        return cls(int(m[1]), int(m[2]))

    def bounds(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this shard among ``n`` records: contiguous, sizes differ by at most 1."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def folder(self, out: str | os.PathLike) -> Path:
        return Path(out) / SHARDS / f"{self.index:05d}-of-{self.count:05d}"

    def source(self, source: ImageSource) -> ImageSource:
        """The records of ``source`` that belong to this shard (an error when there are none)."""
        start, stop = self.bounds(len(source.records))
        if start == stop:
            raise TlkitError(f"shard {self.index}/{self.count} of {len(source.records)} images is empty; "
                             "use fewer shards than images")
        return dataclasses.replace(source, records=tuple(source.records[start:stop]))


def disk_full(path: str | os.PathLike | None, out: Path) -> TlkitError:
    """The one-line error for ENOSPC while writing ``path`` in ``out``."""
    name = Path(path).name if path else "a file"
    return TlkitError(f"disk full while writing {name} in {out}: free space and re-run; finished rows "
                      "are kept and the previous result is unchanged")


def ensure_free(folder: Path, need: int, what: str) -> None:
    """Fail early, with one line, when ``folder``'s filesystem has less than ``need`` + margin free."""
    free = shutil.disk_usage(folder).free
    if free < need + MARGIN:
        raise TlkitError(f"not enough free space in {folder} for {what}: needs {_mib(need + MARGIN)}, "
                         f"{_mib(free)} free; free space (or choose another --out) and re-run")


def set_bytes(n: int, dim: int, dtype: str) -> int:
    """Disk space a new set of ``n`` rows needs: ``features.npy`` in ``dtype`` plus its index.csv (estimated)."""
    return n * dim * storage_dtype(dtype).itemsize + n * 256 + 4096


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def storage_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a :data:`DTYPES` name; TlkitError for anything else."""
    if name not in DTYPES:
        raise TlkitError(f"unknown feature dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return np.dtype("<f4" if name == "float32" else "<f2")


class RowFile:
    """A ``[n, dim]`` float32 (or float16) ``.npy`` file written row by row with ``pwrite`` (no writable memmap).

    ``RowFile.create`` writes the header and preallocates the data; ``RowFile.open`` reopens an
    existing file whose shape and dtype match. ``rows()`` gives a read-only memmap view.
    """

    def __init__(self, path: Path, fd: int, offset: int, n: int, dim: int, dtype: str = "float32"):
        self.path, self.fd, self.offset, self.n, self.dim = path, fd, offset, n, dim
        self.dtype = storage_dtype(dtype)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    @classmethod
    def create(cls, path: Path, n: int, dim: int, dtype: str = "float32") -> "RowFile":
        import io

        buf = io.BytesIO()
        want = storage_dtype(dtype)
        np.lib.format.write_array_header_1_0(buf, {"descr": want.str, "fortran_order": False, "shape": (n, dim)})
        header = buf.getvalue()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, header, 0, path)
            _preallocate(fd, len(header) + n * dim * want.itemsize, path)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, len(header), n, dim, dtype)

    @classmethod
    def open(cls, path: Path, n: int, dim: int, dtype: str = "float32") -> "RowFile | None":
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        want = storage_dtype(dtype)
        if arr.shape != (n, dim) or arr.dtype != want or os.path.getsize(path) != arr.offset + n * dim * want.itemsize:
            return None
        offset = arr.offset
        del arr
        return cls(path, os.open(path, os.O_RDWR), offset, n, dim, dtype)

    def write(self, rows: np.ndarray, feats: np.ndarray) -> None:
        """Store ``feats[k]`` ([m, dim]) at row ``rows[k]``; runs of consecutive rows go in one write.

        Rows that the file's dtype cannot hold (float16 above 65,504: inf) are a TlkitError.
        """
        out = np.ascontiguousarray(feats, dtype=self.dtype)
        if self.dtype.itemsize < 4 and not np.isfinite(out).all() and np.isfinite(np.asarray(feats)).all():
            raise TlkitError(f"features too large for float16 in {self.path.name} (|x| > 65504); extract with --dtype float32")
        rows = np.asarray(rows, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            _pwrite_all(self.fd, out[a:b].tobytes(), self.offset + int(rows[a]) * self.row_bytes, self.path)

    def sync(self) -> None:
        os.fsync(self.fd)

    def rows(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _pwrite_all(fd: int, data: bytes, offset: int, path: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
        view, offset = view[n:], offset + n


def _preallocate(fd: int, size: int, path: Path) -> None:
    """Reserve ``size`` bytes; a failure (no space, a file-size limit) names ``path``."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.ftruncate(fd, size)  # filesystem without fallocate: pwrite still reports ENOSPC
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


# --------------------------------------------------------------------------- final swap


def finalize(out: Path, part: RowFile, keep: np.ndarray, header: Sequence[str], index_rows: list[list[str]],
             write_skipped: Any, meta: dict[str, Any]) -> None:
    """Write the new set into ``out/.next/`` (meta.json last), then :func:`swap_in`.

    ``keep`` lists the partial rows that become ``features.npy`` (all rows when nothing was
    skipped: the partial file is then renamed, not copied). ``write_skipped(path)`` writes
    skipped.csv, or is ``None``. On any error ``out`` keeps its previous result and the partial
    file stays for a re-run.
    """
    nxt = out / NEXT
    shutil.rmtree(nxt, ignore_errors=True)
    nxt.mkdir()
    moved = False
    try:
        write_csv(nxt / INDEX, header, index_rows)
        if write_skipped is not None:
            write_skipped(nxt / SKIPPED)
        part.close()
        if len(keep) == part.n:
            os.replace(part.path, nxt / FEATURES)
            moved = True
        else:
            _compact(part, keep, nxt / FEATURES)
        write_json(nxt / META, {**meta, "count": int(len(keep)), "files": describe(nxt, len(index_rows))})
    except BaseException:
        if moved:
            os.replace(nxt / FEATURES, part.path)
        shutil.rmtree(nxt, ignore_errors=True)
        raise
    swap_in(out)


def _compact(part: RowFile, keep: np.ndarray, dst_path: Path) -> None:
    ensure_free(dst_path.parent, len(keep) * part.row_bytes, "the final features.npy")
    dst = RowFile.create(dst_path, len(keep), part.dim, part.dtype.name)
    try:
        src = part.rows()
        for s in range(0, len(keep), 4096):
            dst.write(np.arange(s, min(s + 4096, len(keep))), src[keep[s : s + 4096]])
        dst.sync()
    finally:
        dst.close()


def describe(folder: Path, rows: int) -> dict[str, Any]:
    """What meta.json records to recognise its own features.npy and index.csv."""
    st = (folder / FEATURES).stat()
    return {
        FEATURES: {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(folder / FEATURES)},
        INDEX: {"rows": rows, "sha256": sha256_file(folder / INDEX)},
    }


def swap_in(out: Path) -> None:
    """Rename ``.next/*`` into ``out`` with meta.json last; drop the partial run's files."""
    nxt = out / NEXT
    meta = read_json(nxt / META)
    for name in (FEATURES, INDEX, SKIPPED):
        if (nxt / name).exists():
            os.replace(nxt / name, out / name)
    if not meta.get("skipped"):
        (out / SKIPPED).unlink(missing_ok=True)
    os.replace(nxt / META, out / META)
    fsync_dir(out)
    for name in (PROGRESS, PARTIAL):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(nxt, ignore_errors=True)


def recover(out: Path) -> None:
    """Finish a final swap that a crash interrupted, or drop an unfinished ``.next/`` (hold the lock)."""
    nxt = out / NEXT
    if (nxt / META).is_file():
        log.info("%s: finishing the final step of an interrupted run", out)
        swap_in(out)
    elif nxt.exists():
        if (nxt / FEATURES).is_file() and not (out / PARTIAL).exists():
            os.replace(nxt / FEATURES, out / PARTIAL)  # the renamed partial file: keep its rows
        shutil.rmtree(nxt, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def load_features(out: str | os.PathLike, *, mmap: bool = True) -> tuple[np.ndarray, list[dict[str, str]], dict]:
    """Read an extract folder: (features [N, D], index rows ``{path[, label]}``, meta).

    With ``mmap`` the features are a read-only memmap in their stored dtype (``meta["dtype"]``:
    float32, or float16 when extracted with ``--dtype float16``); without it, a float32 array.

    The three files are checked against each other (row counts, ``dim``, and the sizes/hashes that
    meta.json records); a mismatch raises a :class:`TlkitError` naming the file that disagrees.
    Folders written before these checks existed load with the row-count checks only.

    Example:
        >>> feats, index, meta = load_features("feats/")   # doctest: +SKIP
        >>> feats.shape == (meta["count"], meta["dim"])     # doctest: +SKIP
        True
    """
    feats, index, meta = read_checked(Path(out))
    rows = [{k: v for k, v in r.items() if k != "fingerprint"} for r in index]
    return (feats if mmap else np.array(feats, dtype=np.float32)), rows, meta


def read_checked(out: Path) -> tuple[np.ndarray, list[dict[str, str]], dict]:
    """(read-only memmap of features.npy, index rows with their fingerprints, meta), checked."""
    if not (out / FEATURES).is_file():
        raise TlkitError(f"{out} is not a tlkit extract folder (no {FEATURES}); run `tlkit extract` first")
    meta = _read_part(out, META, lambda p: read_json(p))
    feats = _read_part(out, FEATURES, lambda p: np.load(p, mmap_mode="r"))
    index = _read_part(out, INDEX, read_csv)
    _check(out, feats, index, meta)
    return feats, index, meta


def _read_part(out: Path, name: str, reader: Any) -> Any:
    try:
        return reader(out / name)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise _mixed(out, name, f"cannot be read ({type(e).__name__})") from None


def _mixed(out: Path, name: str, problem: str) -> TlkitError:
    return TlkitError(f"{out / name} {problem}: {out} holds a damaged or mixed result; re-run the same "
                      f"`tlkit extract` into {out} to rebuild it")


def _check(out: Path, feats: np.ndarray, index: list[dict[str, str]], meta: dict) -> None:
    count, dim = meta.get("count"), meta.get("dim")
    if feats.ndim != 2 or (count is not None and feats.shape[0] != count) or (dim is not None and feats.shape[1] != dim):
        raise _mixed(out, FEATURES, f"has shape {tuple(feats.shape)} but meta.json says {count} x {dim}")
    if len(index) != feats.shape[0]:
        raise _mixed(out, INDEX, f"has {len(index)} rows but features.npy has {feats.shape[0]}")
    files = meta.get("files")
    if not files:
        return
    if sha256_file(out / INDEX) != files[INDEX]["sha256"]:
        raise _mixed(out, INDEX, "is not the index.csv that meta.json describes")
    want, st = files[FEATURES], (out / FEATURES).stat()
    same_stat = (st.st_size, st.st_mtime_ns) == (want["size"], want["mtime_ns"])
    if not same_stat and (st.st_size != want["size"] or sha256_file(out / FEATURES) != want["sha256"]):
        raise _mixed(out, FEATURES, "is not the features.npy that meta.json describes")


def read_previous(out: Path) -> tuple[np.ndarray, list[dict[str, str]], dict] | None:
    """The finished result in ``out`` if there is one and it is consistent, else ``None`` (logged)."""
    if not (out / FEATURES).is_file():
        return None
    try:
        return read_checked(out)
    except TlkitError as e:
        log.warning("not reusing the earlier result: %s", e)
        return None
