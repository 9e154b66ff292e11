"""The fine-tuning configuration: one frozen dataclass, YAML recipes, ``key=value`` overrides.

A recipe is a YAML mapping that lists only the keys that differ from :class:`TrainConfig`'s
defaults. Values are resolved in this order, later wins::

    TrainConfig defaults  <  recipe  <  explicit arguments (CLI flags)  <  --set key=value

Recipes ship inside the package (``tlkit/recipes/*.yaml``) and are found by name; any other YAML
file is accepted by path.

Example:
    >>> cfg = make_config("finetune-fast", overrides=["lr=3e-4", "ema=true"], epochs=3)
    >>> cfg.epochs, cfg.lr, cfg.ema
    (3, 0.0003, True)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tlkit.core.constants import DECODE_MODES, DEFAULT_BACKBONE, DEFAULT_TASK, MULTILABEL
from tlkit.core.errors import TlkitError, did_you_mean
from tlkit.core.io import not_utf8_message, write_text, yaml_problem

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
MODES = ("full", "linear-probe", "freeze-unfreeze")
HEAD_INITS = ("random", "probe")  # tlkit.train.head_init
MONITOR_METRICS = ("val_accuracy", "val_loss", "val_f1_macro", "val_map")
SAMPLERS = ("uniform", "balanced")
LR_SCALES = ("none", "linear", "sqrt")
DECODES = DECODE_MODES
#: ``batch_size: auto`` on a CPU (and the reference batch of ``lr`` unless ``lr_base_batch`` says otherwise)
DEFAULT_BATCH = 32
#: config.yaml's key for what a run chose at run time (:func:`save_config`); not a setting
CHOSEN = "chosen"

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    DEFAULT_TASK: {"val_fraction": 0.2, "scale_min": 0.7},
    MULTILABEL: {"val_fraction": 0.1, "scale_min": 1.0},
}
"""What a ``None`` in these :class:`TrainConfig` fields means, per task (:func:`resolve_task_defaults`).

