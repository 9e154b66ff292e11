"""FixMatch consistency training (Sohn et al. 2020): unlabeled images teach the network too.

For every labeled batch of ``B`` images the loop also draws ``mu x B`` unlabeled images, each in two
views made from one decoded image:

- a **weak** view: the run's own label-preserving augmentation (random-resized crop of at least
  ``scale_min`` of the image, the run's flips). The model's prediction on it, under ``no_grad``, is a
  pseudo-label when its top probability is at least ``threshold``;
- a **strong** view: the weak view's crop and flips, then RandAugment (timm's ``rand-m9-mstd0.5`` by
  default) and random erasing (cutout). The model is trained to predict the pseudo-label on it.

The unlabeled term is ``weight x mean over the mu x B images of mask x CE(strong logits, pseudo-label)``
(the mean runs over every unlabeled image, masked ones included, as in the paper), added to the
labeled loss. Labeled and strong images go through the model in one forward pass (BatchNorm sees both),
the weak ones in a separate ``no_grad`` pass, which saves the weak half's backward.

An epoch becomes ``max(labeled batches, ceil(min(per_epoch, n_unlabeled) / (mu x B)))`` steps; the
labeled loader is cycled to that length (as FixMatch cycles its labeled set), each cycle reshuffled.

How to use: pass ``unlabeled=UnlabeledSet(paths)`` to :func:`tlkit.train.fit`; the ``fixmatch_*`` keys
of :class:`~tlkit.train.config.TrainConfig` set the hyperparameters (:class:`ConsistencyConfig`).

Example:
    >>> from tlkit.train import fit, make_config                                      # doctest: +SKIP
    >>> from tlkit.train.consistency import UnlabeledSet                             # doctest: +SKIP
    >>> fit(make_config(epochs=5), data="train", out="runs/fm",
    ...     unlabeled=UnlabeledSet.from_folder("pool"))                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsistencyConfig:
    """The FixMatch hyperparameters of a run (the ``fixmatch_*`` keys of ``TrainConfig``).

    Attributes:
        threshold: a weak view's top probability must reach this for its pseudo-label to count (0.95 in
            the paper).
        mu: unlabeled images per labeled image in a step (7 in the paper; see ``TrainConfig``).
        weight: lambda_u, the unlabeled term's weight (1 in the paper).
        augment: timm ``auto_augment`` spec of the strong view.
        reprob: random-erasing (cutout) probability of the strong view.
        per_epoch: unlabeled images drawn per epoch at most (``None``: all of them once).
    """

    threshold: float = 0.95
    mu: int = 2
    weight: float = 1.0
    augment: str = "rand-m9-mstd0.5"
    reprob: float = 1.0
    per_epoch: int | None = None

    @classmethod
    def from_train(cls, cfg: Any) -> "ConsistencyConfig":
        """The ``fixmatch_*`` values of a :class:`~tlkit.train.config.TrainConfig`."""
        return cls(cfg.fixmatch_threshold, cfg.fixmatch_mu, cfg.fixmatch_weight, cfg.fixmatch_augment,
                   cfg.fixmatch_reprob, cfg.fixmatch_per_epoch)


@dataclass(frozen=True)
class UnlabeledSet:
    """Unlabeled training images for :func:`tlkit.train.fit`.

    Attributes:
        paths: the image files.
        truth: their true class names where known (a simulation), ``None`` elsewhere; used only to
            measure how often the pseudo-labels are right, never to train.
    """

    paths: tuple[Path, ...]
    truth: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if not self.paths:
            raise TlkitError("the unlabeled set is empty; give a folder with images, or train without it")
        if self.truth is not None and len(self.truth) != len(self.paths):
            raise ValueError("truth needs one entry per path")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "UnlabeledSet":
        """Every image under ``folder`` (subfolders included; any folder names are ignored, not read as labels)."""
        from tlkit.data import scan_images

        return cls(tuple(r.path for r in scan_images(folder, labeled=False).records))

    def targets(self, class_to_idx: Mapping[str, int]) -> list[int]:
        """``[n]`` true class index in the run's order, ``-1`` when unknown or not one of the run's classes."""
        if self.truth is None:
            return [-1] * len(self.paths)
        return [class_to_idx.get(t, -1) if t is not None else -1 for t in self.truth]


class TwoViews:
    """PIL image -> ``(weak [3, H, W], strong [3, H, W])``: the same crop and flips, then the strong
    view's extra augmentation (see the module docstring).

    Args:
        geometric: PIL -> PIL crop and flips (applied once, shared by both views).
        finish: PIL -> normalised tensor (the weak view).
        strong: PIL -> PIL colour/shape operations (RandAugment), before ``finish``.
        erase: tensor -> tensor random erasing after ``finish``, or ``None``.
    """

    def __init__(self, geometric: Callable, finish: Callable, strong: Callable | None, erase: Callable | None):
        self.geometric, self.finish, self.strong, self.erase = geometric, finish, strong, erase

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.geometric(img)
        weak = self.finish(img)
        strong = self.finish(self.strong(img) if self.strong is not None else img)
        if self.erase is not None:
            strong = self.erase(strong)
        return weak, strong


def two_views(data_config: Mapping[str, Any], cfg: ConsistencyConfig, *, scale_min: float, hflip: float,
              vflip: float) -> TwoViews:
    """The weak/strong transform pair of a run at its data config (mean, std, input size).

    Built from timm's training transform (``separate=True`` gives its crop/flip, colour and
    normalise/erase stages): the crop and flips are the run's own, the strong stage adds ``cfg.augment``
    and erasing with probability ``cfg.reprob``.
    """
    from tlkit.data import build_transform

    try:
        stages = build_transform(data_config, training=True, separate=True, scale=(scale_min, 1.0), hflip=hflip,
                                 vflip=vflip, auto_augment=cfg.augment, re_prob=cfg.reprob, color_jitter=0.0)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        from tlkit.models.weights import one_line

        raise TlkitError(f"fixmatch_augment={cfg.augment!r}: timm cannot build it ({one_line(e)}); use e.g. "
                         "rand-m9-mstd0.5 or trivialaugment") from None
    geometric, strong, final = stages
    erase = None
    steps = list(final.transforms)
    if cfg.reprob > 0 and type(steps[-1]).__name__ == "RandomErasing":
        erase = steps.pop()
    from torchvision import transforms as T

    return TwoViews(geometric, T.Compose(steps), strong if cfg.augment else None, erase)


class TwoViewDataset(torch.utils.data.Dataset):
    """Unlabeled files -> ``(weak | None, strong | None, target, index, reason | None)``; a bad file never
    raises (it is dropped from the batch, as :class:`tlkit.data.ImageDataset` does)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], views: TwoViews, size_hint: int | None = None):
        self.paths, self.targets, self.views, self.size_hint = tuple(paths), list(targets), views, size_hint

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from tlkit.data.decode import ImageDecodeError, load_image

        try:
            img = load_image(self.paths[i], size_hint=self.size_hint)
        except ImageDecodeError as e:
            return None, None, self.targets[i], i, e.reason
        weak, strong = self.views(img)
        return weak, strong, self.targets[i], i, None


