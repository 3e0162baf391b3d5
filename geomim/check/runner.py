"""The whole check: every op on every usable backend and dtype, the teacher, the training steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from geomim.check.cases import OpCase, op_cases
from geomim.check.compare import Result, check_backend, reference_of
from geomim.check.system import (
    check_pretraining_steps,
    check_teacher,
    environment,
    native_cpu_bf16,
    training_backends,
)
from geomim.kernels.dispatch import BACKENDS, ENVIRONMENT_VARIABLE, default_backend, usable_backends

OPS = tuple(BACKENDS)


@dataclass(frozen=True)
class CheckOptions:
    """What to check: the device, tiny or real shapes, which ops, the teacher and the steps."""

    device: torch.device
    quick: bool = False
    ops: tuple[str, ...] = OPS
    backends: tuple[str, ...] | None = None  # None: every usable one
    teacher: bool = True
    steps: bool = True
    repeats: int = 3

    def wants(self, backend: str) -> bool:
        """Whether `backend` is among those to check."""
        return self.backends is None or backend in self.backends


def run_check(options: CheckOptions, say: Callable[[str], None] = print) -> dict:
    """Run everything `options` asks for, printing each result as it comes; the report."""
    device = options.device
    env = environment(device)
    say("geomim.check: every kernel against its reference on this machine")
    for key, value in env.items():
        say(f"  {key:<20} {value}")
    results: list[Result] = []
    for case, dtype, note in planned_cases(options):
        say(f"\n{case.op} [{dtype_name(dtype)}]: {case.shape}{note}")
        reference = reference_of(case, dtype)
        for backend in usable_backends(case.op, device):
            if not options.wants(backend):
                continue
            result = _check_one(case, backend, dtype, reference, options)
            results.append(result)
            say(format_result(result))
    if options.teacher:
        say("\nLiDAR teacher (sparse encoder) on this device against the CPU")
        results.append(check_teacher(device, options.quick, options.repeats))
        say(format_result(results[-1]))
    if options.steps:
        say("\none tiny pretraining step per backend against the references (bf16 too on CUDA)")
        backends = {
            op: tuple(b for b in training_backends(op, device, options.quick) if options.wants(b))
            for op in BACKENDS
        }
        dtypes = (torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
        for result in check_pretraining_steps(device, options.quick, backends, dtypes):
            results.append(result)
            say(format_result(result))
    failures = [r for r in results if r.status == "fail"]
    for line in summary(results, failures, device):
        say(line)
    return {
        "environment": env,
        "options": {**vars(options), "device": str(device)},
        "defaults": {op: default_backend(op, device) for op in BACKENDS},
        "results": [r.as_dict() for r in results],
        "passed": sum(r.status == "pass" for r in results),
        "failed": len(failures),
        "skipped": sum(r.status == "skip" for r in results),
    }


def planned_cases(options: CheckOptions) -> Iterator[tuple[OpCase, torch.dtype, str]]:
    """(case, dtype, note) in the order checked: fp32, then bf16 (and fp16 on CUDA) where the
    model runs the op in low precision. A CPU without native bf16 checks bf16 at tiny shapes:
    emulated bf16 at the real ones would take hours."""
    device = options.device
    cases = [c for c in op_cases(device, options.quick) if c.op in options.ops]
    low = [torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.bfloat16]
    tiny_bf16 = device.type == "cpu" and not options.quick and not native_cpu_bf16()
    for case in cases:
        yield case, torch.float32, ""
    low_cases = [c for c in op_cases(device, True) if c.op in options.ops] if tiny_bf16 else cases
    note = " (tiny: this CPU has no native bf16)" if tiny_bf16 else ""
    for dtype in low:
        for case in low_cases:
            if case.low_precision:
                yield case, dtype, note


def _check_one(case: OpCase, backend: str, dtype, reference, options: CheckOptions) -> Result:
    """Check one backend, or say why it is skipped here."""
    cpu = options.device.type == "cpu"
    reason = ""
    if cpu and backend == "triton" and not options.quick:
        reason = "the Triton interpreter is too slow at real sizes: run it with --quick"
    if cpu and backend == "flex" and options.quick:
        reason = "compiles once per shape (tens of seconds): checked without --quick"
    if reason:
        return Result(case.op, backend, dtype_name(dtype), case.shape, "skip", note=reason)
    backward = not (cpu and backend == "flex")  # FlexAttention has no CPU backward
    return check_backend(case, backend, dtype, reference, backward, options.repeats)


def format_result(result: Result) -> str:
    """One aligned line: backend, dtype, errors against the tolerance, times, status."""

    def error(value: float | None) -> str:
        return "-" if value is None else f"{value:.1e}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    tolerance = "" if result.tolerance is None else f" (tol {result.tolerance:.0e})"
    return (
        f"  {result.status.upper():<4} {result.backend:<24} {result.dtype:<8} "
        f"fwd {error(result.forward_error):>7} bwd {error(result.backward_error):>7}{tolerance}  "
        f"{ms(result.forward_ms):>10} {ms(result.training_ms):>10}  {result.note}"
    ).rstrip()


def summary(results: list[Result], failures: list[Result], device: torch.device) -> list[str]:
    """The closing lines: counts, each failure, and the setting that avoids it."""
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines = [f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"]
    if not failures:
        return lines
    lines.append("FAILED (op / backend / dtype: what):")
    for r in failures:
        errors = f"forward {r.forward_error}, backward {r.backward_error}, tol {r.tolerance}"
        lines.append(f"  {r.op} / {r.backend} / {r.dtype}: {r.note or errors} [{r.shape}]")
    pins = []
    for op in BACKENDS:
        failed = {r.backend for r in failures if r.op == op} | {
            r.backend.removeprefix(f"{op}=")
            for r in failures
            if r.op == "pretraining_step" and r.backend.startswith(f"{op}=")
        }
        if failed:
            working = [r.backend for r in results if r.op == op and r.status == "pass"]
            choice = next((b for b in working if b not in failed), "reference")
            pins.append(f"{op}={choice}")
    if pins:
        lines.append(
            f"Until this is fixed, pin working backends: {ENVIRONMENT_VARIABLE}={','.join(pins)} "
            f"(and please report the failure with this output and `--json`)"
        )
    return lines


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bfloat16`."""
    return str(dtype).removeprefix("torch.")
