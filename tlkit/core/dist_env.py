"""Rank info from the ``torchrun`` environment, without torch: :class:`DistInfo`, :func:`env_dist_info`.

:mod:`tlkit.train.distributed` (process groups, reductions) re-exports both; the CLI reads them here so a
single-process ``tlkit extract`` does not import torch to learn it is not under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``local_rank`` picks the GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank info from the torchrun environment (a single process when it is absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


__all__ = ["DistInfo", "env_dist_info"]
