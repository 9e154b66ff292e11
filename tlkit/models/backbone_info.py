"""Facts about a backbone's weights, without torch or timm: :class:`WeightsInfo`.

Re-exported by :mod:`tlkit.models.backbones`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from.

    Attributes:
        source: ``file`` | ``package`` | ``cache`` | ``hub`` | ``none`` (random init).
        location: the file path or hub id the weights were read from.
        sha256: hex digest of the weights file, when there is one.
    """

    source: str
    location: str = ""
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "location": self.location, "sha256": self.sha256}


__all__ = ["WeightsInfo"]
