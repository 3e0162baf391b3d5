"""Training checkpoints: written whole or not at all, the last k kept, every state restored.

A checkpoint is a folder `RUN/checkpoints/step-00001000/`:
    model.safetensors + optimizer.pt  full state dicts, written by rank 0, or
    *.distcp + .metadata               FSDP: each rank's shards (torch.distributed.checkpoint)
    train_state.pt                     progress, scheduler, grad scaler, every rank's RNG states
It is written into `.step-00001000.tmp/` and renamed into place when complete: a run killed
mid-save leaves only the temporary folder, which is ignored and cleared at the next start. A
checkpoint is deleted (pruned, or redone) the other way round: renamed to `.deleting-step-...`
first, so that a run killed mid-delete never leaves a step folder holding only some of its files.
Model and optimizer states go through `torch.distributed.checkpoint.state_dict`, keyed by
parameter names, so a checkpoint loads into a DDP, FSDP or single-process run alike. The frozen
teacher is not saved (it comes from its own weights).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from geomim.training.distributed import DistributedContext, barrier, gather_objects, unwrap

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.pt"
FORMAT_VERSION = 1
TEACHER_PREFIX = "teacher."
DELETING_PREFIX = ".deleting-"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint after `step` optimizer steps lives."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def step_folders(run_dir: str | os.PathLike) -> list[Path]:
    """Every `step-*` folder of a run, complete or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint folder `step-00001000` was written after."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: expected a checkpoint folder named step-<8 digits>")
    return int(match.group(1))


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run (those holding their `train_state.pt`), oldest first."""
    return [p for p in step_folders(run_dir) if (p / STATE_FILE).is_file()]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run whose files are all whole (`checkpoint_problem`), or None."""
    return next((p for p in reversed(step_folders(run_dir)) if checkpoint_problem(p) is None), None)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a run cannot resume from a checkpoint folder (a file missing, empty or truncated),
    or None. Reads `train_state.pt` and the other files' headers only, not their tensors."""
    path = Path(path)
    if not path.is_dir():
        return f"{path} is not a checkpoint folder"
    try:
        state = read_train_state(path)
    except FileNotFoundError:
        return f"{path / STATE_FILE} is missing"
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        return _unreadable(path / STATE_FILE, error)
    except ValueError as error:  # a format this version does not read
        return str(error)
    if state.get("sharded"):
        return _sharded_problem(path)
    for name, check in ((MODEL_FILE, _check_safetensors), (OPTIMIZER_FILE, _check_zip)):
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        try:
            check(file)
        except (SafetensorError, zipfile.BadZipFile, OSError) as error:
            return _unreadable(file, error)
    return None


def clear_partial_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what interrupted saves and deletions left (`.step-*.tmp`, `.deleting-*`);
    returns what was removed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    partial = sorted([*root.glob(".step-*.tmp"), *root.glob(f"{DELETING_PREFIX}*")])
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def remove_checkpoints(paths: list[Path]) -> None:
    """Delete checkpoint folders: each renamed out of sight first (one atomic step), then deleted,
    so that a kill mid-delete leaves a `.deleting-*` folder (cleared at the next start), never a
    step folder missing some of its files."""
    doomed = []
    for path in paths:
        aside = path.with_name(DELETING_PREFIX + path.name)
        shutil.rmtree(aside, ignore_errors=True)  # the remains of an earlier interrupted delete
        os.rename(path, aside)
        doomed.append(aside)
    if doomed:
        _fsync(doomed[0].parent)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Keep the newest `keep_last` complete checkpoints; remove every step folder older than
    them (complete or not); returns what was removed."""
    kept = list_checkpoints(run_dir)[-keep_last:]
    if not kept:
        return []
    oldest_kept = checkpoint_step(kept[0])
    old = [p for p in step_folders(run_dir) if checkpoint_step(p) < oldest_kept]
    remove_checkpoints(old)
    return old


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
            remove_checkpoints([final])
        os.rename(temp, final)  # the commit point
        _fsync(final.parent)
        prune_checkpoints(run_dir, keep_last)
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
        # set_state_dict fills the keys a full state dict lacks with the model's own values
        expected = _without_teacher(unwrap(model).state_dict()).keys()
        _check_fit(path, expected - model_state.keys(), model_state.keys() - expected)
        optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state,
        options=options,
    )
    missing = {k for k in result.missing_keys if not k.startswith(TEACHER_PREFIX)}
    _check_fit(path, missing, set(result.unexpected_keys))
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


def _check_fit(path: Path, missing: set[str], unexpected: set[str]) -> None:
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the model: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )


def _unreadable(file: Path, error: BaseException) -> str:
    if file.is_file() and file.stat().st_size == 0:
        return f"{file} is empty"
    return f"{file} is truncated or corrupt ({type(error).__name__}: {error})"


def _check_safetensors(file: Path) -> None:
    """Raise if the header does not parse or the file is shorter than the header says."""
    with safetensors.safe_open(file, "pt"):
        pass


def _check_zip(file: Path) -> None:
    """Raise if a `torch.save` file lacks its zip directory (which is written last)."""
    with zipfile.ZipFile(file):
        pass


def _sharded_problem(path: Path) -> str | None:
    """A distributed checkpoint's metadata and whether every shard file holds its bytes."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata_file = path / ".metadata"
    if not metadata_file.is_file():
        return f"{metadata_file} is missing"
    try:
        metadata = FileSystemReader(path).read_metadata()
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        return _unreadable(metadata_file, error)
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size < size:
            return f"{file} is truncated ({file.stat().st_size} of {size} bytes)"
    return None


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
