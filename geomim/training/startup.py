"""Start-up checks: everything that can be known wrong before any work (model, data, processes)
is done, each reported as a `ConfigError` naming the key or path at fault."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from geomim.training.checkpointing import latest_checkpoint, list_checkpoints, read_train_state
from geomim.training.config import ConfigError, TrainConfig


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """`--resume`: None (fresh run), "auto" (the run's latest checkpoint, if any) or a path."""
    if resume is None or resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    try:
        read_train_state(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--resume {resume}: {error}") from error
    return path


def check_startup(config: TrainConfig, world_size: int, resume: Path | None) -> None:
    """Raise `ConfigError` if this run cannot start as configured on `world_size` ranks."""
    config.train.accumulation(world_size)  # the batch must split over the ranks
    data = config.data
    root = Path(data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: no dataset folder at {root.resolve()}")
    if not (root / data.version).is_dir():
        raise ConfigError(
            f"data.version: {root.resolve()} has no {data.version}/ tables folder "
            f"(found {sorted(p.name for p in root.iterdir() if p.name.startswith('v1.0'))})"
        )
    if not timm.is_model(config.model.encoder):
        raise ConfigError(
            f"model.encoder: {config.model.encoder!r} is not a registered timm model "
            f"(GeoMIM encoders: {timm.list_models('geomim*')})"
        )
    weights = config.encoder_weights
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"encoder_weights: no file at {Path(weights).resolve()}")
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' but no CUDA device is available")
    if config.train.precision == "fp16" and config.train.fsdp:
        raise ConfigError("train.precision: fp16 with train.fsdp is not supported; use bf16")
    if resume is None and list_checkpoints(config.run_dir):
        raise ConfigError(
            f"run_dir: {config.run_dir} already holds checkpoints; pass --resume auto to "
            "continue that run, or choose another run_dir"
        )
