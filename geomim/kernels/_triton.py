"""Triton on demand: imported on the first kernel call, kernels jitted for the mode current then.

`triton.jit` decides when it decorates whether a kernel is compiled or run by the CPU
interpreter (`TRITON_INTERPRET=1`), so kernels decorated at import would be stuck with the mode
of whoever imported them first. Ours are plain functions instead, jitted here as a group on first
use, once per mode, each group with its own globals so that kernels call the helpers of their
own mode. Importing geomim never imports Triton.

Triton's own jitted helpers (`tl.zeros`, `tl.sum`, `tl.max`, ...) are decorated once, when Triton
is imported, so kernels here use builtins only (`tl.full`) and reduce through `sum_along` and
`max_along`: `tl.reduce` with the standard combine functions, which the interpreter recognises
and runs in numpy without calling them, and which compile exactly as `tl.sum` and `tl.max`.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # `sum_along` and `max_along` get `tl` when jitted
    import triton.language as tl


def load_triton() -> Any:
    """The `triton` module, or an ImportError saying what needs it."""
    try:
        import triton
        import triton.language
    except ImportError as error:
        raise ImportError(
            "the Triton kernels of geomim.kernels need the `triton` package (it ships with CUDA "
            "builds of PyTorch); install it or use the PyTorch path of the same op"
        ) from error
    return triton


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1) right now."""
    triton = load_triton()
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def jit(*functions: Callable) -> types.SimpleNamespace:
    """`functions` (helpers and kernels of one module) jitted together for the current mode,
    with `sum_along` and `max_along` in their globals."""
    return _jit_group((sum_along, max_along, *functions), interpreting())


def sum_along(x, axis):
    """`tl.sum(x, axis)` of a float32 tile, in either mode."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


def max_along(x, axis):
    """`tl.max(x, axis)` of a float32 tile, in either mode."""
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@functools.cache
def _jit_group(functions: tuple[Callable, ...], interpret: bool) -> types.SimpleNamespace:
    triton = load_triton()
    if not interpret and not isinstance(triton.language.standard.sum, triton.JITFunction):
        raise RuntimeError(
            "Triton was imported under TRITON_INTERPRET=1, so its own helpers only run on the "
            "interpreter; unset it before importing triton to compile kernels"
        )
    namespace: dict[str, Any] = {
        "__builtins__": builtins,
        "__name__": functions[0].__module__,
        "triton": triton,
        "tl": triton.language,
    }
    for function in functions:  # each copy sees this namespace, so helpers resolve per mode
        copy = types.FunctionType(
            function.__code__, namespace, function.__name__, function.__defaults__
        )
        copy.__module__ = function.__module__
        # Triton reads `tl.constexpr` from the annotations; a bare copy has none, and the
        # interpreter (which ignores them) would not notice
        copy.__annotations__ = dict(function.__annotations__)
        namespace[function.__name__] = triton.jit(copy)
    return types.SimpleNamespace(**{f.__name__: namespace[f.__name__] for f in functions})


def check_device(tensor: Tensor) -> None:
    """Raise unless `tensor` can reach a Triton kernel: on CUDA, or anywhere when interpreting."""
    if tensor.is_cuda or interpreting():
        return
    raise ValueError(
        f"expected CUDA tensors for the Triton kernels (or TRITON_INTERPRET=1 to run them on the "
        f"CPU interpreter), got a tensor on {tensor.device}"
    )


def on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    """Launch on `tensor`'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


# ---- shared by the attention kernels -------------------------------------------------------


def cdiv(a: int, b: int) -> int:
    """a / b rounded up."""
    return -(-a // b)


def attention_tiles(tokens: int, head_dim: int, dtype: torch.dtype) -> dict[str, object]:
    """The attention kernels' tile sizes (16 at least: the tensor-core minimum) and float32
    product precision."""
    block = min(64, max(16, 1 << (tokens - 1).bit_length()))
    return {
        "BLOCK_M": block,
        "BLOCK_N": block,
        "BLOCK_D": max(16, 1 << (head_dim - 1).bit_length()),
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",  # tf32 only names the default
        "UPCAST_DOT": dtype == torch.bfloat16 and interpreting(),
    }


def tile_dot(a, b, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """a @ b accumulated in float32; bfloat16 goes through float32 on the interpreter, whose own
    bfloat16 dot multiplies bit patterns (triton-lang/triton#11584)."""
    if UPCAST_DOT:
        product = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        product = tl.dot(a, b, input_precision=PRECISION)
    return product


def online_softmax_step(
    scores, v, row_max, row_sum, acc, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr
):
    """One block of keys into a flash-attention forward: the running row max, the running sum of
    exp(scores - max) and the accumulated probabilities x v, all rescaled to the new max."""
    new_max = tl.maximum(row_max, max_along(scores, 1))
    rescale = tl.exp(row_max - new_max)
    p = tl.exp(scores - new_max[:, None])
    row_sum = row_sum * rescale + sum_along(p, 1)
    acc = acc * rescale[:, None] + tile_dot(p.to(v.dtype), v, PRECISION, UPCAST_DOT)
    return new_max, row_sum, acc
