"""The CUDA and old-torch paths that a CPU can run (#29): out-of-memory detection and the fp16 grad scaler
on torch 2.2-2.4, resuming a many-GPU run on fewer GPUs (or none), every DDP rank in every step, extract
under torchrun, the speed settings, workers per rank.

Where a test removes an attribute from torch, it makes this torch look like the older one the floors allow
(pyproject.toml); .ci/run's floor stage runs the fast tests on those versions for real.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tlkit.core.dist_env import DistInfo
from tests.conftest import torchrun

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. out of memory on torch < 2.5


def test_out_of_memory_is_recognised_without_torch_OutOfMemoryError(monkeypatch):
    """torch 2.2-2.4 have torch.cuda.OutOfMemoryError only: other errors must not become AttributeErrors."""
    from tlkit.cli._app import _is_oom, user_errors

    cuda_oom = torch.cuda.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # absent before torch 2.5
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

    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)  # absent before torch 2.3
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


# --------------------------------------------------------------------------- 4. every DDP rank in every step


_DDP_EPOCH = """
import json, sys
from pathlib import Path
import torch
from tlkit.data import ImageDataset, build_transform, make_loader, scan_images
from tlkit.train import make_config
from tlkit.train.distributed import all_gather_objects, shutdown
from tlkit.train.engine import build_state, prepare_model, train_one_epoch, wrap_for_training
from tlkit.train.loaders import setup_runtime
from tlkit.train.losses import build_loss

cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=4, workers=0,
                  precision="fp32", epochs=1)
rt = setup_runtime(cfg)
src = scan_images(Path(sys.argv[1]))
good = [i for i, r in enumerate(src.records) if not r.path.name.startswith("broken")]
bad = [i for i, r in enumerate(src.records) if r.path.name.startswith("broken")]
# rank 0: three batches of decodable images; rank 1: its second batch is all undecodable files
order = good[:12] if rt.dist.rank == 0 else good[12:16] + bad[:4] + good[16:20]
_, _, data_config, model = prepare_model(cfg, 2, rt)
ds = ImageDataset(src.records, build_transform(data_config), src.class_to_idx)
loader = make_loader(ds, batch_size=4, workers=0, device=rt.device, sampler=order)
st = build_state(cfg, model, model, wrap_for_training(model, cfg, rt), len(loader), rt)
train = train_one_epoch(st, cfg, loader, build_loss(cfg, 2), None, rt, None)
sums = all_gather_objects([float(p.detach().double().sum()) for p in model.parameters()], rt.dist)
if rt.dist.rank == 0:
    print("RESULT", json.dumps({"train": train, "same_weights": sums[0] == sums[1], "steps": st.step}))
shutdown()
"""


def _run_killable(cmd, *, timeout: float, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own that fails the test naming a hang after ``timeout``.

    torchrun starts its workers in sessions of their own, so killing its group leaves them behind:
    SIGTERM first (torchrun stops its workers), SIGKILL the group after a grace period; the scripts
    also arm a faulthandler watchdog (``_WATCHDOG``) that ends a rank stuck for longer.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"hung: no exit within {timeout:.0f} s\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


_WATCHDOG = "import faulthandler; faulthandler.dump_traceback_later(270, exit=True)  # a hung rank ends itself\n"


@pytest.fixture(scope="module")
def digits_with_broken(tmp_path_factory) -> Path:
    """2 classes x 10 real digit PNGs, plus 4 undecodable files named broken_*.png."""
    from tlkit.demo import make_digits_folder

    root = make_digits_folder(tmp_path_factory.mktemp("ddp") / "digits", per_class=10, seed=0)
    for d in sorted(root.iterdir())[2:]:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    for i in range(4):
        (root / "0" / f"broken_{i}.png").write_bytes(b"not an image at all" * 10)
    return root


@pytest.mark.slow
def test_ddp_epoch_where_one_rank_batch_is_all_undecodable_finishes(digits_with_broken, tmp_path):
    """2 gloo processes: rank 1's second batch has no decodable image. Before, rank 1 skipped that step
    while rank 0 waited in the gradient all-reduce: a hang (or mismatched collectives)."""
    script = tmp_path / "ddp_epoch.py"
    script.write_text(_WATCHDOG + _DDP_EPOCH)
    cmd, env = torchrun(2)
    cmd += [str(script), str(digits_with_broken)]
    r = _run_killable(cmd, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (result,) = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert result["same_weights"], "the ranks took the same steps"
    assert result["steps"] == 2 and result["train"]["train_images"] == 16, result  # the 2nd step skipped on both


# --------------------------------------------------------------------------- 5. extract under torchrun


_EXTRACT_RANK = """
import json, sys
import torch.distributed as dist
from tlkit.data import scan_images
from tlkit.features.shards import extract_under_torchrun

seen = []

def progress(n):
    if not seen:  # the first images of this rank's shard: is the group there already, and its timeout?
        pg = dist.distributed_c10d._get_default_group() if dist.is_initialized() else None
        timeout = pg._get_backend(__import__("torch").device("cpu")).options._timeout if pg else None
        seen.append({"group": pg is not None, "timeout_s": timeout.total_seconds() if timeout else None})

