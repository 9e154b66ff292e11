"""``tlkit serve``: a Label Studio ML backend that keeps the active-learning loop live.

:class:`~tlkit.serve.backend.Backend` holds the project's model and the loop (no HTTP);
:func:`~tlkit.serve.app.create_app` puts Label Studio's ML backend API in front of it.
"""

from tlkit.serve.backend import Backend, BadRequest, Served

__all__ = ["Backend", "BadRequest", "Served"]