class UnlabeledBatch(NamedTuple):
    """``weak``/``strong``: ``[U, 3, H, W]`` (``None`` when every image failed); ``targets``: ``[U]`` true
    class or -1; ``failures``: ``[(index, reason)]``."""

    weak: torch.Tensor | None
    strong: torch.Tensor | None
    targets: torch.Tensor
    failures: list[tuple[int, str]]


def collate_views(items) -> UnlabeledBatch:
    good = [it for it in items if it[0] is not None]
    failures = [(int(it[3]), str(it[4])) for it in items if it[0] is None]
    if not good:
        return UnlabeledBatch(None, None, torch.zeros(0, dtype=torch.long), failures)
    return UnlabeledBatch(torch.stack([it[0] for it in good]), torch.stack([it[1] for it in good]),
                          torch.tensor([it[2] for it in good], dtype=torch.long), failures)


class ConsistencyTerm(NamedTuple):
    """One step's unlabeled term. ``loss``: 0-d (weight applied); ``mask``: ``[U]`` bool, pseudo-label used;
    ``pseudo``: ``[U]`` pseudo-labels (argmax of the weak view)."""

    loss: torch.Tensor
    mask: torch.Tensor
    pseudo: torch.Tensor


def consistency_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, *, threshold: float,
                     weight: float = 1.0) -> ConsistencyTerm:
    """FixMatch's unlabeled loss: cross-entropy of the strong view against the weak view's argmax, where
    the weak view's top probability reaches ``threshold``; averaged over all ``U`` images.

    Args:
        weak_logits: ``[U, k]`` (no gradient flows into them); strong_logits: ``[U, k]``.

    Example:
        >>> w = torch.tensor([[4.0, 0.0], [0.2, 0.0]])        # confident, unsure
        >>> t = consistency_loss(w, torch.zeros(2, 2), threshold=0.95)
        >>> t.mask.tolist(), round(float(t.loss), 4)           # only the first counts: ln 2 / 2
        ([True, False], 0.3466)
    """
    probs = torch.softmax(weak_logits.detach().float(), dim=-1)
    conf, pseudo = probs.max(dim=-1)
    mask = conf >= threshold
    ce = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
    return ConsistencyTerm(weight * (ce * mask.float()).mean(), mask, pseudo)


class EpochIndices(torch.utils.data.Sampler):
    """Each epoch, ``total`` indices of ``n``: seeded permutations laid end to end, this rank's share."""

    def __init__(self, n: int, total: int, *, seed: int, rank: int = 0, world: int = 1):
        self.n, self.total, self.seed, self.rank, self.world, self.epoch = n, total, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        need = self.total * self.world
        draws = torch.cat([torch.randperm(self.n, generator=g) for _ in range(math.ceil(need / self.n))])[:need]
        return iter(draws[self.rank::self.world].tolist())


