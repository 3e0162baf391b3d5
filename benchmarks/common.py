"""Pieces every benchmark shares: machine description and round-robin timing."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import timm
import torch

import geomim
from geomim.allocator import keep_freed_memory
from geomim.check.system import native_cpu_bf16

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def machine_info() -> dict:
    """Versions, CPU model and capability, thread count and native-bf16 flags."""
    cpu = cpuinfo()
    flags = [flag for flag in BF16_FLAGS if flag in cpu.get("flags", "").split()]
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "geomim": geomim.__version__,
        "python": platform.python_version(),
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "openmp_environment": {
            k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_"))
        },
        "huge_pages": huge_pages(),
        "bf16_flags": flags,
        "native_bf16": native_cpu_bf16(),  # the flags, and ATen running its AVX-512 kernels
    }


def huge_pages() -> dict[str, str | None]:
    """The kernel's transparent-huge-page mode and whether torch asks for huge pages
    (`THP_MEM_ALLOC_ENABLE=1`, read at the process's first large allocation)."""
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    selected = re.search(r"\[(\w+)\]", mode.read_text()) if mode.exists() else None
    return {
        "kernel_mode": selected.group(1) if selected else None,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }


# What `--isa avx2` sets: ATen, oneDNN and MKL read these when they start
ISA_ENVIRONMENT = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}  # fmt: skip
EMULATION_NOTE = (
    "emulated: ATen, oneDNN and MKL keep to {isa} on this CPU, whose caches, clocks and MKL code "
    "paths stay its own, so a real {isa}-only part can differ"
)


def run_under_isa(isa: str | None) -> str | None:
    """With `isa`, re-run this process (and so its child processes) with ATen, oneDNN and MKL
    kept to it, and a compile cache of its own (torch's does not key on the ISA); the note to
    print beside the figures once it runs so."""
    if isa is None:
        return None
    wanted = ISA_ENVIRONMENT[isa]
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        cache = Path(tempfile.gettempdir()) / f"geomim-inductor-{isa}"
        environment = {**os.environ, **wanted, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)
    note = EMULATION_NOTE.format(isa=isa.upper())
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()} ({note})")
    return note


def add_malloc_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """`--malloc keep|system`: whether the benchmark first keeps freed memory for reuse
    (`geomim.allocator.keep_freed_memory`, as `geomim.train` runs on a CPU) or leaves glibc's
    defaults (as a user's own process has them)."""
    parser.add_argument(
        "--malloc", choices=("keep", "system"), default=default,
        help="keep: geomim.allocator.keep_freed_memory() first; system: glibc's defaults",
    )  # fmt: skip


def apply_malloc(choice: str) -> bool:
    """Apply a `--malloc` choice; whether freed memory is now kept for reuse."""
    return choice == "keep" and keep_freed_memory()


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[None]:
    """`processes` busy Python loops running beside the benchmark (other work on a shared
    machine, as users time on), stopped on exit."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


GEMM_SIZE = 4096  # the square matmul that stands for the machine's GEMM ceiling
# datasheet dense peaks: bf16 FLOP/s, fp32 FLOP/s (no tensor cores), memory bytes/s
GPU_PEAKS = {"H100": (989e12, 67e12, 3.35e12), "H200": (989e12, 67e12, 4.8e12)}


def gpu_peaks(name: str) -> tuple[float, float, float] | None:
    """The datasheet peaks of a GPU named `name` (None for a GPU not in `GPU_PEAKS`)."""
    return next((peaks for key, peaks in GPU_PEAKS.items() if key in name), None)


def gemm_job(
    dtype: torch.dtype, size: int = GEMM_SIZE, device: str = "cpu"
) -> Callable[[], torch.Tensor]:
    """A `size`-square matmul in `dtype` on seeded operands, ready to time."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    return partial(torch.mm, a, b)


def synchronize() -> None:
    """Wait for the GPU's queued work (timings of CUDA jobs must include it)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_rounds(
    jobs: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds per run for each job, round by round, and each job's last result."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    outputs: dict[str, object] = {}
    for round_index in range(warmup + repeats):
        label = (
            f"warmup {round_index + 1}"
            if round_index < warmup
            else f"round {round_index - warmup + 1}"
        )
        for name, job in jobs.items():
            synchronize()
            start = time.perf_counter()
            outputs[name] = job()
            synchronize()
            elapsed = time.perf_counter() - start
            print(f"  {label:<9} {name:<24} {1e3 * elapsed:10.1f} ms", flush=True)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times, outputs


def write_report(path: Path, report: dict, ok: bool) -> None:
    """Write the JSON report, then exit non-zero if the benchmark's correctness check failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    if not ok:
        sys.exit(1)


def stream_child(
    command: list[str], label: str, result_prefix: str, timeout_s: float | None = None
) -> dict | None:
    """Run a benchmark child process, streaming its output; the JSON it printed after
    `result_prefix`, or None (with a message) if it failed or ran past `timeout_s` (killed)."""
    result = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
        timer = threading.Timer(timeout_s, child.kill) if timeout_s else None
        if timer is not None:
            timer.start()
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(result_prefix):
                result = json.loads(line.removeprefix(result_prefix))
            else:
                print(line, end="", flush=True)
    if timer is not None:
        timer.cancel()
    if child.returncode != 0 or result is None:
        killed = timer is not None and child.returncode == -signal.SIGKILL
        reason = f"killed after {timeout_s:g} s" if killed else f"exit status {child.returncode}"
        print(f"[{label}] FAILED: {reason}")
        return None
    return result
