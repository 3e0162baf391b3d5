"""Weight files: safetensors, `.pth` read with `weights_only=True`, atomic writes."""

from __future__ import annotations

import logging
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


_logger = logging.getLogger(__name__)


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
    expected = "safetensors" if path.suffix == ".safetensors" else "torch"
    _check_format(path, expected)
    if expected == "safetensors":
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


# What a weight file's first bytes say it is. torch.save writes a zip archive (a pickle before
# PyTorch 1.6); safetensors starts with the little-endian length of its JSON header, then "{".
_WHAT_IS_EXPECTED = {
    "torch": "a PyTorch checkpoint (the zip archive torch.save writes)",
    "safetensors": "a safetensors file",
}


def _check_format(path: Path, expected: str) -> None:
    """Raise `CheckpointError` naming the file if its first bytes show another kind of file than
    `expected` ("torch" or "safetensors"); unknown binary content is left to the reader."""
    with open(path, "rb") as file:
        head = file.read(64)
    found = _sniff(head, path.stat().st_size)
    if found in (None, expected) or (found == "pickle" and expected == "torch"):
        return
    wanted = _WHAT_IS_EXPECTED[expected]
    if found == "empty":
        raise CheckpointError(f"{path} is empty; expected {wanted}")
    if found == "lfs":
        raise CheckpointError(
            f"{path} is a Git LFS pointer (a small text file), not the weights; expected {wanted}: "
            "fetch the file itself (git lfs pull)"
        )
    if found == "text":
        start = head.decode("utf-8", errors="replace").splitlines()[0][:40]
        raise CheckpointError(
            f"{path} is a text file (it starts {start!r}), not weights; expected {wanted}"
        )
    suffix = ".safetensors" if found == "safetensors" else ".pth"
    raise CheckpointError(
        f"{path} is {_WHAT_IS_EXPECTED.get(found, 'a PyTorch checkpoint')}, but its name says "
        f"{wanted}: rename it to end in {suffix}"
    )


def _sniff(head: bytes, size: int) -> str | None:
    """What a file's first bytes show: "torch", "pickle", "safetensors", "lfs", "text" or
    "empty", or None when they show nothing known."""
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "pickle"
    header_length = int.from_bytes(head[:8].ljust(8, b"\0"), "little")
    if len(head) > 8 and head[8:9] == b"{" and 8 + header_length <= size:
        return "safetensors"
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text" if all(c.isprintable() or c.isspace() for c in text) else None


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
    optional: re.Pattern | None = None,
    fresh: re.Pattern | None = None,
) -> dict[str, Tensor]:
    """`state_dict` with exactly `model`'s keys and shapes, or a `CheckpointError` listing why not.

    Keys matching `FRESH_KEYS` (or `fresh`) that the checkpoint lacks take the model's current
    values; keys matching `optional` (parts a model builds only for the outputs asked of it) that
    the model lacks are dropped; both are logged, as timm logs the keys a load adapts.
    `resize(key, tensor, expected)` may adapt a tensor whose shape differs (else returns it as is).
    Tensors whose dtype kind differs from the model's (integers or booleans for floating-point
    weights) are an error: a cast would silently turn them into other weights.
    """
    expected = model.state_dict()
    fitted = dict(state_dict)
    kept_fresh = sorted(
        key
        for key in expected.keys() - fitted.keys()
        if FRESH_KEYS.search(key) or (fresh is not None and fresh.search(key))
    )
    fitted.update({key: expected[key] for key in kept_fresh})
    dropped = sorted(
        key
        for key in fitted.keys() - expected.keys()
        if optional is not None and optional.search(key)
    )
    for key in dropped:
        del fitted[key]
    missing = expected.keys() - fitted.keys()
    unexpected = fitted.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the {family}: "
            f"{len(missing)} missing keys [{describe_keys(missing)}]; "
            f"{len(unexpected)} unexpected keys [{describe_keys(unexpected)}]"
        )
    if kept_fresh:
        _logger.info(
            "%s: keeping the model's initialisation for %d keys the checkpoint lacks (%s); this "
            "is expected for parts added to a pretrained backbone",
            family,
            len(kept_fresh),
            describe_keys(kept_fresh),
        )
    if dropped:
        _logger.info(
            "%s: dropped %d checkpoint keys of outputs this model was not built for (%s); "
            "build it with the out_indices that need them to keep them",
            family,
            len(dropped),
            describe_keys(dropped),
        )
    _check_dtype_kinds(fitted, expected)
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


def _check_dtype_kinds(found: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Raise `CheckpointError` for tensors of another kind of number than the model's (a float
    precision may differ: fp16 and bf16 checkpoints load into fp32 models)."""
    wrong = [
        f"{key}: found {found[key].dtype}, expected {tensor.dtype}"
        for key, tensor in expected.items()
        if _dtype_kind(found[key].dtype) != _dtype_kind(tensor.dtype)
    ]
    if wrong:
        raise CheckpointError(
            f"{len(wrong)} tensors cannot be the trained weights, their dtype is of another kind "
            f"than the model's (a cast would change their values): " + "; ".join(wrong[:10])
        )


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating point"
    if dtype.is_complex:
        return "complex"
    return "boolean" if dtype == torch.bool else "integer"


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