Multi-label runs hold out 10 % rather than 20 % and crop nothing away (a crop can cut off an object whose
label stays on). Chosen on the clothing tuning mosaics only, each factor alone against today's defaults
(``benchmarks/bench_multilabel_finetune.py --variants``, efficientnet_lite0, 96 px, 2 epochs, 750 mosaics,
3 seeds; plan and rule in ``benchmarks/results/multilabel_finetune_defaults_plan.md``: adopt a factor whose
paired mean gain is >= 0.5 mAP points), test mAP gain: ``val_fraction=0.1`` +1.90, ``scale_min=1.0``
+0.62, ``hflip=0.5`` -0.13, ``warmup_epochs=0.2`` -0.10; all four together +1.94. A plain BCE loop on all
750 mosaics was still 1.6 points ahead of ``val_fraction=0.1`` there."""


def resolve_task_defaults(cfg: "TrainConfig", task: str) -> "TrainConfig":
    """``cfg`` with each field left ``None`` (the default) set to the ``task``'s value in :data:`TASK_DEFAULTS`."""
    unset = {k: v for k, v in TASK_DEFAULTS[task].items() if getattr(cfg, k) is None}
    return cfg.replace(**unset) if unset else cfg


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a fine-tuning run (data paths and the output folder excepted)."""

    # model
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    weights: str | None = None  # local weights file for the backbone
    mode: str = "full"  # full | linear-probe | freeze-unfreeze
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth (models that support it)
    # data
    image_size: int | None = None  # None: the backbone's own input size
    val_fraction: float | None = None  # stratified hold-out when no --val is given; None: TASK_DEFAULTS (0.2, multi-label 0.1)
    batch_size: int | str = "auto"  # auto: 32 on a CPU, the largest power of two that fits on CUDA (tlkit.train.autobatch)
    workers: int | None = None  # DataLoader workers; None: tlkit.core.runtime.default_workers()
    # augmentation (timm create_transform, training only). Defaults keep labels and colours: no flips
    # (a mirrored digit, arrow or text is another class), crops of at least 70% of the image, no
    # colour jitter; see "Fine-tuning defaults" in the README (issue #14) for the study behind them.
    scale_min: float | None = None  # RandomResizedCrop scale lower bound (upper 1.0); None: TASK_DEFAULTS (0.7, multi-label 1.0)
    hflip: float = 0.0  # e.g. 0.5 for photos of objects whose mirror image is the same class
    vflip: float = 0.0
    color_jitter: float | None = None  # e.g. 0.2 (brightness, contrast, saturation)
    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5, trivialaugment, augmix-m5, v0
    reprob: float = 0.0  # random erasing probability
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    # loss
    loss: str = "ce"  # ce | focal; multi-label: bce (ce means bce) | asl
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: str | list | None = None  # None | "balanced" | [w per class]
    sampler: str = "uniform"  # uniform (each image once per epoch) | balanced (classes drawn equally, with replacement)
    # FixMatch consistency on unlabeled images (tlkit.train.consistency); used only when fit() gets an
    # unlabeled set (`tlkit finetune --unlabeled DIR`, `al-round --train finetune --ssl fixmatch`)
    fixmatch_threshold: float = 0.95  # a weak view's top probability needed for its pseudo-label (the paper's 0.95)
    fixmatch_mu: int = 2  # unlabeled images per labeled image in a step; the paper's 7 costs 3.5x more per step, too slow on a CPU
    fixmatch_weight: float = 1.0  # lambda_u, the unlabeled loss weight (the paper's 1)
    fixmatch_augment: str = "rand-m9-mstd0.5"  # strong view: timm auto_augment spec (RandAugment, as the paper)
    fixmatch_reprob: float = 1.0  # strong view: random erasing (the paper's cutout, always applied)
    fixmatch_per_epoch: int | None = None  # unlabeled images drawn per epoch at most; None: every one once
    # optimisation
    epochs: int = 10
    optimizer: str = "adamw"  # any timm optimizer: adamw, sgd, rmsprop, adagrad, adam, ...
    lr: float = 1e-3  # peak learning rate of the head (at lr_base_batch images per step when lr_scale is set)
    lr_scale: str = "none"  # none | linear | sqrt: scale lr by the global batch / lr_base_batch (timm's rule)
    lr_base_batch: int = DEFAULT_BATCH  # the global batch (batch_size x ranks x grad_accum) lr is given for
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd / rmsprop
    nesterov: bool = False  # sgd
    layer_decay: float | None = None  # full mode: lr x layer_decay per layer group from head to stem, e.g. 0.8
    head_init: str = "random"  # random | probe: start from a logistic regression on the frozen features (LP-FT; tlkit.train.head_init)
    freeze_epochs: int = 1  # freeze-unfreeze: head-only epochs first
    unfreeze_lr_scale: float = 0.1  # freeze-unfreeze: lr multiplier once the body is unfrozen
    precompute_features: bool = False  # linear-probe: embed once (no augmentation), train the head
    grad_accum: int = 1
    clip_grad: float | None = None  # max gradient norm
    schedule: str = "cosine"  # cosine (warmup + cosine) | onecycle | step | exponential | cyclic | constant
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # final lr / peak lr (cosine, onecycle)
    step_epochs: float = 3.0  # step: decay every N epochs; cyclic: half-cycle length
    gamma: float = 0.1  # step / exponential decay factor
    ema: bool = False  # keep and evaluate a timm ModelEmaV3 of the weights
    ema_decay: float = 0.998
    # stopping and checkpoints
    monitor: str = "val_accuracy"  # val_accuracy | val_loss | val_f1_macro | val_map (multi-label; val_accuracy means val_map there)
    patience: int | None = None  # early stopping after N epochs without improvement
    # runtime
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    decode: str = "auto"  # auto (device on CUDA; training images when most are JPEGs) | cpu | device: where JPEGs are decoded, augmented and resized
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # DDP only
    seed: int = 0
    deterministic: bool = False
    tensorboard: bool = True  # write RUN/tb when the tensorboard package is installed

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def batch(self) -> int:
        """The batch size as a number: as given, or :data:`DEFAULT_BATCH` for an ``auto`` not yet
        resolved. The engine resolves ``auto`` (probed on CUDA; :func:`tlkit.train.autobatch.resolve`)
        before it builds loaders; code that builds loaders from a config directly gets the CPU default."""
        return self.batch_size if isinstance(self.batch_size, int) else DEFAULT_BATCH

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` of every field (YAML/JSON ready)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated like overrides)."""
        return make_config(base=self, overrides=changes)


