"""Defaults shared by the library and the CLI, in a module that imports nothing heavy (the CLI loads fast)."""

from __future__ import annotations

#: Embedding cosine at or above which `tlkit audit` pairs two images as near-duplicates (with the
#: thumbnail check; see tlkit.audit.duplicates).
AUDIT_DUPLICATE_COSINE = 0.70
