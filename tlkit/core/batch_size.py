"""``--batch-size auto``: the largest power of two that fits on the GPU, found by probing.

On CUDA, :func:`largest_fitting` runs a real pass (forward for inference, forward + backward for
training) at growing powers of two and backs off on out-of-memory, as Lightning's batch-size finder
(``mode="power"``) and Hugging Face's ``auto_find_batch_size`` do; the CUDA cache is emptied between
probes. On a CPU ``auto`` keeps tlkit's fixed defaults (8 images per inference pass, 32 per training
step): small batches are fastest there and the figures stay as they were.

Example:
    >>> import torch
    >>> def probe(b):                      # a pass that runs out of memory above 48 images
    ...     if b > 48:
    ...         raise torch.OutOfMemoryError("CUDA out of memory")
    >>> largest_fitting(probe, cap=1024, start=8).size
    32
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tlkit.core.errors import TlkitError

if TYPE_CHECKING:  # torch is imported on use: extract's warm start parses --batch-size without it
    import torch

log = logging.getLogger(__name__)

AUTO = "auto"
#: The largest batch ``auto`` probes: past it the throughput of the models tlkit runs no longer grows,
#: and a host batch of 1024 float32 images at 224 px already takes 616 MB.
MAX_AUTO_BATCH = 1024
#: The first size probed (then doubled while it fits, halved while it does not).
START = 32
BATCH_HELP = "auto | N. auto: on CUDA the largest power of two that fits (probed), on a CPU"


@dataclass(frozen=True)
class BatchChoice:
    """A batch size and how it was chosen.

    Attributes:
        size: images per pass.
        how: ``"given"`` (a number was set), ``"cpu default"`` or ``"probed"``.
        tried: ``((size, fits), ...)`` in the order probed (empty unless probed).
    """

    size: int
    how: str
    tried: tuple[tuple[int, bool], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON for meta.json and the run's config: ``{"size", "how"(, "tried": [[size, fits], ...])}``."""
        d: dict[str, Any] = {"size": self.size, "how": self.how}
        if self.tried:
            d["tried"] = [list(t) for t in self.tried]
        return d


def parse_batch_size(value: int | str | None) -> int | None:
    """``"auto"`` or ``None`` -> ``None`` (choose automatically); ``"64"`` or ``64`` -> 64.

    Raises:
        TlkitError: anything else, or a number below 1.

    Example:
        >>> parse_batch_size("auto"), parse_batch_size("64")
        (None, 64)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1 or str(value).strip() != str(size):
        raise TlkitError(f"--batch-size {value!r}: give a whole number >= 1 or auto")
    return size


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fits(probe: Callable[[int], Any], size: int) -> bool:
    """Run ``probe(size)``; ``False`` on out-of-memory (memory released after it), other errors raise."""
    from tlkit.core.runtime import is_oom

    oom = False
    try:
        probe(size)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is swallowed
        if not is_oom(e):
            raise
        oom = True  # the traceback (and the tensors its frames hold) is dropped on leaving the block
    _release_memory()
    log.debug("batch %d: %s", size, "out of memory" if oom else "fits")
    return not oom


def largest_fitting(probe: Callable[[int], Any], *, cap: int, start: int = START, what: str = "a batch") -> BatchChoice:
    """The largest power of two ``<= cap`` for which ``probe`` runs without running out of memory.

    Starts at ``start`` (a power of two, lowered to the cap), doubles while the probe fits, halves
    while it does not. Assumes that what fits at ``b`` fits below ``b``.

    Args:
        probe: runs one real pass at the given batch size; raises torch's out-of-memory error (or a
            RuntimeError saying "out of memory", :func:`tlkit.core.runtime.is_oom`) when it does not fit.
        cap: the largest size worth trying (e.g. the number of images).
        start: the first size tried.
        what: names the pass in the error when not even one image fits.

    Raises:
        TlkitError: not even batch 1 fits.
    """
    top = min(_power_of_two_at_most(cap), MAX_AUTO_BATCH)
    size = min(_power_of_two_at_most(start), top)
    tried: list[tuple[int, bool]] = []

    def attempt(b: int) -> bool:
        tried.append((b, _fits(probe, b)))
        return tried[-1][1]

    if attempt(size):
        while size < top and attempt(size * 2):
            size *= 2
    else:
        while size > 1:
            size //= 2
            if attempt(size):
                break
        else:
            raise TlkitError(f"{what} of 1 image runs out of GPU memory; lower --image-size, use --precision bf16, "
                             "or run on the CPU with --device cpu")
    log.info("batch size %d: the largest power of two that fits (tried %s)", size,
             ", ".join(f"{b}{'' if ok else ' (out of memory)'}" for b, ok in tried))
    return BatchChoice(size, "probed", tuple(tried))


def inference_batch(given: int | str | None, device: torch.device, forward: Callable[[torch.Tensor], Any],
                    input_size: tuple[int, int, int], n_images: int) -> BatchChoice:
    """The batch for an inference pass of ``forward`` over ``n_images`` images of ``input_size`` ``(C, H, W)``.

    A number is kept; ``auto`` (or ``None``) is :func:`tlkit.core.runtime.inference_batch_size` on a CPU
    (8) and the largest power of two that fits (up to the next one above ``n_images``) on CUDA.
    """
    import torch

    from tlkit.core.runtime import inference_batch_size

    size = parse_batch_size(given)
    if size is not None:
        return BatchChoice(size, "given")
    if device.type != "cuda":
        return BatchChoice(inference_batch_size(device), "cpu default")

    def probe(b: int) -> None:
        forward(torch.zeros((b, *input_size), device=device))

    cap = 1 << max(0, int(n_images) - 1).bit_length()  # the next power of two >= n_images
    return largest_fitting(probe, cap=cap, what="an inference batch")


__all__ = ["AUTO", "BATCH_HELP", "BatchChoice", "MAX_AUTO_BATCH", "inference_batch", "largest_fitting",
           "parse_batch_size"]
