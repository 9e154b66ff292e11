"""Extract's warm start: a cached OpenVINO model used without importing torch or timm.

The normal path creates the backbone (timm, torch: ~3.7 s of imports on 2 cores) only to learn
what the compiled-model cache key needs (:func:`tlkit.engines.model_digest` hashes the PyTorch
weights). When that path compiles (or loads) an OpenVINO model for a backbone named by the user, it
also writes a small index record, ``$TLKIT_CACHE_DIR/openvino/warm/<key>.json``, where ``key`` digests
the request (:class:`WarmRequest`: backbone name, ``--weights`` path or none, image size, precision)
and the versions of tlkit, timm, torch and OpenVINO (read with :mod:`importlib.metadata`, nothing
imported). The record holds everything extract writes about the model: backbone name, weights
(source, location, sha256), the weights file (path, size, mtime, sha256), the data config, the
feature dimension, the precision and the OpenVINO cache entry.

A later run with the same request uses the record only when everything still checks out: the
weights file exists with the same size, mtime and sha256 (and, for weights from a package, the
package still points at it), and the cache entry loads and passes its reference check
(:func:`tlkit.engines.openvino_engine.load_cached`). Anything else, and anything not covered (a GPU, a
torch-only option, weights from the Hugging Face cache or hub, random init, a shard, a transform
:func:`tlkit.data.numpy_transform.numpy_eval_transform` does not reproduce exactly), takes the normal
path, with one debug log line. Images are then decoded in threads and preprocessed with PIL + NumPy
(bit-for-bit timm's tensor), so the rows, ``index.csv`` and ``meta.json`` (``settings_key``,
``run_key``) are those of the normal path and either can resume or reuse the other's folder.
``TLKIT_WARM_START=0`` turns the warm start off.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlkit.core.io import read_json, sha256_file, write_json
from tlkit.data.config import DataConfig
from tlkit.models.backbone_info import WeightsInfo

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when a record's layout or what it must match changes
#: tlkit sources that decide what a record says (model, weights mapping, preprocessing, cache entry); their
#: digest is part of the key, so an edited checkout never trusts a record written by older code.
RECORD_SOURCES = ("models/backbones.py", "models/weights.py", "data/config.py", "data/transforms.py",
                  "data/numpy_transform.py", "engines/__init__.py", "engines/base.py", "engines/openvino_engine.py",
                  "features/warm.py")
_GPU_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")  # CUDA, ROCm, WSL: torch might see a GPU


@dataclass(frozen=True)
class WarmRequest:
    """What the user asked for that decides the model; the index key is a digest of it and the versions.

    Attributes:
        backbone: the backbone name as given, surrounding spaces dropped.
        weights: ``--weights`` resolved to an absolute path, or ``None`` (pretrained from a package).
        image_size: ``--image-size`` or ``None``.
        precision: the OpenVINO precision the run plans (``bf16`` | ``fp32``).
    """

    backbone: str
    weights: str | None
    image_size: int | None
    precision: str

    def key(self) -> str:
        facts = {"request": asdict(self), "versions": _versions(), "index": INDEX_VERSION}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class WarmBackbone:
    """The facts of a :class:`tlkit.models.backbones.Backbone` extract writes, without its model."""

    name: str
    weights: WeightsInfo
    data_config: DataConfig
    num_features: int
    model: None = None


@dataclass(frozen=True)
class WarmStart:
    """A checked index record: the backbone's facts and the loaded OpenVINO engine."""

    bb: WarmBackbone
    engine: Any  # tlkit.engines.openvino_engine.OpenVINOEngine
    transform: Any  # PIL image -> float32 [3, H, W] (numpy_eval_transform)


