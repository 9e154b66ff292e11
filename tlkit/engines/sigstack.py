"""The alternate signal stack that OpenVINO's CPU plugin can leave dangling, and its repair.

Why this exists (measured with OpenVINO 2026.4 on Linux, AMD EPYC with AVX512-BF16, no AMX):
every ``openvino.Core`` that loads the CPU plugin installs an alternate signal stack
(``sigaltstack``, 11,568 bytes of ``mmap``) on the thread that creates it, remembering the one it
replaced. When the plugin is destroyed it restores the remembered stack only if its own is still
the current one, then unmaps its own. Two cores destroyed in the order they were created (A, B;
drop A, drop B) therefore leave the thread's alternate stack pointing at A's unmapped memory.
CPython installs every Python-level signal handler with ``SA_ONSTACK``, so the next such signal
on that thread (SIGCHLD from a DataLoader worker or any subprocess once torch's DataLoader has set
its SIGCHLD handler, SIGINT, ...) makes the kernel write its signal frame to unmapped memory:
the process dies with SIGSEGV, ``si_code=SI_KERNEL``, without any Python traceback. strace shows
``sigaltstack({ss_sp=A}, NULL)`` then ``--- SIGCHLD ---`` then ``--- SIGSEGV {si_code=SI_KERNEL} ---``.
faulthandler and AMX are not involved (``-p no:faulthandler`` crashes the same way; this CPU has no AMX).

tlkit therefore (1) creates one ``Core`` per process and keeps it (:func:`tlkit.engines.openvino_engine.core`),
so it never tears a plugin down out of order, and (2) calls :func:`ensure_signal_stack` after it
builds or checks a model with OpenVINO: when the thread's alternate stack is no longer mapped (another
``Core`` in the same process, e.g. the user's own), a fresh one is installed that is never freed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

SS_DISABLE = 2
MS_ASYNC = 1
_AT_MINSIGSTKSZ = 51
STACK_BYTES = 1 << 16  # 64 KiB: well above SIGSTKSZ + AT_MINSIGSTKSZ (11.5 KB here; ~20 KB with AMX state)
_KEEP: list = []  # stacks installed by ensure_signal_stack: never freed


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:  # not ctypes.util.find_library: it runs a subprocess, whose SIGCHLD is what must not arrive yet
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def current_signal_stack() -> tuple[int, int, bool] | None:
    """``(address, size, enabled)`` of this thread's alternate signal stack; None where unknown (not Linux)."""
    libc = _libc()
    if libc is None:
        return None
    cur = _StackT()
    if libc.sigaltstack(None, ctypes.byref(cur)) != 0:
        return None
    return int(cur.ss_sp or 0), int(cur.ss_size), not (cur.ss_flags & SS_DISABLE)


def _mapped(libc, address: int, size: int) -> bool:
    """Whether every page of ``[address, address + size)`` is mapped (msync fails with ENOMEM otherwise)."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = address - address % page
    libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.msync(ctypes.c_void_p(start), ctypes.c_size_t(address + size - start), MS_ASYNC) == 0


def ensure_signal_stack() -> bool:
    """Replace this thread's alternate signal stack when it points at unmapped memory (see the module notes).

    Returns:
        True when a new stack was installed; False when the current one is fine, disabled, or
        this is not Linux.
    """
    libc = _libc()
    state = current_signal_stack()
    if libc is None or state is None:
        return False
    address, size, enabled = state
    if not enabled or not address or _mapped(libc, address, size):
        return False
    libc.getauxval.restype = ctypes.c_ulong
    nbytes = max(STACK_BYTES, 4 * int(libc.getauxval(_AT_MINSIGSTKSZ)))
    buf = ctypes.create_string_buffer(nbytes)
    new = _StackT(ctypes.cast(buf, ctypes.c_void_p), 0, nbytes)
    if libc.sigaltstack(ctypes.byref(new), None) != 0:
        log.warning("the alternate signal stack points at freed memory and could not be replaced (%s)",
                    os.strerror(ctypes.get_errno()))
        return False
    _KEEP.append(buf)
    log.info("replaced a dangling alternate signal stack (left by an OpenVINO CPU plugin) with a %d-byte one", nbytes)
    return True


__all__ = ["current_signal_stack", "ensure_signal_stack"]
