"""Training checkpoints: written whole or not at all, the last k kept, every state restored.

A checkpoint is a folder `RUN/checkpoints/step-00001000/`:
    model.safetensors + optimizer.pt  full state dicts, written by rank 0, or
    *.distcp + .metadata               FSDP: each rank's shards (torch.distributed.checkpoint)
    train_state.pt                     progress, scheduler, grad scaler, every rank's RNG states
It is written into `.step-00001000.tmp/` and renamed into place when complete: a run killed
mid-save leaves only the temporary folder, which is ignored and cleared at the next start.
Model and optimizer states go through `torch.distributed.checkpoint.state_dict`, keyed by
parameter names, so a checkpoint loads into a DDP, FSDP or single-process run alike. The frozen
teacher is not saved (it comes from its own weights).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from geomim.training.distributed import DistributedContext, barrier, gather_objects

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.pt"
FORMAT_VERSION = 1
TEACHER_PREFIX = "teacher."
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint after `step` optimizer steps lives."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clear_partial_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders of interrupted saves; returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    partial = sorted(root.glob(".step-*.tmp")) if root.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_state: dict[str, Any],
    context: DistributedContext,
    sharded: bool,
    keep_last: int,
) -> Path:
    """Write the checkpoint after `step` atomically (every rank calls this); keep the last k."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    rng_states = gather_objects(capture_rng())
    final = checkpoint_dir(run_dir, step)
    temp = final.with_name(f".{final.name}.tmp")
    if context.is_main:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = get_state_dict(model, optimizer)
        model_state = _without_teacher(model_state)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=temp)
    else:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
        if context.is_main:
            tensors = {k: v.contiguous() for k, v in _without_teacher(model_state).items()}
            safetensors.torch.save_file(tensors, temp / MODEL_FILE)
            torch.save(optimizer_state, temp / OPTIMIZER_FILE)
    barrier()
    if context.is_main:
        state = {
            "format": FORMAT_VERSION,
            "sharded": sharded,
            "world_size": context.world_size,
            "rng": rng_states,
            **extra_state,
        }
        torch.save(state, temp / STATE_FILE)
        _fsync_tree(temp)
        if final.exists():  # only when a run is redone from an older checkpoint
            shutil.rmtree(final)
        os.rename(temp, final)  # the commit point
        _fsync(final.parent)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's `train_state.pt` (progress, scheduler, scaler, RNG), tensors only."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {state.get('format')}, expected {FORMAT_VERSION}"
        )
    return state


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model and optimizer (every rank calls this); returns the rest of the state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    path = Path(path)
    state = read_train_state(path)
    if state["sharded"]:
        import torch.distributed.checkpoint as dcp

        model_state, optimizer_state = get_state_dict(model, optimizer)
        model_state = _without_teacher(model_state)
        loaded = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(loaded, checkpoint_id=path)
        model_state, optimizer_state = loaded["model"], loaded["optimizer"]
        options = StateDictOptions(strict=False)
    else:
        model_state = safetensors.torch.load_file(path / MODEL_FILE)
        optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state,
        options=options,
    )
    missing = [k for k in result.missing_keys if not k.startswith(TEACHER_PREFIX)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the model: missing {missing[:10]}, "
            f"unexpected {list(result.unexpected_keys)[:10]}"
        )
    return state


def read_model_weights(path: str | os.PathLike, template: dict[str, torch.Tensor]) -> dict:
    """The model tensors of a checkpoint named in `template` (full tensors, any format)."""
    path = Path(path)
    state = read_train_state(path)
    if not state["sharded"]:
        weights = safetensors.torch.load_file(path / MODEL_FILE)
        missing = sorted(template.keys() - weights.keys())
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} tensors, e.g. {missing[:5]}")
        return {key: weights[key] for key in template}
    import torch.distributed.checkpoint as dcp

    loaded = {"model": {k: torch.empty_like(v) for k, v in template.items()}}
    with warnings.catch_warnings():  # reading shards in one process is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(loaded, checkpoint_id=path)
    return loaded["model"]


# --------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's random states: Python, numpy, torch CPU and CUDA (tensors and plain
    values only, so that `torch.load(weights_only=True)` reads them back)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the random states `capture_rng` took."""
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ----------------------------------------------------------------------------- helpers
def _without_teacher(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith(TEACHER_PREFIX)}


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)
