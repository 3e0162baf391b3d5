"""The training configuration: dataclasses whose defaults are the official recipe, read from YAML.

A config file is a YAML mapping of the `TrainConfig` fields; a missing key keeps its default, an
unknown key or a value of the wrong type is a `ConfigError` naming the key. Overrides
`key=value` (dotted keys, YAML values) are applied on top before validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from geomim.data.nuscenes import CAMERAS, PointConfig
from geomim.pretrain.model import PretrainConfig
from geomim.training.teacher_factory import TEACHER_SPECS, HistogramTeacherSpec, TeacherSpec

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, wrong type, or values that do not fit."""


@dataclass(frozen=True)
class DataConfig:
    """Where the nuScenes-format data is and how it is read. `source: rig` trains on random
    samples of a synthetic camera rig instead (no files: smoke runs and throughput figures)."""

    source: Literal["nuscenes", "rig"] = "nuscenes"
    rig_samples: int = 64  # with source: rig, samples per epoch
    rig_points: int = 20_000  # with source: rig, LiDAR points per sample
    root: str = "data/nuscenes"
    version: str = "v1.0-trainval"
    split: str | None = "train"  # an official split name, or None for every scene
    cameras: tuple[str, ...] = CAMERAS
    workers: int = 4  # data-loader processes per rank
    cache_dir: str | None = ""  # "" = root/.geomim-cache; None = no index cache
    skip_bad: bool = False
    points: PointConfig = field(default_factory=PointConfig)

    def __post_init__(self) -> None:
        _at_least(self, workers=0, rig_samples=1, rig_points=1)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up from lr * warmup_start_factor, cosine to lr * final_lr_factor."""

    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 35.0  # max gradient norm; None = no clipping
    warmup_steps: int = 500
    warmup_start_factor: float = 1 / 3
    final_lr_factor: float = 1e-3

    def __post_init__(self) -> None:
        _at_least(self, warmup_steps=0, weight_decay=0.0)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass(frozen=True)
class LoopConfig:
    """Steps, batch, seed and the execution switches. `batch_size` is global (per optimizer
    step): split over the ranks in `micro_batch`es, the rest made up by gradient accumulation."""

    epochs: int = 50
    max_steps: int | None = None  # stop (and end the cosine) after this many steps
    batch_size: int = 16  # 2 per GPU on 8 GPUs
    micro_batch: int = 2  # samples per rank per forward
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 adds a scaler
    compile: bool = False  # torch.compile the camera branch and the view transform
    fsdp: bool = False  # FSDP2 `fully_shard` instead of DistributedDataParallel
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the same run twice, bit for bit, on one machine with the same thread count (slower ops)
    deterministic: bool = False
    threads: int | None = None  # CPU threads per rank (torch.set_num_threads); null: as set
    # on a CPU, keep freed memory for reuse (geomim.allocator): ~1.3x faster base steps
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        _at_least(self, epochs=1, batch_size=1, micro_batch=1, seed=0)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step; raises if the batch does not split."""
        per_step = world_size * self.micro_batch
        if self.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size {self.batch_size} does not split over {world_size} rank(s) x "
                f"train.micro_batch {self.micro_batch}: expected a multiple of {per_step}"
            )
        return self.batch_size // per_step


@dataclass(frozen=True)
class LogConfig:
    """What a user watches: JSONL/TensorBoard metrics every `every` steps, a PNG panel every
    `panel_every` steps, a progress bar."""

    every: int = 50
    panel_every: int = 1000
    progress: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed

    def __post_init__(self) -> None:
        _at_least(self, every=1, panel_every=1)


@dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint every `every` steps and at the end; the last `keep_last` are kept."""

    every: int = 1000
    keep_last: int = 3

    def __post_init__(self) -> None:
        _at_least(self, every=1, keep_last=1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a pretraining run depends on; saved as `config.yaml` in the run folder."""

    run_dir: str = "runs/geomim"
    # loaded into the encoder before training (the recipe: MixMAE Swin-B/L); any weight file
    # the encoder's timm loader reads (`pretrained_cfg_overlay=dict(file=...)`)
    encoder_weights: str | None = None
    model: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: TeacherSpec = field(default_factory=HistogramTeacherSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if len(self.data.cameras) != self.model.num_views:
            raise ConfigError(
                f"data.cameras lists {len(self.data.cameras)} cameras, expected "
                f"model.num_views = {self.model.num_views}"
            )
        expected = self.model_output_shape()
        produced = self.teacher.output_shape()
        if produced is not None and tuple(produced) != expected:
            raise ConfigError(
                f"teacher ({self.teacher.kind}) maps are (C, X, Y) = {tuple(produced)}, expected "
                f"the model's prediction {expected} (model.view_transform.prediction_channels "
                "and the BEV grid after the downsample)"
            )
        _, size_x, size_y = expected
        patch = self.model.teacher_patch
        if size_x % patch or size_y % patch:
            raise ConfigError(
                f"model.teacher_patch {patch} must divide the BEV prediction ({size_x}, {size_y})"
            )

    def model_output_shape(self) -> tuple[int, int, int]:
        """(C, X, Y) of the model's BEV prediction, which the teacher map must match."""
        transform = self.model.view_transform
        size_x, size_y, _ = transform.grid_size
        return (
            transform.prediction_channels,
            size_x // transform.downsample,
            size_y // transform.downsample,
        )


# ----------------------------------------------------------------------------- reading
def load_config(source: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated `TrainConfig` from a YAML file (or a shipped config's name) plus overrides."""
    data: dict[str, Any] = {}
    if source is not None:
        path = resolve_config_path(source)
        loaded = _parse_yaml(path.read_text(), str(path))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {loaded!r}")
        data = loaded or {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected key=value, e.g. train.epochs=10")
        _set_dotted(data, key.strip(), _parse_yaml(text, f"override {override!r}"))
    return config_from_dict(data)


def resolve_config_path(source: str | Path) -> Path:
    """A config file path, or the name of a shipped config (`swin_base`, `tiny_synthetic`...)."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{source}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no config file {source!r}: expected a YAML file or one of {names}")


def shipped_configs() -> list[Path]:
    """The configs that come with the package."""
    return sorted(CONFIG_DIR.glob("*.yaml"))


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a `TrainConfig`; every error names the key it is about."""
    return _build(TrainConfig, data, "")


def config_to_dict(config: Any) -> Any:
    """Plain YAML-ready data (mappings, lists, scalars) of a config dataclass."""
    if dataclasses.is_dataclass(config):
        out = {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
        if isinstance(config, TeacherSpec):
            out = {"kind": config.kind, **out}
        return out
    if isinstance(config, (tuple, list)):
        return [config_to_dict(value) for value in config]
    return config


def dump_config(config: TrainConfig) -> str:
    """The config as YAML text, readable back by `load_config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list:
    """Dotted keys whose values differ between two `config_to_dict` results."""
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


# ----------------------------------------------------------------------------- validation
def _build(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass `cls` from a mapping: given keys converted, the rest default."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where.rstrip('.') or 'config'}: expected a mapping, got {_describe(data)}"
        )
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise ConfigError(_unknown_key(f"{where}{key}", str(key), names))
    hints = typing.get_type_hints(cls)
    values = {key: _convert(hints[key], value, f"{where}{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {error}") from error


def _convert(hint: Any, value: Any, key: str) -> Any:
    """`value` as type `hint`, or a `ConfigError` naming `key`, the expected and the actual."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is TeacherSpec:
        return _build_teacher_spec(value, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(error)
        if len(options) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_name(hint)}, got {_describe(value)}")
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_name(hint)}), got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"{key}: expected a list of {len(args)} ({_name(hint)}), got {len(value)} values"
            )
        return tuple(
            _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (str, bool):
        if isinstance(value, hint):
            return value
    elif hint is Any:
        return value
    else:
        raise TypeError(f"config field {key} has an unsupported type {hint!r}")
    raise ConfigError(f"{key}: expected {_name(hint)}, got {_describe(value)}")


def _build_teacher_spec(value: Any, key: str) -> TeacherSpec:
    """The spec class named by `kind`, with that kind's own fields validated."""
    if not isinstance(value, Mapping) or "kind" not in value:
        raise ConfigError(
            f"{key}: expected a mapping with a 'kind' (one of {sorted(TEACHER_SPECS)}), "
            f"got {_describe(value)}"
        )
    kind = value["kind"]
    if kind not in TEACHER_SPECS:
        raise ConfigError(f"{key}.kind: expected one of {sorted(TEACHER_SPECS)}, got {kind!r}")
    fields = {k: v for k, v in value.items() if k != "kind"}
    return _build(TEACHER_SPECS[kind], fields, f"{key}.")


def _unknown_key(dotted: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {dotted!r} (expected one of {names}){hint}"


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from error


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {dotted}: {'.'.join(parents[: i + 1])} is {child!r}, not a mapping"
            )
        node = child
    node[last] = value


def _at_least(config: Any, **minimums: float) -> None:
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader that also reads `2e-4` as a float (as YAML 1.2 and Python do)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)
