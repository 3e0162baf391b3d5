"""Reproducibility of a run. `train.deterministic`: a run repeated on the same machine with the
same number of CPU threads gives the same bits (torch's deterministic algorithms, on CUDA
cuDNN's and cuBLAS's too). `train.threads`: that number, per rank. On a CPU the thread count
is part of the arithmetic (batch norm statistics, bias and weight gradients sum in one partial
sum per thread), so a deterministic run records it in its checkpoints and a resume takes it
back unless `train.threads` says otherwise."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# cuBLAS is deterministic with a fixed workspace (CUDA >= 10.2); read when CUDA initialises
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def reproducibility(deterministic: bool, threads: int | None) -> Iterator[None]:
    """Inside: `threads` CPU threads (None: as they are) and, with `deterministic`, every op's
    deterministic algorithm (an op without one raises torch's error naming it). The previous
    settings come back on exit, whatever changed them inside (`adopt_threads`)."""
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


def adopt_threads(recorded: int | None, configured: int | None) -> str | None:
    """On resuming a deterministic run: take back the CPU thread count its checkpoint recorded,
    unless `train.threads` sets one. Returns the line to print when the count changed or
    differs from the recorded one, else None."""
    current = torch.get_num_threads()
    if recorded is None or recorded == current:
        return None
    if configured is not None:
        return (
            f"note: the run used {recorded} CPU threads, train.threads sets {current}: it "
            "goes on with other bits than an uninterrupted run"
        )
    torch.set_num_threads(recorded)
    return (
        f"note: {recorded} CPU threads, as the run used (this process had {current}): a "
        "deterministic run depends on the count; train.threads=N overrides it"
    )
