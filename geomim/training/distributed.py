"""Process-group setup from torchrun's environment, model wrapping (DDP or FSDP2), reductions.

One process per device. `torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is
a single process and needs no process group (except for FSDP, which gets a one-process group).
Backend: NCCL on CUDA, gloo on CPU.

FSDP is FSDP2 (`torch.distributed.fsdp.fully_shard`), not FSDP1: it shards each parameter as a
DTensor instead of flattening them, so parameter names, `state_dict()` and optimizer states stay
those of the plain module (checkpoints move between DDP, FSDP and one process through
`torch.distributed.checkpoint.state_dict`), it composes with `torch.compile` and activation
checkpointing, works with gloo on CPU, and is the API PyTorch deprecates FSDP1 in favour of.

SIGINT and SIGTERM (`stop_on_signals`) ask the run to stop at the next step boundary, where the
ranks agree (`max_over_ranks`), so that all of them stop after the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among `world_size` and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is up (several ranks, or FSDP on one)."""
        return dist.is_available() and dist.is_initialized()


def world_size_from_env() -> int:
    """The number of ranks torchrun launched (1 without torchrun), before any setup."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before any setup."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(preference: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; `cuda` without a GPU is a ValueError."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)


def init_distributed(device_preference: str, need_group: bool = False) -> DistributedContext:
    """Join torchrun's process group (or make a one-process group when `need_group`)."""
    kind = resolve_device(device_preference).type
    rank = rank_from_env()
    world_size = world_size_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(kind, local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if kind == "cuda" else "gloo"
    if world_size > 1 or "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, device_id=device if kind == "cuda" else None)
    elif need_group:
        handle, store_file = tempfile.mkstemp(prefix="geomim-pg-")
        os.close(handle)
        store = dist.FileStore(store_file, 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    """Leave the process group, if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: Tensor) -> Tensor:
    """The mean over ranks of a tensor every rank holds (a copy; unchanged in one process)."""
    values = values.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of the ranks' `value`s (the value itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    values = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return int(values.item())


def gather_objects(value: object) -> list[object]:
    """Every rank's `value`, in rank order (one-element list in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def wrap_model(model: nn.Module, context: DistributedContext, fsdp: bool) -> nn.Module:
    """FSDP2-shard the model, wrap it in DDP (several ranks), or leave it as it is."""
    if fsdp:
        return shard_model(model)
    if context.world_size > 1:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2 `fully_shard`: each block of the camera branch (encoder stages' blocks, decoder
    blocks) is one unit, so only one block's parameters are gathered at a time; the rest
    (view transform, embeddings, the frozen teacher) shard with the root."""
    from torch.distributed.fsdp import fully_shard

    for module in blocks_to_shard(model):
        fully_shard(module)
    fully_shard(model)
    return model


def blocks_to_shard(model: nn.Module) -> list[nn.Module]:
    """The FSDP units: the transformer blocks of the camera branch, i.e. the elements of its
    innermost `ModuleList`s (encoder stages' blocks, decoder blocks). A unit's parameters are
    gathered by its own forward, so a unit must be a module whose parameters no other code
    touches (a Swin stage is not: the encoder calls its `downsample` directly)."""
    branch = getattr(model, "camera_branch", model)
    units = []
    for module in branch.modules():
        if isinstance(module, nn.ModuleList):
            units += [
                block
                for block in module
                if not any(isinstance(m, nn.ModuleList) for m in block.modules())
                and any(p.requires_grad for p in block.parameters())
            ]
    return units


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across ranks in this backward only when `enabled` (gradient
    accumulation: only the last micro-batch of a step communicates)."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


@dataclass
class StopRequest:
    """The signal that asked this process to stop (None: none yet)."""

    received: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.received is not None


@contextlib.contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[StopRequest]:
    """While inside: the first SIGINT or SIGTERM only sets the yielded `StopRequest` (the training
    loop stops at its next step boundary), a second one exits the process at once with status
    128 + signal. `announce`: say so on stderr when a signal arrives (rank 0)."""
    request = StopRequest()
    owner = os.getpid()

    def handle(number: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked data-loader worker: the training process decides
            return
        name = signal.Signals(number).name
        if request.requested:
            if announce:
                os.write(2, f"\n{name} again: exiting at once, no checkpoint written\n".encode())
            os._exit(128 + number)
        request.received = signal.Signals(number)
        if announce:  # os.write, not print: the handler may run inside a print
            message = f"{name}: stopping after this step, with a checkpoint ({name} again: at once)"
            os.write(2, f"\n{message}\n".encode())

    watched = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main one
        yield request
        return
    previous = {number: signal.signal(number, handle) for number in watched}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
