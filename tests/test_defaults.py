"""The default training augmentation keeps labels: no mirror images by default (issue #14).

A left/right task (arrows on a left-to-right brightness ramp) is fed through the engine's own
training pipeline (:func:`tlkit.train.loaders.image_loaders`) with the default config: every
augmented sample must still brighten from left to right. The same check run with ``hflip=0.5``
finds mirrored samples, so it would fail under the pre-#14 default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tlkit.train.config import TrainConfig, make_config
from tlkit.train.loaders import image_loaders, setup_runtime
from tlkit.train.splits import prepare_splits

SIZE = 48


def arrow(direction: str, size: int = SIZE, seed: int = 0) -> Image.Image:
    """A white arrow pointing ``left`` or ``right`` on a ramp that brightens in the same direction."""
    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(20, 150, size), (size, 1)) + rng.normal(0, 3, (size, size))
    img = Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    d = ImageDraw.Draw(img)
    y, h = size // 2 + int(rng.integers(-4, 5)), size // 4
    d.rectangle((size // 6, y - 2, size * 2 // 3, y + 2), fill=(255, 255, 255))
    d.polygon([(size * 2 // 3, y - h), (size * 5 // 6, y), (size * 2 // 3, y + h)], fill=(255, 255, 255))
    return img if direction == "right" else img.transpose(Image.FLIP_LEFT_RIGHT)


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arrows")
    for direction in ("left", "right"):
        (root / direction).mkdir()
        for k in range(8):
            arrow(direction, seed=k).save(root / direction / f"{k}.png")
    return root


def direction_of(x: torch.Tensor) -> int:
    """+1 when an image tensor ``[3, H, W]`` brightens from left to right, -1 otherwise."""
    cols = x.float().mean(dim=(0, 1)).numpy()
    return 1 if np.polyfit(np.arange(len(cols)), cols, 1)[0] > 0 else -1


def augmented_directions(cfg: TrainConfig, root: Path, draws: int = 12) -> list[tuple[int, int]]:
    """``(label direction, sample direction)`` for ``draws`` passes of the engine's training transform."""
    splits = prepare_splits(root, root, seed=cfg.seed)
    data_config = {"input_size": (3, SIZE, SIZE), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    train, _, _ = image_loaders(cfg, splits, data_config, setup_runtime(cfg))
    ds = train.dataset
    want = {splits.class_to_idx["left"]: -1, splits.class_to_idx["right"]: 1}
    out = []
    for _ in range(draws):
        for i in range(len(ds)):
            item = ds[i]
            image, target = item[0], int(item[1])
            out.append((want[target], direction_of(image)))
    return out


def test_arrow_fixture_encodes_direction():
    for direction, sign in (("left", -1), ("right", 1)):
        x = torch.from_numpy(np.asarray(arrow(direction), dtype=np.float32)).permute(2, 0, 1)
        assert direction_of(x) == sign


def test_default_config_has_no_label_changing_augmentation():
    cfg = TrainConfig()
    assert cfg.hflip == 0.0 and cfg.vflip == 0.0
    assert cfg.mixup == 0.0 and cfg.cutmix == 0.0 and cfg.auto_augment is None


def test_default_training_augmentation_never_mirrors(arrows):
    pairs = augmented_directions(make_config(workers=0), arrows)
    mirrored = sum(w != g for w, g in pairs)
    assert mirrored == 0, f"{mirrored} of {len(pairs)} augmented samples point the other way"


def test_the_check_sees_flips_when_asked_for(arrows):
    pairs = augmented_directions(make_config(workers=0, hflip=0.5), arrows)
    mirrored = sum(w != g for w, g in pairs)
    assert 0.3 < mirrored / len(pairs) < 0.7  # the pre-#14 default (hflip=0.5) fails the test above
