"""User-facing errors.

A :class:`TlkitError` is a problem with the user's input or environment that the user can fix.
The CLI prints its message as one line (no traceback) and exits with status 2. Messages name the
bad value and say how to fix it.
"""

from __future__ import annotations


class TlkitError(Exception):
    """An error the user can fix; its message is one line that names the fix."""


class WeightsNotFoundError(TlkitError):
    """No source could provide pretrained weights for a backbone."""
