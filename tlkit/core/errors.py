"""User-facing errors.

A :class:`TlkitError` is a problem with the user's input or environment that the user can fix.
The CLI prints its message as one line (no traceback) and exits with status 2. Messages name the
bad value and say how to fix it.
"""

from __future__ import annotations

from typing import Iterable


class TlkitError(Exception):
    """An error the user can fix; its message is one line that names the fix."""


def did_you_mean(name: object, choices: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'x'?)"`` for the choices closest to ``name``, or ``""`` when none is close.

    Example:
        >>> f"unknown loss 'focl'{did_you_mean('focl', ['ce', 'focal'])}"
        "unknown loss 'focl' (did you mean 'focal'?)"
    """
    import difflib

    close = difflib.get_close_matches(str(name), list(choices), n=n)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def check_choice(value: str, choices: Iterable[str], option: str) -> str:
    """``value`` when it is one of ``choices``, else a :class:`TlkitError` naming the option and the choices.

    Example:
        >>> check_choice("head", ("head", "finetune"), "--train")
        'head'
    """
    choices = tuple(choices)
    if value not in choices:
        raise TlkitError(f"unknown {option} {value!r}{did_you_mean(value, choices)}; choose "
                         + (" or ".join(choices) if len(choices) == 2 else "one of: " + ", ".join(choices)))
    return value


class WeightsNotFoundError(TlkitError):
    """No source could provide pretrained weights for a backbone."""