def _versions() -> dict[str, str | None]:
    root = Path(__file__).resolve().parent.parent  # the tlkit folder
    h = hashlib.sha256()
    try:
        for name in RECORD_SOURCES:
            h.update(name.encode() + (root / name).read_bytes())
    except OSError:  # an install without sources: the versions alone
        h.update(b"no sources")
    out: dict[str, str | None] = {"tlkit_sources": h.hexdigest()[:16]}
    for dist in ("tlkit", "timm", "torch", "torchvision", "openvino"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def index_dir() -> Path:
    """Where the records live: ``<OpenVINO cache>/warm``."""
    from tlkit.engines.openvino_engine import cache_root

    return cache_root() / "warm"


def _gpu_present() -> bool:
    return any(os.path.exists(p) for p in _GPU_DEVICES)


def warm_request(backbone: Any, weights: str | os.PathLike | None, pretrained: bool, opts: Any,
                 shard: Any = None) -> WarmRequest | None:
    """The request when this run could take the warm start (a CPU, the OpenVINO engine, weights from a
    file or a package), else ``None``. ``opts`` is an :class:`tlkit.features.extract.ExtractOptions`."""
    if os.environ.get("TLKIT_WARM_START", "1") == "0" or not isinstance(backbone, str) or shard is not None:
        return None
    if weights is None and not pretrained:
        return None  # random init: a new model every run
    if opts.engine not in ("auto", "openvino") or opts.precision not in ("auto", "bf16", "fp32"):
        return None
    if opts.device != "cpu" and (opts.device != "auto" or _gpu_present()):
        return None
    if importlib.util.find_spec("openvino") is None:
        return None
    from tlkit.engines.openvino_engine import ov_precision

    path = None if weights is None else str(Path(weights).resolve())
    return WarmRequest(backbone.strip(), path, opts.image_size, ov_precision(opts.precision))


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record(request: WarmRequest, bb: Any, data_config: DataConfig, engine: Any) -> None:
    """Write the index record for ``request`` after the normal path built ``engine`` (OpenVINO) for ``bb``.

    Only weights read from a file or a package are recorded (their file can be checked later).
    """
    file = _weights_file(bb)
    if file is None or engine.name != "openvino" or not same_preprocessing(data_config):
        return
    rec = {"index": INDEX_VERSION, "request": asdict(request), "versions": _versions(),
           "backbone": bb.name, "weights": bb.weights.to_dict(), "weights_file": file,
           "data_config": data_config.to_dict(), "dim": int(bb.num_features), "precision": engine.precision,
           "entry": str(engine.entry), "input_size": list(data_config.input_size)}
    try:
        path = index_dir() / f"{request.key()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rec)
    except OSError as e:
        log.debug("warm-start record not written (%s)", e)


@functools.lru_cache(maxsize=8)
def same_preprocessing(cfg: DataConfig) -> bool:
    """Whether :func:`numpy_eval_transform` gives timm's tensor bit for bit for ``cfg`` with the installed timm,
    on noise images of several shapes (checked whenever a record is written, and before the normal path
    decodes with it: a timm upgrade cannot slip by). Once per config and process."""
    import numpy as np
    from PIL import Image

    from tlkit.data.numpy_transform import numpy_eval_transform
    from tlkit.data.transforms import build_transform

    fast = numpy_eval_transform(cfg)
    if fast is None:
        return False
    slow, rng = build_transform(cfg), np.random.default_rng(0)
    for h, w in ((37, 53), (301, 97), (cfg.input_size[1], cfg.input_size[2] + 3)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if not np.array_equal(fast(img), slow(img).numpy()):
            log.info("NumPy preprocessing differs from timm's for %s: timm's is used and no warm start is recorded",
                     cfg.to_dict())
            return False
    return True


def _weights_file(bb: Any) -> dict[str, Any] | None:
    """The weights file of ``bb`` (stamp + sha256, and the package it comes from), or None."""
    if bb.weights.source == "file":
        path, package = Path(bb.weights.location), None
    elif bb.weights.source == "package":
        from tlkit.models.backbones import PACKAGED_WEIGHTS

        packaged = PACKAGED_WEIGHTS.get(bb.name)
        path = packaged.path() if packaged else None
        package = {"module": packaged.package, "getter": packaged.getter} if path else None
    else:
        return None
    if path is None or not path.is_file() or bb.weights.sha256 is None:
        return None
    return {**_stamp(path), "sha256": bb.weights.sha256, "package": package}


def _package_path(package: dict[str, str]) -> Path | None:
    try:
        module = importlib.import_module(package["module"])
        return Path(getattr(module, package["getter"]).get_model_file_path())
    except Exception:  # noqa: BLE001 - an uninstalled or changed package: not warm
        return None


def _mismatch(request: WarmRequest, rec: dict[str, Any]) -> str | None:
    """Why the record cannot be used for ``request`` now, or None when it can."""
    if rec.get("index") != INDEX_VERSION or rec.get("request") != asdict(request):
        return "the record is for another request"
    if rec.get("versions") != _versions():
        return "package versions changed"
    file = rec["weights_file"]
    path = Path(file["path"])
    if file.get("package") and _package_path(file["package"]) != path:
        return f"package {file['package']['module']} no longer provides {path}"
    if request.weights is not None and request.weights != str(path):
        return "another weights file"
    try:
        if _stamp(path) != {k: file[k] for k in ("path", "size", "mtime_ns")}:
            return f"{path} changed (size or mtime)"
    except OSError:
        return f"{path} is gone"
    if sha256_file(path) != file["sha256"] or rec["weights"].get("sha256") != file["sha256"]:
        return f"{path} changed (sha256)"
    return None


def find_warm_start(request: WarmRequest | None) -> WarmStart | None:
    """The checked warm start for ``request`` with its engine loaded, or None (one debug line why)."""
    if request is None:
        return None
    path = index_dir() / f"{request.key()}.json"
    try:
        rec = read_json(path)
        why = _mismatch(request, rec)
    except FileNotFoundError:
        log.debug("no warm-start record for %s; taking the normal path", request.backbone)
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"unreadable record ({type(e).__name__})"
    if why is None:
        return _load(request, rec, path)
    log.debug("warm-start record %s not used: %s; taking the normal path", path.name, why)
    return None


def _load(request: WarmRequest, rec: dict[str, Any], path: Path) -> WarmStart | None:
    from tlkit.data.numpy_transform import numpy_eval_transform
    from tlkit.engines import openvino_engine as ove

    cfg = DataConfig.from_dict(rec["data_config"])
    transform = numpy_eval_transform(cfg)
    if transform is None or rec["precision"] != request.precision:
        log.debug("warm-start record %s not used: preprocessing not covered; taking the normal path", path.name)
        return None
    entry = Path(rec["entry"])
    if entry.parent != ove.cache_root() or not entry.is_dir():
        log.debug("warm-start record %s not used: OpenVINO entry %s is gone; taking the normal path", path.name, entry)
        return None
    engine = ove.load_cached(entry, cfg.input_size, rec["precision"])
    if engine is None:
        return None  # load_cached logged why and removed the entry
    bb = WarmBackbone(rec["backbone"], WeightsInfo(**rec["weights"]), cfg, int(rec["dim"]))
    log.info("warm start: OpenVINO %s model loaded from %s (torch and timm not imported)", rec["precision"], entry)
    return WarmStart(bb, engine, transform)


__all__ = ["WarmBackbone", "WarmRequest", "WarmStart", "find_warm_start", "record", "warm_request"]
