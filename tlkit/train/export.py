"""Export a fine-tuned run or a backbone for deployment: ONNX or OpenVINO IR, with its preprocessing.

``out/`` receives the model (``model.onnx``, or ``model.xml`` + ``model.bin``) and
``preprocess.json``, everything a deployment needs to feed it::

    {"format": "onnx", "model": "model.onnx", "input": {"name": "image", "shape": [-1, 3, 224, 224],
     "layout": "NCHW", "dtype": "float32", "color": "RGB"},
     "output": {"name": "logits", "kind": "logits"},          # or "features" for a backbone
     "preprocess": {"resize_shorter_to": 256, "interpolation": "bicubic", "center_crop": 224,
                    "scale": 1/255, "mean": [...], "std": [...], "crop_pct": 0.875, "crop_mode": "center"},
     "classes": ["cat", "dog"], "source": {...}, "parity_cosine": 0.99999, "sha256": "..."}

i.e. ``x = (resize(img) / 255 - mean) / std`` as in timm's eval transform
(:func:`tlkit.data.build_transform`). The exported file is run once (onnxruntime or OpenVINO) on
a fixed input and compared with PyTorch fp32 before the export counts as done; the cosine is
recorded. Export is fp32: the runtime picks its own precision (OpenVINO uses bf16 on CPUs that
have it unless told otherwise).

Example:
    >>> res = export_model("runs/flowers", format="onnx", out="deploy/")      # doctest: +SKIP
    >>> res.files, res.parity_cosine                                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tlkit
from tlkit.core.errors import TlkitError
from tlkit.core.io import check_output_dir, sha256_file, write_json

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
SIDECAR = "preprocess.json"
PARITY_COSINE = 0.9999


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``files`` in ``out`` (model files + ``preprocess.json``)."""

    out: Path
    format: str
    files: tuple[str, ...]
    kind: str                      # "logits" (a run) | "features" (a backbone)
    classes: tuple[str, ...]
    parity_cosine: float


def _load(source: str, which: str, image_size: int | None, weights: str | None):
    """(model fp32 eval CPU, data_config, classes, kind, description) of a run folder/checkpoint or a backbone name."""
    path = Path(source)
    if path.exists():
        from tlkit.train.model import load_run

        model, classes, data_config = load_run(path, which=which, device="cpu")
        return model, dict(data_config), tuple(classes), "logits", {"run": str(path.resolve()), "checkpoint": which}
    from tlkit.models.backbones import create_backbone

    bb = create_backbone(source, weights=weights)
    data_config = dict(bb.data_config)
    if image_size:
        data_config["input_size"] = (3, int(image_size), int(image_size))
    return bb.model, data_config, (), "features", {"backbone": bb.name, "weights": bb.weights.to_dict()}


def _preprocess(data_config: dict[str, Any]) -> dict[str, Any]:
    size = int(data_config["input_size"][-1])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return {"resize_shorter_to": int(math.floor(size / crop_pct)), "interpolation": data_config.get("interpolation",
            "bicubic"), "center_crop": size, "scale": 1 / 255, "mean": list(data_config["mean"]),
            "std": list(data_config["std"]), "crop_pct": crop_pct, "crop_mode": data_config.get("crop_mode", "center")}


def _export_onnx(model, x, path: Path, output: str) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=[output],
                          dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}}, opset_version=17,
                          **_torchscript_exporter())


def _torchscript_exporter() -> dict:
    """``dynamo=False`` where ``torch.onnx.export`` has that switch (torch >= 2.5; the dynamo exporter is
    the default from 2.9); older torch has only the TorchScript exporter."""
    import inspect

    import torch

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _export_openvino(model, x, path: Path, output: str) -> None:
    import torch

    from tlkit.engines.openvino_engine import import_openvino

    ov = import_openvino()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=x, input=[[-1, *x.shape[1:]]])
    converted.inputs[0].get_tensor().set_names({"image"})  # the names preprocess.json gives
    converted.outputs[0].get_tensor().set_names({output})
    ov.save_model(converted, str(path), compress_to_fp16=False)


