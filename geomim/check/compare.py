"""One op case on one backend in one dtype against the reference: errors, then times.

The reference is the op's "reference" backend in fp32 on the same inputs (rounded to the
checked dtype first, so only the computation's precision is measured). Errors are relative to
the output's scale: max |ours - reference| / max |reference|, for the output (forward) and for
the gradient of every differentiable input under one fixed random cotangent (backward; the
worst input is named). Output rows a case leaves unspecified (padding tokens) are compared
nowhere: their cotangent is zero and their forward values are not read.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from geomim.check.cases import OpCase

TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 1e-2}


@dataclass
class Result:
    """One line of the check: what ran, how far it was from the reference, how long it took."""

    op: str
    backend: str
    dtype: str
    shape: str
    status: str  # "pass", "fail" or "skip"
    forward_error: float | None = None
    backward_error: float | None = None  # the worst of `backward_errors`
    backward_errors: dict[str, float] | None = None  # per differentiable input
    tolerance: float | None = None
    forward_ms: float | None = None
    training_ms: float | None = None  # forward + backward
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """The fp32 reference of one case in one dtype: inputs, output, cotangent, gradients."""

    inputs: dict[str, Tensor]  # rounded to the checked dtype, back in fp32
    output: Tensor
    cotangent: Tensor
    gradients: dict[str, Tensor]


def reference_of(case: OpCase, dtype: torch.dtype) -> Reference:
    """Run the reference backend in fp32 on the case's inputs rounded to `dtype`."""
    inputs = {name: value.to(dtype).float() for name, value in case.inputs.items()}
    leaves = _leaves(inputs, case.differentiable)
    output = case.call(leaves, "reference").float()
    generator = torch.Generator().manual_seed(3)
    cotangent = torch.randn(output.shape, generator=generator).to(output.device)
    if case.defined is not None:
        cotangent = cotangent * _rows(case.defined, cotangent)
    wanted = [leaves[name] for name in case.differentiable]
    gradients = torch.autograd.grad((output * cotangent).sum(), wanted)
    return Reference(
        inputs, output.detach(), cotangent, dict(zip(case.differentiable, gradients, strict=True))
    )


def check_backend(
    case: OpCase,
    backend: str,
    dtype: torch.dtype,
    reference: Reference,
    backward: bool,
    repeats: int,
) -> Result:
    """Errors of `backend` against `reference`, and its forward and training times."""
    result = Result(case.op, backend, _name(dtype), case.shape, "pass", tolerance=TOLERANCES[dtype])
    inputs = {name: value.to(dtype) for name, value in reference.inputs.items()}
    try:
        leaves = _leaves(inputs, case.differentiable if backward else ())
        output = case.call(leaves, backend)
        result.forward_error = relative_error(*_defined(case, output, reference.output))
        if backward:
            wanted = [leaves[name] for name in case.differentiable]
            loss = (output.float() * reference.cotangent).sum()
            gradients = torch.autograd.grad(loss, wanted)
            result.backward_errors = {
                name: relative_error(ours, reference.gradients[name])
                for name, ours in zip(case.differentiable, gradients, strict=True)
            }
            result.backward_error = max(result.backward_errors.values(), key=_nan_first)
        if repeats:  # 0: errors only (--quick: times at tiny sizes mean nothing)
            result.forward_ms = 1e3 * median_seconds(
                lambda: _forward(case, inputs, backend), repeats
            )
        if backward and repeats:
            result.training_ms = 1e3 * median_seconds(
                lambda: _training(case, inputs, backend, reference.cotangent), repeats
            )
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        result.status, result.note = "fail", f"{type(error).__name__}: {error}"
        return result
    errors = [e for e in (result.forward_error, result.backward_error) if e is not None]
    if any(not math.isfinite(e) or e > result.tolerance for e in errors):
        result.status = "fail"
        result.note = "outside the tolerance" + (
            "" if all(map(math.isfinite, errors)) else " (NaN)"
        )
        if len(result.backward_errors or {}) > 1:  # which input's gradient is off
            result.note += "; gradients: " + ", ".join(
                f"{name} {error:.1e}" for name, error in result.backward_errors.items()
            )
    elif not backward:
        result.note = "forward only"
    return result


def relative_error(ours: Tensor, reference: Tensor) -> float:
    """max |ours - reference| / max |reference| (NaN anywhere gives NaN)."""
    if ours.shape != reference.shape:
        return math.inf
    difference = (ours.float() - reference).abs().max().item()
    if not math.isfinite(difference) or not torch.isfinite(ours).all():
        return math.nan
    return difference / max(reference.abs().max().item(), 1e-30)


def _defined(case: OpCase, ours: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """The output rows the case specifies (all of them unless it says otherwise)."""
    if case.defined is None or ours.shape != reference.shape:
        return ours, reference
    return ours[case.defined], reference[case.defined]


def _rows(defined: Tensor, like: Tensor) -> Tensor:
    """`defined` as 0/1 broadcastable over `like` (trailing dims added)."""
    return defined.reshape(*defined.shape, *[1] * (like.ndim - defined.ndim)).to(like.dtype)


def _nan_first(error: float) -> float:
    return math.inf if math.isnan(error) else error


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` runs after one warm-up (the device synchronised)."""
    run()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        run()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward(case: OpCase, inputs: dict[str, Tensor], backend: str) -> None:
    with torch.no_grad():
        case.call(inputs, backend)


def _training(case: OpCase, inputs: dict[str, Tensor], backend: str, cotangent: Tensor) -> None:
    leaves = _leaves(inputs, case.differentiable)
    output = case.call(leaves, backend)
    torch.autograd.grad(
        (output.float() * cotangent).sum(), [leaves[n] for n in case.differentiable]
    )


def _leaves(inputs: dict[str, Tensor], differentiable: tuple[str, ...]) -> dict[str, Tensor]:
    return {n: v.detach().requires_grad_(n in differentiable) for n, v in inputs.items()}


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
