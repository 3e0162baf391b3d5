"""Start-up: everything that can be known wrong before any work (model, data, processes) is done,
each reported as a `ConfigError` naming the key or path at fault; where a run starts (`--resume`,
`--fresh`); and the run folder's housekeeping once the run's state has loaded (what killed runs
left behind, an earlier run a fresh start discards).

An existing run is never overwritten by accident: a run folder holding an earlier run (checkpoint
folders or metrics) is continued (`--resume auto`, from its newest complete checkpoint) or
discarded on request (`--fresh`); anything else stops at start-up with the folder unchanged.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import yaml

from geomim.checkpoints import write_atomic
from geomim.training.checkpointing import (
    checkpoint_problem,
    clear_partial_checkpoints,
    remove_checkpoints,
    step_folders,
)
from geomim.training.config import (
    ConfigError,
    TrainConfig,
    config_differences,
    config_to_dict,
    dump_config,
)
from geomim.training.metrics import METRICS_FILE, read_metrics, truncate_metrics
from geomim.training.panel import PANELS

CONFIG_FILE = "config.yaml"  # the resolved config of a run, in its folder
TENSORBOARD = "tensorboard"
# `geomim.checkpoints.write_atomic`'s temporary files: `.NAME.` + mkstemp's 8 characters + `.tmp`
_WRITE_ATOMIC_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def resolve_resume(
    resume: str | None,
    run_dir: str | Path,
    fresh: bool = False,
    report: Callable[[str], object] = print,
) -> Path | None:
    """The checkpoint a run starts from, None for step 0. `resume`: None (a new run), "auto"
    (the run's newest complete checkpoint; step 0 if the folder holds no earlier run) or a
    checkpoint folder. Raises `ConfigError` rather than start over an earlier run, unless `fresh`.
    `report` gets the one line that says which broken checkpoints `auto` passed over."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    new_run = resume is None or resume == "none"
    if fresh:
        if not new_run:
            raise ConfigError(f"--fresh starts over from step 0; it excludes --resume {resume}")
        return None
    if new_run:
        history = run_history(run_dir)
        if history:
            raise ConfigError(
                f"run_dir: {run_dir} already holds a run ({history}); pass --resume auto to "
                "continue it, --fresh to discard it and start over, or choose another run_dir"
            )
        return None
    if resume == "auto":
        return _newest_complete_checkpoint(run_dir, report)
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise ConfigError(f"--resume {resume}: not a complete checkpoint: {problem}")
    return Path(resume)


def run_history(run_dir: str | Path) -> str:
    """What an earlier run left in `run_dir` (checkpoint folders, metrics), or "" if nothing."""
    run_dir = Path(run_dir)
    parts = []
    folders = [p.name for p in step_folders(run_dir)]
    if folders:
        shown = ", ".join(folders[-3:])
        parts.append(f"checkpoints/{'..., ' if len(folders) > 3 else ''}{shown}")
    records = len(read_metrics(run_dir))
    if records:
        parts.append(f"{records} records in {METRICS_FILE}")
    return "; ".join(parts)


def check_startup(config: TrainConfig, world_size: int) -> None:
    """Raise `ConfigError` if this run cannot start as configured on `world_size` ranks (the
    checkpoint to resume from is checked by `resolve_resume`)."""
    config.train.accumulation(world_size)  # the batch must split over the ranks
    if config.data.source == "nuscenes":  # the rig's random samples need no files
        _check_dataset_folder(config.data.root, config.data.version)
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


def clear_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove what killed runs left in a run folder: interrupted checkpoint saves and deletions,
    `write_atomic`'s temporary files (config, metrics, panels); returns what was removed."""
    run_dir = Path(run_dir)
    removed = clear_partial_checkpoints(run_dir)
    for folder in (run_dir, run_dir / PANELS):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if _WRITE_ATOMIC_TEMP.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def discard_run(run_dir: str | Path) -> str:
    """Delete an earlier run's checkpoints, metrics, panels and TensorBoard events (`--fresh`);
    returns what was there ("" if nothing)."""
    run_dir = Path(run_dir)
    history = run_history(run_dir)
    remove_checkpoints(step_folders(run_dir))
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    for name in (PANELS, TENSORBOARD):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    return history


def _check_run_dir(run_dir: Path) -> None:
    """`run_dir` must be a folder, or a path where one can be made."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if path == run_dir and not path.is_dir():
                raise ConfigError(f"run_dir: {run_dir} is a file, not a folder")
            if not path.is_dir():
                raise ConfigError(f"run_dir: {run_dir} cannot be made: {path} is a file")
            return


def _newest_complete_checkpoint(run_dir: Path, report: Callable[[str], object]) -> Path | None:
    """`--resume auto`: the newest checkpoint folder that is complete (the newer broken ones
    reported in one line); None for a folder without an earlier run; else a `ConfigError`."""
    broken = []
    for path in reversed(step_folders(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            if broken:
                report(
                    f"resume: passing over {'; '.join(broken)}; resuming from {path}, the "
                    "newest complete checkpoint"
                )
            return path
        broken.append(f"{path.name} ({problem})")
    history = run_history(run_dir)
    if history:
        missing = "; ".join(broken) if broken else "no checkpoint was written"
        raise ConfigError(
            f"--resume auto: {run_dir} holds an earlier run ({history}) but no complete "
            f"checkpoint to resume from: {missing}. Name a checkpoint with --resume PATH, or "
            "pass --fresh to discard that run and start over"
        )
    return None


def _check_dataset_folder(root: str, version: str) -> None:
    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError(f"data.root: no dataset folder at {folder.resolve()}")
    if not (folder / version).is_dir():
        raise ConfigError(
            f"data.version: {folder.resolve()} has no {version}/ tables folder "
            f"(found {sorted(p.name for p in folder.iterdir() if p.name.startswith('v1.0'))})"
        )


def prepare_run_dir(
    run_dir: Path, config: TrainConfig, step: int, resumed: bool, fresh: bool
) -> None:
    """Once the state to start from has loaded: create the run folder, discard an earlier run
    (`fresh`), clear what killed runs left behind, save the resolved config, drop the metrics
    records after `step` (the run logs them again)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh and (discarded := discard_run(run_dir)):
        print(f"--fresh: discarded the earlier run in {run_dir} ({discarded})")
    clear_leftovers(run_dir)
    config_path = run_dir / CONFIG_FILE
    if resumed and config_path.is_file():
        changed = config_differences(
            yaml.safe_load(config_path.read_text()), config_to_dict(config)
        )
        if changed:
            print(f"note: resuming with a changed config: {', '.join(changed)}")
    text = dump_config(config)
    write_atomic(config_path, lambda temp: Path(temp).write_text(text))
    truncate_metrics(run_dir, step)
