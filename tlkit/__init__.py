"""tlkit: transfer learning and active learning for image classifiers, offline out of the box.

The public API (:mod:`tlkit.api`), loaded on first use so that ``import tlkit`` stays light (no
torch, no scikit-learn until a function needs them):

Example:
    >>> import tlkit
    >>> tlkit.extract("photos/", "feats/")                                  # doctest: +SKIP
    >>> tlkit.finetune("photos/", "runs/photos", epochs=3)                  # doctest: +SKIP
    >>> project = tlkit.Project.init("proj", pool="unlabeled/")             # doctest: +SKIP
    >>> picks = project.query(20)                                           # doctest: +SKIP

The library underneath is a stack of packages (``docs/DESIGN.md``): ``core`` < ``data`` < ``models`` <
``engines`` < ``features`` < ``train`` < ``active`` < ``audit``, ``serve``; ``demo``, ``api`` and ``cli``
put them together.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

#: The public names: where each lives.
_API = {
    "extract": "tlkit.api",
    "finetune": "tlkit.api",
    "evaluate": "tlkit.api",
    "predict": "tlkit.api",
    "load_run": "tlkit.api",
    "simulate": "tlkit.api",
    "init_project": "tlkit.api",
    "Project": "tlkit.api",
    "Query": "tlkit.api",
    "Pick": "tlkit.api",
    "Simulation": "tlkit.api",
    "TlkitError": "tlkit.core.errors",
}

__all__ = ["__version__", *_API]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