# numeric keys with a valid range (inclusive); math.inf: no upper bound
_RANGES = {
    "drop_rate": (0.0, 1.0), "drop_path_rate": (0.0, 1.0), "scale_min": (0.0, 1.0), "hflip": (0.0, 1.0),
    "vflip": (0.0, 1.0), "color_jitter": (0.0, math.inf), "reprob": (0.0, 1.0), "mixup": (0.0, math.inf),
    "cutmix": (0.0, math.inf), "mixup_prob": (0.0, 1.0), "focal_gamma": (0.0, math.inf),
    "weight_decay": (0.0, math.inf), "momentum": (0.0, 1.0), "warmup_epochs": (0.0, math.inf),
    "min_lr_ratio": (0.0, 1.0), "ema_decay": (0.0, 1.0), "clip_grad": (0.0, math.inf), "patience": (1, math.inf),
    "unfreeze_lr_scale": (0.0, math.inf), "gamma": (0.0, math.inf), "step_epochs": (0.0, math.inf),
    "image_size": (16, math.inf), "workers": (0, math.inf), "fixmatch_threshold": (0.0, 1.0),
    "fixmatch_mu": (1, math.inf), "fixmatch_weight": (0.0, math.inf), "fixmatch_reprob": (0.0, 1.0),
    "fixmatch_per_epoch": (1, math.inf),
}


def _validate(cfg: TrainConfig) -> None:
    def bad(key: str, fix: str) -> TlkitError:
        return TlkitError(f"{key}={getattr(cfg, key)!r}: {fix}")

    for f in dataclasses.fields(cfg):  # NaN passes every range check below; inf passes the open-ended ones
        value = getattr(cfg, f.name)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            default = getattr(TrainConfig, f.name, None)
            raise bad(f.name, "give finite numbers" if isinstance(value, list) else "give a finite number "
                      + ("(or null to switch it off)" if default is None else f"(the default is {default!r})"))
    if cfg.head_init not in HEAD_INITS:
        raise bad("head_init", f"choose one of: {', '.join(HEAD_INITS)}")
    if cfg.mode not in MODES:
        raise bad("mode", f"choose one of: {', '.join(MODES)}")
    if cfg.monitor not in MONITOR_METRICS:
        raise bad("monitor", f"choose one of: {', '.join(MONITOR_METRICS)}")
    if cfg.epochs < 1:
        raise bad("epochs", "must be at least 1")
    if cfg.batch_size != "auto" and (not isinstance(cfg.batch_size, int) or cfg.batch_size < 1):
        raise bad("batch_size", "must be a whole number >= 1 or auto")
    if cfg.grad_accum < 1 or cfg.lr_base_batch < 1:
        raise bad("grad_accum" if cfg.grad_accum < 1 else "lr_base_batch", "must be at least 1")
    if cfg.lr_scale not in LR_SCALES:
        raise bad("lr_scale", f"choose one of: {', '.join(LR_SCALES)}")
    if cfg.decode not in DECODES:
        raise bad("decode", f"choose one of: {', '.join(DECODES)}")
    if cfg.val_fraction is not None and not 0.0 < cfg.val_fraction < 1.0:
        raise bad("val_fraction", "must be between 0 and 1, e.g. 0.2")
    if cfg.lr <= 0:
        raise bad("lr", "must be positive, e.g. 1e-3")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise bad("label_smoothing", "must be in [0, 1), e.g. 0.1")
    if cfg.layer_decay is not None and not 0.0 < cfg.layer_decay <= 1.0:
        raise bad("layer_decay", "must be in (0, 1], or null to switch it off")
    if cfg.mode == "freeze-unfreeze" and not 0 < cfg.freeze_epochs < cfg.epochs:
        raise bad("freeze_epochs", f"freeze-unfreeze needs 0 < freeze_epochs < epochs ({cfg.epochs})")
    for key, (lo, hi) in _RANGES.items():
        value = getattr(cfg, key)
        if value is not None and not lo <= value <= hi:
            raise bad(key, f"must be between {lo} and {hi}" if hi != math.inf else f"must be at least {lo}")
    if isinstance(cfg.class_weights, list) and not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in cfg.class_weights):
        raise bad("class_weights", "give one non-negative number per class (in sorted class order), e.g. [1, 5], "
                                   "or 'balanced'")
    if cfg.sampler not in SAMPLERS:
        raise bad("sampler", f"choose one of: {', '.join(SAMPLERS)}")
    if isinstance(cfg.class_weights, str) and cfg.class_weights != "balanced":
        raise bad("class_weights", "use 'balanced', a list with one weight per class, or null")


