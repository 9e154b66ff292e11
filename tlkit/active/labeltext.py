"""The text of a label: a class name, a set of classes joined by ``;``, or the word for "unlabelable".

What labels.csv, Label Studio's files and every label importer agree on, below all of them
(:mod:`tlkit.active.project`, :mod:`tlkit.active.labelstudio`, :mod:`tlkit.active.labels`).

Example:
    >>> join_labels(["dog", " cat", "dog"]), split_labels("cat;dog")
    ('cat;dog', ('cat', 'dog'))
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

from tlkit.core.constants import LABEL_DELIM
from tlkit.core.errors import TlkitError

SKIP_LABEL = "__skip__"
#: Label words that mean "unlabelable" in label files (any case); no class may be named one of them.
SKIP_WORDS = frozenset({SKIP_LABEL, "skip", "unlabelable"})


def join_labels(names: Iterable[str]) -> str:
    """The canonical text of a label set: the distinct names, stripped, sorted, joined by ``;`` ("" = none).

    Two annotations agree when their texts are equal; labels.csv stores this text.

    Example:
        >>> join_labels(["dog", " cat", "dog"])
        'cat;dog'
    """
    return LABEL_DELIM.join(sorted({n.strip() for n in names if n.strip()}))


def split_labels(text: str) -> tuple[str, ...]:
    """The classes of a label set's text (:func:`join_labels`); ``""`` is the empty set."""
    return tuple(n.strip() for n in text.split(LABEL_DELIM) if n.strip())


def check_class_names(names: Iterable[str], where: str, *, multilabel: bool = False) -> None:
    """Refuse class names that labels.csv, Label Studio or a terminal could not carry unchanged.

    A class name may not be empty, hold control or line-separator characters (newline, tab, U+2028,
    ...), or be a word that means "unlabelable" (:data:`SKIP_WORDS`, any case); in a multi-label
    project it may not hold :data:`~tlkit.core.constants.LABEL_DELIM` (``;``), which separates the classes of an image.

    Raises:
        TlkitError: naming the first bad name and the fix.
    """
    for name in names:
        if not name.strip():
            raise TlkitError(f"{where}: a class name is empty; remove it")
        bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            raise TlkitError(f"{where}: class name {name!r} holds the control character U+{ord(bad):04X}; "
                             "rename the class without it")
        if multilabel and LABEL_DELIM in name:
            raise TlkitError(f"{where}: class name {name!r} holds {LABEL_DELIM!r}, which separates the classes of "
                             "an image in a multi-label project; rename the class without it")
        if name.strip().lower() in SKIP_WORDS:
            raise TlkitError(f"{where}: {name.strip()!r} is reserved (a label meaning 'unlabelable'); "
                             "name the class something else")


__all__ = ["SKIP_LABEL", "SKIP_WORDS", "check_class_names", "join_labels", "split_labels"]
