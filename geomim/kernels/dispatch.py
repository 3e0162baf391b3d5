"""Which implementation (backend) runs each fused op, and which one ran last.

Every op has a plain PyTorch reference and faster backends. The choice, first match wins:
1. the `backend=` argument of the call;
2. the environment variable `GEOMIM_KERNELS`, e.g. `GEOMIM_KERNELS=reference` (every op that has
   that backend) or `GEOMIM_KERNELS=window_attention=flex,bev_pool=reference` (per op);
3. `set_backend(op, name)` in the process;
4. the default for the device (`CPU_DEFAULTS`, `CUDA_DEFAULTS`).

The CUDA defaults are PyTorch-maintained kernels (SDPA, `index_add_`, cuSPARSE) until one of our
Triton kernels has passed `python -m geomim.check` on a real GPU and beaten the PyTorch path in
`benchmarks/kernels.py` there; the Triton kernels are opt-in (`GEOMIM_KERNELS=...=triton`).
A backend that fails to compile or launch raises `KernelBackendError` naming the op, the backend
and the setting that avoids it: nothing switches backends silently.

`last_backend(op)` says what the latest call of `op` ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

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
# PyTorch-maintained until a GPU run of geomim.check and benchmarks/kernels.py says otherwise.
# window_attention: the explicit formulation, because on an H200 (torch 2.11, CUDA 13) SDPA's
# and FlexAttention's gradients of the relative-bias table failed geomim.check (SDPA's bf16
# gradient NaN, which stopped the first bf16 pretraining step); their forwards passed.
CUDA_DEFAULTS = {
    "window_attention": "reference",
    "bev_pool": "index_add",
    "splat": "sparse",
    "row_attention": "sdpa",
}
ENVIRONMENT_VARIABLE = "GEOMIM_KERNELS"

_chosen: dict[str, str] = {}
_last: dict[str, str] = {}


class KernelBackendError(RuntimeError):
    """A backend failed to compile or run on this device; the message says how to avoid it."""


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


def default_backend(op: str, device: torch.device | str) -> str:
    """The backend `op` runs on `device` when nothing else is asked for."""
    _check(op, None, "default_backend")
    return CUDA_DEFAULTS[op] if torch.device(device).type == "cuda" else CPU_DEFAULTS[op]


def usable_backends(op: str, device: torch.device | str) -> tuple[str, ...]:
    """The backends of `op` that can run on `device` here (Triton: CUDA, or its interpreter)."""
    _check(op, None, "usable_backends")
    device = torch.device(device)
    return tuple(name for name in BACKENDS[op] if name != "triton" or _triton_usable(device))


def choose_backend(op: str, device: torch.device, requested: str | None = None) -> str:
    """The backend for one call of `op` on `device` (see the module docstring); recorded."""
    name = requested or _from_environment(op) or _chosen.get(op)
    if name is None:
        name = default_backend(op, device)
    _check(op, name, "backend")
    if name == "triton" and not _triton_usable(device):
        raise RuntimeError(
            f"backend 'triton' for {op} needs a CUDA device and Triton (got {device.type}); "
            "set TRITON_INTERPRET=1 to run Triton kernels on the CPU (slow, for testing)"
        )
    if not torch.compiler.is_compiling():  # a traced call records nothing (no side effect)
        _last[op] = name
    return name


@contextlib.contextmanager
def backend_failures(op: str, name: str, device: torch.device) -> Iterator[None]:
    """Turn a backend's failure to compile or launch into an error that says how to avoid it
    (the caller has validated the inputs before; running out of memory passes unchanged)."""
    try:
        yield
    except (torch.OutOfMemoryError, KernelBackendError):
        raise
    except Exception as error:
        others = [b for b in usable_backends(op, device) if b != name]
        default = default_backend(op, device)
        suggested = default if default != name else (others[0] if others else "?")
        raise KernelBackendError(
            f"{op}: backend {name!r} failed on {device} ({type(error).__name__}: {error}). "
            f"Pin another backend with {ENVIRONMENT_VARIABLE}={op}={suggested} "
            f"(usable here: {', '.join(others)}) and run `python -m geomim.check --device "
            f"{device.type}` to see which backends work on this machine"
        ) from error


def _from_environment(op: str) -> str | None:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    if "=" not in value:
        every = sorted({name for names in BACKENDS.values() for name in names})
        if value not in every:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}={value!r}: no op has that backend; use one of {every} "
                f"or op=backend pairs such as window_attention=sdpa,bev_pool=index_add"
            )
        return value if value in BACKENDS[op] else None
    chosen = None
    for item in value.split(","):
        key, _, name = (part.strip() for part in item.partition("="))
        if key not in BACKENDS:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: unknown op {key!r}; ops: {list(BACKENDS)}")
        _check(key, name, ENVIRONMENT_VARIABLE)
        if key == op:
            chosen = name
    return chosen


def _triton_usable(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _check(op: str, name: str | None, what: str) -> None:
    if op not in BACKENDS:
        raise ValueError(f"{what}: unknown op {op!r}; ops: {list(BACKENDS)}")
    if name is not None and name not in BACKENDS[op]:
        raise ValueError(f"{what}: {op} has no backend {name!r}; choose from {BACKENDS[op]}")