# --------------------------------------------------------------------------- recipes


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` of every bundled recipe; the description is the file's first comment."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        desc = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        out.append((path.stem, desc))
    return out


def recipe_path(name_or_path: str | Path) -> Path:
    """Resolve a bundled recipe name (``finetune-fast``) or a YAML file path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise TlkitError(f"recipe file {str(p)!r} does not exist; give a YAML file or a bundled recipe name")
        return p
    bundled = RECIPES_DIR / f"{p.name}.yaml"
    if bundled.is_file():
        return bundled
    names = [n for n, _ in list_recipes()]
    raise TlkitError(f"unknown recipe {str(name_or_path)!r}{did_you_mean(name_or_path, names)}; "
                     f"choose one of: {', '.join(names)}, or a YAML file")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping stored in a recipe (only the keys it changes), keys checked against TrainConfig."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise TlkitError(f"recipe {not_utf8_message(path, e)}") from None
    except yaml.YAMLError as e:
        raise TlkitError(f"recipe {str(path)!r} is not valid YAML ({yaml_problem(e)}); fix that line "
                         "(see `tlkit recipes NAME` for a valid recipe)") from None
    if not isinstance(data, dict):
        raise TlkitError(f"recipe {str(path)!r} must be a mapping of key: value")
    data.pop(CHOSEN, None)  # a run's config.yaml: what tlkit chose at run time, not a setting
    for key in data:
        _check_key(key, where=f"recipe {path.name}")
    return data


# --------------------------------------------------------------------------- overrides


def _check_key(key: str, *, where: str) -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    if key in names:
        return
    raise TlkitError(f"unknown config key {key!r} in {where}{did_you_mean(key, names)}; valid keys: {', '.join(names)}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["lr=3e-4", "auto_augment=rand-m9-mstd0.5"]``; values are read as YAML scalars.

    Example:
        >>> parse_overrides(["ema=true", "class_weights=[1, 2]"])
        {'ema': True, 'class_weights': [1, 2]}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TlkitError(f"--set {item!r}: write key=value, e.g. --set lr=3e-4")
        _check_key(key, where="--set")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _parse_scalar(text: str, t: type) -> Any:
    low = text.strip().lower()
    if t is bool:
        return {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}.get(low)
    try:
        return t(low)
    except ValueError:
        return None


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats."""
    hint = _FIELD_TYPES[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in allowed:
        return None
    for t in allowed:
        t = typing.get_origin(t) or t
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and t in (int, float, bool):  # "3e-4", "8", "false" from text
            parsed = _parse_scalar(value, t)
            if parsed is not None:
                return parsed
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, list) and isinstance(value, t):
            return value
    names = " | ".join(getattr(t, "__name__", str(t)).replace("NoneType", "null") for t in allowed)
    raise TlkitError(f"config key {key!r}: {value!r} is not a {names}")


def make_config(
    recipe: str | Path | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    base: TrainConfig | None = None,
    **explicit: Any,
) -> TrainConfig:
    """Build a validated :class:`TrainConfig`.

    Args:
        recipe: a bundled recipe name or a YAML path (``None``: defaults only).
        overrides: ``key=value`` strings (``--set``) or a mapping; applied last.
        base: start from this config instead of the defaults.
        **explicit: keyword values (CLI flags); ``None`` values are ignored.
    """
    values: dict[str, Any] = (base or TrainConfig()).to_dict()
    layers: list[dict[str, Any]] = []
    if recipe is not None:
        layers.append(load_recipe(recipe))
    layers.append({k: v for k, v in explicit.items() if v is not None})
    layers.append(dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides))
    for layer in layers:
        for key, value in layer.items():
            _check_key(key, where="the configuration")
            values[key] = _coerce(key, value)
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, path: str | Path, chosen: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config as YAML (atomically); ``chosen`` (what tlkit chose at run time: the batch
    size and how, the lr rule, the decoding path) goes under the key ``chosen``, which recipes ignore."""
    data = cfg.to_dict()
    if chosen:
        data[CHOSEN] = dict(chosen)
    write_text(path, yaml.safe_dump(data, sort_keys=False))


__all__ = [
    "DECODES",
    "DEFAULT_BATCH",
    "LR_SCALES",
    "MODES",
    "RECIPES_DIR",
    "TrainConfig",
    "list_recipes",
    "load_recipe",
    "make_config",
    "parse_overrides",
    "recipe_path",
    "save_config",
]
