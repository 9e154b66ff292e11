"""A simulation learner that fine-tunes: ``al-simulate --train finetune``.

Each round trains the finetune engine on the labeled pool images (a class tree of symlinks in a
scratch folder), then scores the pool (probabilities for the strategies) and the test images
(accuracy) with the run's best model. Strategies keep using the frozen-backbone embeddings for
diversity. It is slow — one training run per strategy x seed x round — so keep studies small.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tlkit.active.simulate import Learner


def finetune_learner(
    pool_paths: Sequence[Path],
    y: np.ndarray,
    test_paths: Sequence[Path],
    y_test: np.ndarray,
    classes: Sequence[str],
    *,
    config_kwargs: dict[str, Any],
    device: str = "auto",
) -> Learner:
    """Fine-tune on the labeled pool rows each round (``config_kwargs`` go to ``make_config``)."""
    from tlkit.active.finetune import fit_on_tree, link_class_tree, run_probs
    from tlkit.train import make_config

    def learn(labeled: np.ndarray, seed: int, needs: tuple) -> tuple:
        present = np.unique(y[labeled])
        if len(present) < 2:
            return None, None, float((y_test == present[0]).mean()) if len(present) else 0.0
        with tempfile.TemporaryDirectory(prefix="tlkit-sim-") as tmp:
            tree, run = Path(tmp) / "labeled", Path(tmp) / "run"
            counts = link_class_tree(tree, ((pool_paths[i], classes[y[i]]) for i in np.flatnonzero(labeled)))
            # a throwaway run in a temp folder: no TensorBoard log
            config = make_config(seed=seed, device=device, **{"tensorboard": False, **config_kwargs})
            fit_on_tree(config, tree, run, counts)
            pool_probs, test_probs = run_probs(run, [pool_paths, test_paths], classes, device)
        return pool_probs, None, float((test_probs.argmax(1) == y_test).mean())

    return learn
