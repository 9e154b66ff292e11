"""The CUDA and old-torch paths that a CPU can run (#29): out-of-memory detection and the fp16 grad scaler
on torch 2.2-2.4, resuming a many-GPU run on fewer GPUs (or none), every DDP rank in every step, extract
under torchrun, the speed settings, workers per rank.

Where a test removes an attribute from torch, it makes this torch look like the older one the floors allow
(pyproject.toml); .ci/run's floor stage runs the fast tests on those versions for real.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlkit.dist_env import DistInfo

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. out of memory on torch < 2.5


def test_out_of_memory_is_recognised_without_torch_OutOfMemoryError(monkeypatch):
    """torch 2.2-2.4 have torch.cuda.OutOfMemoryError only: other errors must not become AttributeErrors."""
    from tlkit.cli._app import _is_oom, user_errors

    cuda_oom = torch.cuda.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError")
    assert _is_oom(cuda_oom("CUDA error: tried to allocate 2.00 GiB"))
    assert not _is_oom(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"), user_errors():  # the error itself, not an AttributeError
        raise ValueError("a bug")


# --------------------------------------------------------------------------- 2. fp16 on torch 2.2


def test_fp16_training_builds_its_grad_scaler_on_torch_2_2(monkeypatch):
    """torch.amp.GradScaler exists from torch 2.3; on 2.2 the scaler is torch.cuda.amp.GradScaler."""
    from tlkit.train import make_config
    from tlkit.train.engine import build_state, optimizer_step
    from tlkit.train.loaders import Runtime
    from tlkit.train.model import create_classifier

    monkeypatch.delattr(torch.amp, "GradScaler")
    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=4, epochs=1)
    model = create_classifier(cfg, 2)[0].model
    rt = Runtime(torch.device("cuda"), torch.float16, False, DistInfo(), 0)  # built only: nothing runs on CUDA
    st = build_state(cfg, model, model, model, 1, rt)
    assert isinstance(st.scaler, torch.cuda.amp.GradScaler)
    st.scaler.scale(model(torch.randn(2, 3, 32, 32)).sum()).backward()  # a disabled scaler here: no CUDA
    optimizer_step(st, cfg)
    assert st.step == 1


# --------------------------------------------------------------------------- 3. RNG states of other GPUs


def test_resume_restores_only_the_cuda_rng_states_of_visible_gpus(tmp_path, caplog):
    """A training state saved on 8 GPUs resumes on this CPU-only machine (none restored) and would on 1
    GPU (the first); one warning says so. set_rng_state_all raised IndexError on fewer GPUs."""
    from tlkit.train import checkpoint as ckpt

    fake = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # a CUDA (Philox) state: 16 bytes
    state = {**ckpt.rng_state(), "cuda": fake}
    ckpt.save_train_state(tmp_path / "train_state.pt", {"rng": state})
    saved = ckpt.load_train_state(tmp_path / "train_state.pt")["rng"]
    expected = torch.rand(3)
    with caplog.at_level(logging.WARNING, logger="tlkit.train.checkpoint"):
        ckpt.set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected), "the CPU generator is restored"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "8 GPU(s) and 0 are visible" in warnings[0], warnings
    assert [i for i, _ in ckpt.cuda_states_to_restore(saved["cuda"], 1)] == [0]
    assert [i for i, _ in ckpt.cuda_states_to_restore(saved["cuda"][:2], 4)] == [0, 1]
    caplog.clear()
    assert len(ckpt.cuda_states_to_restore(saved["cuda"], 8)) == 8 and not caplog.records