def run_exported(out: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Run the model exported in ``out`` on ``x [B, 3, H, W]`` float32 (onnxruntime or OpenVINO, fp32) -> ``[B, ...]``."""
    import json

    out = Path(out)
    meta = json.loads((out / SIDECAR).read_text())
    if meta["format"] == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise TlkitError("checking an ONNX export needs onnxruntime: `pip install onnxruntime`") from None
        sess = ort.InferenceSession(str(out / meta["model"]), providers=["CPUExecutionProvider"])
        return sess.run(None, {meta["input"]["name"]: x})[0]
    from tlkit.engines.openvino_engine import core

    compiled = core().compile_model(str(out / meta["model"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0])


def _parity(out: Path, reference: np.ndarray, x: np.ndarray) -> float | None:
    """The OpenVINO engine's parity check (:func:`~tlkit.engines.openvino_engine.parity_cosine`) of the export."""
    from tlkit.engines.openvino_engine import parity_cosine

    try:
        got = run_exported(out, x)
    except TlkitError as e:
        log.warning("export not checked: %s", e)
        return None
    return parity_cosine(got.reshape(len(got), -1), reference.reshape(len(reference), -1))


def export_model(source: str | os.PathLike, *, format: str, out: str | os.PathLike, which: str = "best",
                 image_size: int | None = None, weights: str | os.PathLike | None = None) -> ExportResult:
    """Export a run (logits ``[B, K]``) or a backbone (pooled features ``[B, D]``) with its preprocessing.

    Args:
        source: a finetune run folder, one of its ``.safetensors``, or a backbone name (``resnet50``).
        format: ``onnx`` | ``openvino``.
        out: folder to write (created; files of an earlier export there are replaced).
        which: ``best`` | ``last`` checkpoint of a run.
        image_size: a backbone's square input size (a run keeps the size it was trained at).
        weights: a backbone's local weights file.

    Raises:
        TlkitError: unknown format or source, the model outputs NaN or inf, or the exported model
            disagrees with PyTorch (NaN or inf outputs included); files already in ``out`` stay as they were.
    """
    import torch

    if format not in FORMATS:
        raise TlkitError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    out = check_output_dir(out)
    model, data_config, classes, kind, origin = _load(str(source), which, image_size, weights)
    model = model.float().eval()
    x_np = np.random.default_rng(0).standard_normal((2, *data_config["input_size"]), dtype=np.float32)
    x = torch.from_numpy(x_np)
    with torch.inference_mode():
        reference = model(x).float().numpy()
    if not np.isfinite(reference).all():
        fix = (f"the run's {which} checkpoint" if kind == "logits" else f"--weights {weights}" if weights
               else "the backbone's weights")
        raise TlkitError(f"{source} outputs NaN or inf on a test input: its weights are broken; check {fix} "
                         "(nothing exported)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = _write_model(format, model, x, tmp, kind)
        sidecar = _sidecar(format, files[0], data_config, classes, kind, origin, tmp)
        write_json(tmp / SIDECAR, sidecar)
        cos = _parity(tmp, reference, x_np)
        if cos is not None and cos < PARITY_COSINE:
            raise TlkitError(f"the exported {format} model disagrees with PyTorch (cosine {cos:.5f}); "
                             "please report it with the model name; try the other --format meanwhile")
        write_json(tmp / SIDECAR, {**sidecar, "parity_cosine": cos})
        for name in (*files, SIDECAR):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s (parity cosine %s)", kind, out, cos)
    return ExportResult(out, format, (*files, SIDECAR), kind, classes, cos if cos is not None else float("nan"))


def _write_model(format: str, model, x, folder: Path, kind: str) -> tuple[str, ...]:
    if format == "onnx":
        _export_onnx(model, x, folder / "model.onnx", kind)
        return ("model.onnx",)
    _export_openvino(model, x, folder / "model.xml", kind)
    return ("model.xml", "model.bin")


def _sidecar(format: str, model_file: str, data_config: dict, classes: tuple, kind: str, origin: dict,
             folder: Path) -> dict[str, Any]:
    c, h, w = (int(v) for v in data_config["input_size"])
    return {
        "format": format,
        "model": model_file,
        "input": {"name": "image", "shape": [-1, c, h, w], "layout": "NCHW", "dtype": "float32", "color": "RGB"},
        "output": {"name": kind, "kind": kind},
        "preprocess": _preprocess(data_config),
        "classes": list(classes),
        "source": origin,
        "tlkit_version": tlkit.__version__,
        "sha256": sha256_file(folder / model_file),
    }


__all__ = ["FORMATS", "ExportResult", "export_model", "run_exported"]
