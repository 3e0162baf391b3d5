"""Which implementation (backend) runs each fused op, and which one ran last.

Every op has a plain PyTorch reference and faster backends. The choice, first match wins:
1. the `backend=` argument of the call;
2. the environment variable `GEOMIM_KERNELS`, e.g. `GEOMIM_KERNELS=reference` (every op) or
   `GEOMIM_KERNELS=window_attention=flex,bev_pool=reference` (per op);
3. `set_backend(op, name)` in the process;
4. the default for the device: Triton on CUDA where Triton is importable, else the op's CPU path.

`last_backend(op)` says what the latest call of `op` ran.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS: dict[str, tuple[str, ...]] = {
    "window_attention": ("triton", "flex", "chunked", "sdpa", "reference"),
    "bev_pool": ("triton", "index_add", "reference"),
    "splat": ("triton", "sparse", "index_add", "reference"),
    "row_attention": ("triton", "sdpa", "reference"),
}
CPU_DEFAULTS = {
    "window_attention": "chunked",
    "bev_pool": "index_add",
    "splat": "sparse",
    "row_attention": "sdpa",
}
CUDA_DEFAULTS = {
    "window_attention": "triton",
    "bev_pool": "triton",
    "splat": "sparse",
    "row_attention": "triton",
}
ENVIRONMENT_VARIABLE = "GEOMIM_KERNELS"

_chosen: dict[str, str] = {}
_last: dict[str, str] = {}


def set_backend(op: str, name: str | None) -> None:
    """Use backend `name` for `op` in this process (None: back to the default)."""
    if name is None:
        _chosen.pop(op, None)
        return
    _check(op, name, "set_backend")
    _chosen[op] = name


def last_backend(op: str) -> str | None:
    """The backend the latest call of `op` ran (None before the first call)."""
    _check(op, None, "last_backend")
    return _last.get(op)


def choose_backend(op: str, device: torch.device, requested: str | None = None) -> str:
    """The backend for one call of `op` on `device` (see the module docstring); recorded."""
    name = requested or _from_environment(op) or _chosen.get(op)
    if name is not None:
        _check(op, name, "backend")
        if name == "triton" and not _triton_usable(device):
            raise RuntimeError(
                f"backend 'triton' for {op} needs a CUDA device and Triton (got {device.type}); "
                "set TRITON_INTERPRET=1 to run Triton kernels on the CPU (slow, for testing)"
            )
    else:
        name = CUDA_DEFAULTS[op] if device.type == "cuda" else CPU_DEFAULTS[op]
        if name == "triton" and not _triton_usable(device):
            name = CPU_DEFAULTS[op]
    _last[op] = name
    return name


def _from_environment(op: str) -> str | None:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    if "=" not in value:
        return value if value in BACKENDS[op] else None
    for item in value.split(","):
        key, _, name = item.partition("=")
        if key.strip() not in BACKENDS:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: unknown op {key.strip()!r}; ops: {list(BACKENDS)}"
            )
        if key.strip() == op:
            return name.strip()
    return None


def _triton_usable(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _check(op: str, name: str | None, what: str) -> None:
    if op not in BACKENDS:
        raise ValueError(f"{what}: unknown op {op!r}; ops: {list(BACKENDS)}")
    if name is not None and name not in BACKENDS[op]:
        raise ValueError(f"{what}: {op} has no backend {name!r}; choose from {BACKENDS[op]}")
