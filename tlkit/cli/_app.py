"""The typer app, the rich console, and the one place that turns errors into one-line messages.

Each command lives in its own module under ``tlkit/cli/`` and registers itself with
``@app.command(...)``. A command parses options, calls one library function inside
:func:`user_errors`, and prints results with :data:`console`. No logic lives here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Callable, Iterator

import typer
from rich.console import Console
from typer.core import TyperGroup
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tlkit.core.errors import TlkitError

class _Group(TyperGroup):
    """The command group; flags (``--verbose``, ``--help``, ``--x/--no-x``) show no ``<bool>`` type in help.

    typer 0.2x renders a type column for every option, ``<bool>`` for flags that take no value; an
    empty metavar (set here once per command, as it is looked up) leaves that column blank.
    """

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _blank_flag_metavars(cmd, ctx)
        return cmd

    def format_help(self, ctx, formatter) -> None:
        _blank_flag_metavars(self, ctx)
        super().format_help(ctx, formatter)


def _blank_flag_metavars(cmd, ctx) -> None:
    for param in cmd.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


app = typer.Typer(
    cls=_Group,
    name="tlkit",
    help="Transfer learning and active learning for image classifiers, offline out of the box.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# `tlkit --help` groups the commands by the three ways people use tlkit (rich_help_panel)
PANEL_START = "Start here: demo, features"
PANEL_TRAIN = "Fine-tuning"
PANEL_ACTIVE = "Active learning and labeling"
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_USER_ERROR = 2


def setup_logging(verbose: bool = False) -> None:
    """Route library logs (warnings by default, info with --verbose) to stderr through rich."""
    level = logging.INFO if verbose or os.environ.get("TLKIT_VERBOSE") else logging.WARNING
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    root = logging.getLogger("tlkit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def training_process() -> None:
    """Process-wide settings for commands that train (:func:`tlkit.core.runtime.keep_freed_memory`)."""
    from tlkit.core.runtime import keep_freed_memory

    keep_freed_memory()


#: What to do about a file-system error, by errno (any other: the system's own words).
_OS_FIXES = {
    errno.EROFS: "work on a writable copy, or remount it read-write",
    errno.EACCES: "check the owner and mode of the file and its folder, or use another folder",
    errno.EPERM: "check the owner and mode of the file and its folder, or use another folder",
    errno.EFBIG: "a file-size limit (ulimit -f, or the file system's largest file) stopped the write; raise it "
                 "or use another file system",
    errno.EDQUOT: "free space within your quota and re-run",
}


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: what failed, on which file, and what to do."""
    if e.errno == errno.ENOSPC:
        name = os.path.basename(str(e.filename)) if e.filename else "a file"
        return f"disk full while writing {name}: free space and re-run; files already written are unchanged"
    what = (e.strerror or str(e)) + (f": {e.filename}" if e.filename else "")
    fix = _OS_FIXES.get(e.errno)
    return what + (f"; {fix}" if fix else "") + "; files already written are unchanged"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`TlkitError`, a file-system error (full disk, read-only, permissions, size limits)
    or an out-of-memory error as one line; exit non-zero."""
    try:
        yield
    except TlkitError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: finished work is kept; re-run the same command to resume")
        raise typer.Exit(130) from None
    except OSError as e:
        if e.errno is None:  # not a file-system error (e.g. a socket library's own OSError subclass)
            raise
        err_console.print(f"[bold red]error:[/] {escape(os_error_line(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except Exception as e:  # noqa: BLE001 - only out-of-memory gets a friendly line
        if _is_oom(e):
            err_console.print(
                "[bold red]error:[/] out of memory; use a smaller --batch-size "
                "(with gradient accumulation, e.g. --set grad_accum=4, to keep the effective batch)",
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_USER_ERROR) from None
        raise


def _is_oom(e: BaseException) -> bool:
    from tlkit.core.runtime import is_oom  # imports torch: only once something has failed

    return is_oom(e)


def progress_bar(unit: str = "img") -> Progress:
    """A rich progress bar with a rate column (``unit``/s)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=not sys.stderr.isatty() and not os.environ.get("TLKIT_PROGRESS"),
    )


def rate_callback(progress: Progress, task, unit: str = "img") -> Callable[[int], None]:
    """A ``progress(n_done)`` callback for library functions that advances ``task`` and shows a rate."""

    def advance(n: int) -> None:
        progress.advance(task, n)
        t = progress.tasks[task]
        speed = t.finished_speed or t.speed
        progress.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")

    return advance
