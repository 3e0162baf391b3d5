"""`train.deterministic`: a run repeated on the same machine with the same number of threads
gives the same bits (torch's deterministic algorithms, on CUDA cuDNN's and cuBLAS's too)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# cuBLAS is deterministic with a fixed workspace (CUDA >= 10.2); read when CUDA initialises
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Inside, with `enabled`, every op runs its deterministic algorithm (one without raises
    torch's error naming it); the previous settings come back on exit."""
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]