res, merged = extract_under_torchrun(scan_images(sys.argv[1]), sys.argv[2], backbone="test_resnet",
                                     pretrained=False, image_size=32, precision="fp32", workers=0, batch_size=4,
                                     progress=progress)
print("RANK", json.dumps({**seen[0], "merged": merged is not None and merged["shards"]}))
"""


@pytest.mark.slow
def test_extract_under_torchrun_makes_its_long_timeout_group_before_extracting(digits_with_broken, tmp_path):
    """The gloo group used to be made after the extraction, with the default 30 min timeout: ranks that
    finished more than 30 min apart failed. Now it exists before the first image, with RANKS_TIMEOUT."""
    from tlkit.features.shards import RANKS_TIMEOUT

    script = tmp_path / "extract_rank.py"
    script.write_text(_WATCHDOG + _EXTRACT_RANK)
    cmd, env = torchrun(2)
    cmd += [str(script), str(digits_with_broken), str(tmp_path / "out")]
    r = _run_killable(cmd, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads(line[5:]) for line in r.stdout.splitlines() if line.startswith("RANK")]
    assert len(ranks) == 2 and sorted(x["merged"] for x in ranks) == [False, 2], ranks
    for rank in ranks:
        assert rank["group"] and rank["timeout_s"] == pytest.approx(RANKS_TIMEOUT.total_seconds(), abs=1), rank
    assert RANKS_TIMEOUT.total_seconds() >= 6 * 3600


# --------------------------------------------------------------------------- 7. speed habits


_DISPATCH_FILES = ("torch/_tensor.py", "torch/_ops.py", "torch/utils/_python_dispatch.py", "torch/overrides.py")


class _ScalarReads:
    """Records every read of a tensor's value on the host (``.item()``, ``float(t)``, ...: the op
    ``aten._local_scalar_dense``, a GPU sync on CUDA) as ``file:function`` of the code that asked for it
    (torch's own reads, e.g. an optimizer's CPU step counter on torch 2.2, name torch's file)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        reads = self.reads = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    import traceback

                    frames = [f for f in traceback.extract_stack() if f.filename != __file__
                              and not f.filename.endswith(_DISPATCH_FILES)]
                    reads.append(f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?")
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_a_training_epoch_reads_loss_and_accuracy_off_the_device_once(tmp_path):
    """Per-step float(loss) / float(correct) made every step wait for the GPU; now the epoch reads once.
    TensorBoard's per-step losses are kept as tensors and written with the epoch."""
    from tlkit.data import Batch
    from tlkit.train import make_config
    from tlkit.train.engine import build_state, train_one_epoch
    from tlkit.train.loaders import Runtime
    from tlkit.train.losses import build_loss
    from tlkit.train.model import create_classifier
    from tlkit.train.outputs import TensorBoardLog

    torch.manual_seed(0)
    cfg = make_config(backbone="test_resnet", pretrained=False, image_size=32, batch_size=4, epochs=1, ema=False)
    model = create_classifier(cfg, 2)[0].model
    rt = Runtime(torch.device("cpu"), None, False, DistInfo(), 0)
    st = build_state(cfg, model, model, model, 6, rt)
    batches = [Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), torch.arange(4), []) for _ in range(6)]
    tb = TensorBoardLog(tmp_path, enabled=True)
    with _ScalarReads() as seen:
        out = train_one_epoch(st, cfg, batches, build_loss(cfg, 2), None, rt, None, tb.log_step)
    by_engine = [r for r in seen.reads if r.startswith("engine.py")]
    assert len(by_engine) <= 2, by_engine  # once per epoch, not per step (18 reads for 6 steps before)
    assert out["train_images"] == 24 and 0 <= out["train_accuracy"] <= 1 and out["train_loss"] > 0
    assert len(tb._steps) == 6 and not [r for r in seen.reads if r.startswith("outputs.py")]
    tb.log({"epoch": 1, "train_loss": out["train_loss"]})
    tb.close()
    assert not tb._steps


def test_fast_cuda_math_on_cuda_unless_deterministic():
    """cudnn.benchmark and TF32 matmuls on CUDA; left alone on the CPU and under --deterministic
    (process-wide settings: flipping them needs no GPU, so this runs on a CPU)."""
    from tlkit.core.runtime import allow_fast_cuda_math

    before = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
        assert not allow_fast_cuda_math(torch.device("cpu"))
        assert not allow_fast_cuda_math(torch.device("cuda"), deterministic=True)
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == (False, "highest")
        assert allow_fast_cuda_math(torch.device("cuda", 0))
        assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == (True, "high")
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_default_workers_share_the_cores_among_the_ranks_of_the_node(monkeypatch):
    """8 ranks on a 32-core node: 2 decoding workers each (32 cores / 8 ranks, half of them), not 8 each."""
    from tlkit.core.runtime import default_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(cores=32) == 8 and default_workers(cores=2) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # set by torchrun
    assert default_workers(cores=32) == 2
    assert default_workers(cores=16) == 0  # 2 cores a rank: decode in the rank's own process
    assert default_workers(cores=32, ranks_on_node=2) == 8