class Cycled:
    """A labeled loader repeated to ``steps`` batches per epoch, its sampler reshuffled per cycle."""

    def __init__(self, loader, sampler, steps: int):
        self.loader, self.sampler, self.steps, self.epoch = loader, sampler, steps, 0
        self.decode_path = getattr(loader, "decode_path", "cpu")  # tlkit.data.device_decode.decode_path_of

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        done, cycle = 0, 0
        while done < self.steps:
            if cycle:
                self.sampler.set_epoch(self.epoch + 100_003 * cycle)
            before = done
            for batch in self.loader:
                yield batch
                done += 1
                if done == self.steps:
                    return
            if done == before:  # an empty loader: nothing to cycle
                return
            cycle += 1


class Consistency:
    """The unlabeled side of a run: its loader (one batch per step) and the epoch's statistics.

    Built by :func:`build`; the loop calls :meth:`set_epoch`, then :meth:`forward` once per step, then
    :meth:`epoch_stats`.
    """

    def __init__(self, cfg: ConsistencyConfig, loader, sampler: EpochIndices, steps: int, has_truth: bool):
        self.cfg, self.loader, self.sampler, self.steps, self.has_truth = cfg, loader, sampler, steps, has_truth
        self._it: Iterator | None = None
        self._stats: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self._it, self._stats = None, None

    def next_batch(self) -> UnlabeledBatch:
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)

    def forward(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, u: UnlabeledBatch,
                to_device: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(labeled logits [B, k], unlabeled term or None)`` for one step (call under autocast)."""
        if u.weak is None or len(u.weak) < 2:
            return forward(x), None
        weak, strong = to_device(u.weak), to_device(u.strong)
        with torch.no_grad():
            weak_logits = forward(weak)
        logits = forward(torch.cat([x, strong]))
        term = consistency_loss(weak_logits, logits[len(x):], threshold=self.cfg.threshold, weight=self.cfg.weight)
        targets = u.targets.to(term.pseudo.device)
        used = term.mask & (targets >= 0)
        row = torch.stack([torch.ones_like(term.mask).sum(), term.mask.sum(), used.sum(),
                           (used & (term.pseudo == targets)).sum()]).double()  # added up on the device
        self._stats = row if self._stats is None else self._stats + row
        return logits[:len(x)], term.loss

    def epoch_stats(self, reduce: Callable[[list], list]) -> dict[str, Any]:
        """``unlabeled_images``, ``mask_rate`` (share above the threshold), ``pseudo_accuracy`` (right
        pseudo-labels among those with a known truth; ``None`` without truth) of the epoch, all ranks."""
        n, masked, known, right = reduce(self._stats.tolist() if self._stats is not None else [0.0] * 4)
        return {"unlabeled_images": int(n), "pseudo_labels": int(masked), "mask_rate": masked / n if n else 0.0,
                "pseudo_accuracy": right / known if self.has_truth and known else None}


def build(unlabeled: UnlabeledSet, cfg: Any, data_config: Mapping[str, Any], class_to_idx: Mapping[str, int],
          labeled_batches: int, rt: Any) -> Consistency:
    """The :class:`Consistency` of a run (``cfg``: its TrainConfig; ``rt``: its runtime)."""
    from tlkit.data import make_loader, size_hint_for

    ccfg = ConsistencyConfig.from_train(cfg)
    per_step = ccfg.mu * cfg.batch
    n = len(unlabeled.paths)
    per_epoch = min(n, ccfg.per_epoch or n)
    steps = max(labeled_batches, math.ceil(per_epoch / (per_step * rt.dist.world_size)))
    views = two_views(data_config, ccfg, scale_min=cfg.scale_min, hflip=cfg.hflip, vflip=cfg.vflip)
    targets = unlabeled.targets(class_to_idx)
    ds = TwoViewDataset(unlabeled.paths, targets, views, size_hint=size_hint_for(data_config, training=True))
    sampler = EpochIndices(n, steps * per_step, seed=cfg.seed, rank=rt.dist.rank, world=rt.dist.world_size)
    loader = make_loader(ds, batch_size=per_step, workers=rt.workers, device=rt.device, sampler=sampler,
                         seed=cfg.seed + 1, collate_fn=collate_views)
    log.info("fixmatch: %d unlabeled images, %d per step (mu %d), %d steps per epoch, threshold %.2f",
             n, per_step, ccfg.mu, steps, ccfg.threshold)
    return Consistency(ccfg, loader, sampler, steps, unlabeled.truth is not None and any(t >= 0 for t in targets))


def check_supported(cfg: Any) -> None:
    """FixMatch trains on images with the whole network: refuse setups where that cannot run."""
    if cfg.mode == "linear-probe" and cfg.precompute_features:
        raise TlkitError("an unlabeled set needs images: drop precompute_features=true (or the unlabeled set)")


__all__ = ["Consistency", "ConsistencyConfig", "ConsistencyTerm", "Cycled", "EpochIndices", "TwoViews",
           "UnlabeledBatch", "UnlabeledSet", "build", "consistency_loss", "two_views"]
