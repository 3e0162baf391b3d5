"""Weight files: safetensors, `.pth` read with `weights_only=True`, atomic writes."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

# Plain numpy data that mmcv-era checkpoints keep in their `meta` (scalars, dtypes): no code.
# Pickles name the scalar constructor after the numpy that wrote them (1.x: numpy.core).
_numpy_scalar = np.dtype("float64").type(0).__reduce__()[0]
_SAFE_NUMPY_GLOBALS = [
    np.dtype,
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    *(type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")),
]


class CheckpointError(ValueError):
    """A weight file that cannot be read, or whose tensors do not fit the model."""


# Keys a backbone checkpoint may lack; the model keeps its own initialisation for them: the
# classifier head, and zero-initialised cross-view blocks inserted into a pretrained encoder.
FRESH_KEYS = re.compile(r"^head\.|\.cva\.")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from `.safetensors` or a `.pth`/`.pt`/`.bin` file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (corrupt or truncated?): {error}"
            ) from error
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        raise CheckpointError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle "
            f"({', '.join(unsafe) or error}); expected a checkpoint of tensors "
            "(a state dict, or one under 'state_dict' / 'model'). Save its state dict on its own, "
            "or convert it to safetensors where it was made."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {error}"
        ) from error
    return unwrap_state_dict(checkpoint, source=str(path))


def unwrap_state_dict(checkpoint: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensors of a checkpoint: under 'state_dict' or 'model' if present, else at top level."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping):
        kind = type(checkpoint).__name__
        raise CheckpointError(f"{source}: expected a dict of tensors, got {kind}")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (keys: {list(checkpoint)[:10]})")
    return tensors


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(temp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp_name)
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; a weight file is meant to be shared
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def save_safetensors_atomic(
    tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors atomically (temporary file + rename)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda temp: safetensors.torch.save_file(contiguous, temp, metadata))


def fit_to_model(
    state_dict: Mapping[str, Tensor],
    model: torch.nn.Module,
    family: str,
    resize: Callable[[str, Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """`state_dict` with exactly `model`'s keys and shapes, or a `CheckpointError` listing why not.

    Keys matching `FRESH_KEYS` that the checkpoint lacks take the model's current values;
    `resize(key, tensor, expected)` may adapt a tensor whose shape differs (else returns it as is).
    """
    expected = model.state_dict()
    fitted = dict(state_dict)
    for key in expected.keys() - fitted.keys():
        if FRESH_KEYS.search(key):
            fitted[key] = expected[key]
    missing = expected.keys() - fitted.keys()
    unexpected = fitted.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the {family}: "
            f"{len(missing)} missing keys [{describe_keys(missing)}]; "
            f"{len(unexpected)} unexpected keys [{describe_keys(unexpected)}]"
        )
    if resize is not None:
        for key, value in fitted.items():
            if value.shape != expected[key].shape:
                fitted[key] = resize(key, value, expected[key])
    mismatched = [
        f"{k}: checkpoint {tuple(fitted[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if fitted[k].shape != expected[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{len(mismatched)} tensors have the wrong shape: " + "; ".join(mismatched[:10])
        )
    return fitted


def load_checkpoint_into(
    model: torch.nn.Module,
    path: str | os.PathLike,
    filter_fn: Callable[[dict[str, Tensor], torch.nn.Module], dict[str, Tensor]],
) -> None:
    """Read a weight file, convert it with `filter_fn`, load it with every key accounted for."""
    model.load_state_dict(filter_fn(read_checkpoint(path), model), strict=True)


def describe_keys(keys: Iterable[str], limit: int = 20) -> str:
    """A short listing of key names for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
