"""The training loop: one optimizer step over a global batch, repeated until the run is done.

One step = `accumulation` micro-batches per rank, forward and backward each, gradients reduced
over the ranks after the last one (DDP averages them; FSDP2 reduce-scatters), then clipping,
AdamW, the schedule. The reported losses are the mean over micro-batches and ranks. Every random
choice of a step is a function of (seed, step, micro-batch slot), so the trajectory does not
depend on the number of ranks (for the same micro-batch) or on where a run was resumed.

A run stops early only at a step boundary, when asked (`StopRequest`, set by SIGINT/SIGTERM):
with a checkpoint of that step, by raising `TrainingStopped`. The run folder is changed only once
the state to resume from has loaded.
"""

from __future__ import annotations

import math
import pickle
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from geomim.allocator import keep_freed_memory
from geomim.data.batch import MultiViewBatch
from geomim.pretrain.masking import draw_group_masks
from geomim.pretrain.model import GeoMIMPretrainer, PretrainOutput
from geomim.pretrain.teacher_cache import points_source
from geomim.training.checkpointing import (
    checkpoint_step,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from geomim.training.config import ConfigError, TrainConfig
from geomim.training.cpu_contention import contention_hint
from geomim.training.data import (
    ResumableSampler,
    RunLength,
    build_dataset,
    build_loader,
    run_length,
)
from geomim.training.determinism import adopt_threads, reproducibility
from geomim.training.distributed import (
    DistributedContext,
    StopRequest,
    all_reduce_mean,
    barrier,
    gradient_sync,
    max_over_ranks,
    unwrap,
    wrap_model,
)
from geomim.training.metrics import MetricsWriter, window_record
from geomim.training.optim import build_optimizer, build_scheduler
from geomim.training.panel import write_step_panel
from geomim.training.startup import prepare_run_dir
from geomim.training.teacher_factory import build_teacher

LOSSES = ("total", "reconstruction", "depth")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """One optimizer step: losses averaged over micro-batches and ranks, and what the panel
    draws (this rank's last micro-batch)."""

    losses: dict[str, float]
    grad_norm: float
    lr: float
    output: PretrainOutput
    batch: MultiViewBatch


@dataclass
class Training:
    """What the steps change and a checkpoint saves: model, optimizer, schedule, grad scaler, and
    the number of optimizer steps done; and the run's newest checkpoint (written or resumed)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    checkpoint: Path | None = None


class TrainingStopped(Exception):
    """A signal stopped the run after `step`, whose checkpoint (None before the first step) has
    been written."""

    def __init__(self, received: signal.Signals, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by {received.name} after step {step}")
        self.received = received
        self.step = step
        self.checkpoint = checkpoint


def build_model(config: TrainConfig) -> GeoMIMPretrainer:
    """The pretrainer and its teacher, initialised from the run's seed (the same on every rank)."""
    torch.manual_seed(config.train.seed)
    source = points_source(config.data.version, config.train.seed, config.data.points)
    model = GeoMIMPretrainer(config.model, build_teacher(config.teacher, source))
    if config.encoder_weights is not None:
        model.camera_branch.encoder.load_pretrained(config.encoder_weights)
    return model


def prepare_model(config: TrainConfig, context: DistributedContext) -> nn.Module:
    """The model on this rank's device, wrapped for data parallelism (DDP or FSDP2) and compiled
    as configured; the rank's global RNGs seeded after the (rank-independent) initialisation."""
    model = build_model(config).to(context.device)
    seed_rank(config.train.seed, context.rank)
    model = wrap_model(model, context, fsdp=config.train.fsdp)
    if config.train.compile:  # in place: parameter names (and checkpoints) stay the same
        unwrap(model).camera_branch.compile()
        unwrap(model).view_transform.compile()
    return model


def seed_rank(seed: int, rank: int) -> None:
    """Global RNGs of this rank: distinct per rank, reproducible per run."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def step_masks(images: Tensor, ratio: float, draw: str, seed: int, step: int, slot: int) -> Tensor:
    """Complementary masks of one micro-batch (`draw_group_masks`), drawn from (seed, step,
    slot); slot = micro-batch index x world size + rank, so that the same samples get the same
    masks whatever the number of ranks and the accumulation."""
    state = np.random.SeedSequence([seed, step, slot]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return draw_group_masks(images, ratio, draw, generator)


def train_step(
    training: Training,
    micro_batches: list[MultiViewBatch],
    config: TrainConfig,
    context: DistributedContext,
) -> StepResult:
    """Forward and backward over this rank's micro-batches, then one optimizer step."""
    model, optimizer, scaler, step = (
        training.model,
        training.optimizer,
        training.scaler,
        training.step,
    )
    model.train()
    accumulation = len(micro_batches)
    loop = config.train
    sums = torch.zeros(len(LOSSES), device=context.device)
    for index, batch in enumerate(micro_batches):
        batch = batch.to(context.device)
        slot = index * context.world_size + context.rank
        masks = step_masks(
            batch.images, config.model.mask_ratio, config.model.mask_draw, loop.seed, step, slot
        )
        with gradient_sync(model, enabled=index == accumulation - 1):
            with torch.autocast(
                context.device.type,
                dtype=AUTOCAST_DTYPES.get(loop.precision, torch.float32),
                enabled=loop.precision != "fp32",
            ):
                output = model(batch, masks)
            scaler.scale(output.losses["total"] / accumulation).backward()
        sums += torch.stack([output.losses[name].detach().float() for name in LOSSES])
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = config.optim.grad_clip if config.optim.grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    lr = training.scheduler.get_last_lr()[0]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    training.scheduler.step()
    training.step += 1
    losses = all_reduce_mean(sums / accumulation).tolist()
    return StepResult(dict(zip(LOSSES, losses, strict=True)), float(grad_norm), lr, output, batch)


def train(
    config: TrainConfig,
    context: DistributedContext,
    resume: Path | None = None,
    fresh: bool = False,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Run (or resume) the training a config describes; returns the last metrics record.
    `fresh`: discard an earlier run in the run folder first. `stop`: once set (on any rank), the
    run ends at the next step boundary with a checkpoint, raising `TrainingStopped`."""
    with reproducibility(config.train.deterministic, config.train.threads):
        return _train(config, context, resume, fresh, stop)


def _train(
    config: TrainConfig,
    context: DistributedContext,
    resume: Path | None,
    fresh: bool,
    stop: StopRequest | None,
) -> dict[str, Any]:
    run_dir = Path(config.run_dir)
    if context.device.type == "cpu":
        if config.train.keep_freed_memory:
            keep_freed_memory()  # for the rest of the process
        if context.is_main and (hint := contention_hint(torch.get_num_threads())):
            print(hint)
    dataset = build_dataset(config) if context.is_main else None
    barrier()  # rank 0 has written the data index cache
    if dataset is None:
        dataset = build_dataset(config)
    length = run_length(config, len(dataset), context.world_size)
    sampler = ResumableSampler(dataset, context.world_size, context.rank, config.train.seed)
    loader = build_loader(dataset, sampler, config, pin=context.device.type == "cuda")
    model = prepare_model(config, context)
    optimizer = build_optimizer(model, config.optim)
    training = Training(
        model,
        optimizer,
        build_scheduler(optimizer, length.total_steps, config.optim),
        torch.amp.GradScaler(context.device.type, enabled=config.train.precision == "fp16"),
    )
    record = _resume(training, resume, config, context) if resume is not None else {}
    if context.is_main:  # the state has loaded: only now may the run folder change
        prepare_run_dir(run_dir, config, training.step, resume is not None, fresh)
    writer = MetricsWriter(
        run_dir,
        length.total_steps,
        training.step,
        enabled=context.is_main,
        progress=config.log.progress,
        tensorboard=config.log.tensorboard,
    )
    if resume is not None:
        writer.write_line(f"resumed from {resume} at step {training.step}")
    try:
        while training.step < length.total_steps:
            _stop_if_asked(stop, training, length, record, config, context)
            epoch, step_in_epoch = divmod(training.step, length.steps_per_epoch)
            per_step = length.accumulation * config.train.micro_batch
            sampler.set_position(epoch, start=step_in_epoch * per_step)
            dataset.set_epoch(epoch)
            record = (
                train_one_epoch(training, loader, length, writer, config, context, stop) or record
            )
    finally:
        writer.close()
    return record


def train_one_epoch(
    training: Training,
    loader: DataLoader,
    length: RunLength,
    writer: MetricsWriter,
    config: TrainConfig,
    context: DistributedContext,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Steps until the epoch (or the run) ends: log, draw panels and save checkpoints on the
    way; stop after a step if `stop` is set (`TrainingStopped`). Returns the last metrics record
    written ({} if none)."""
    run_dir = Path(config.run_dir)
    record: dict[str, Any] = {}
    window: list[StepResult] = []
    window_start = time.perf_counter()
    micro_batches: list[MultiViewBatch] = []
    for batch in loader:
        micro_batches.append(batch)
        if len(micro_batches) < length.accumulation:
            continue
        result = train_step(training, micro_batches, config, context)
        micro_batches = []
        step, done = training.step, training.step == length.total_steps
        window.append(result)
        writer.step(result.losses, result.lr)
        if step % config.log.every == 0 or done:
            seconds = time.perf_counter() - window_start
            record = window_record(
                step, length.steps_per_epoch, window, seconds, config.train.batch_size
            )
            writer.log(record)
            window, window_start = [], time.perf_counter()
        if context.is_main and (step % config.log.panel_every == 0 or done):
            write_step_panel(run_dir, step, result.batch, result.output, result.losses, config)
        if step % config.checkpoint.every == 0 or done:
            _save(training, length, record, config, context)
        if not done:
            _stop_if_asked(stop, training, length, record, config, context)
        if done or step % length.steps_per_epoch == 0:
            break
    return record


def _resume(
    training: Training, path: Path, config: TrainConfig, context: DistributedContext
) -> dict[str, Any]:
    """Restore every state from a checkpoint (and, for a deterministic run, its CPU thread
    count); returns its last metrics record. A checkpoint that does not load is a `ConfigError`
    (the run folder is not changed yet)."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint import CheckpointException

    try:
        state = load_checkpoint(path, training.model, training.optimizer)
        training.scheduler.load_state_dict(state["scheduler"])
        training.scaler.load_state_dict(state["scaler"])
        training.step = state["progress"]["step"]
    except (
        ValueError, KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError,
        SafetensorError, CheckpointException,
    ) as error:  # fmt: skip
        raise ConfigError(
            f"--resume: {path} does not load into this run ({type(error).__name__}: {error}); "
            "the run folder is unchanged"
        ) from error
    if state["world_size"] == context.world_size:  # else each rank keeps its fresh seed
        restore_rng(state["rng"][context.rank])
    if config.train.deterministic:
        note = adopt_threads(state.get("cpu_threads"), config.train.threads)
        if note and context.is_main:
            print(note)
    training.checkpoint = Path(path)
    return state.get("metrics", {})


def _stop_if_asked(
    stop: StopRequest | None,
    training: Training,
    length: RunLength,
    record: dict[str, Any],
    config: TrainConfig,
    context: DistributedContext,
) -> None:
    """At a step boundary: if a signal reached any rank, write this step's checkpoint (unless
    there is one) and raise `TrainingStopped` (on every rank: they agree here)."""
    if stop is None:
        return
    received = max_over_ranks(stop.received or 0, context.device)
    if not received:
        return
    last = training.checkpoint
    if training.step > 0 and (last is None or checkpoint_step(last) != training.step):
        _save(training, length, record, config, context)
    raise TrainingStopped(signal.Signals(received), training.step, training.checkpoint)


def _save(
    training: Training,
    length: RunLength,
    record: dict[str, Any],
    config: TrainConfig,
    context: DistributedContext,
) -> None:
    progress = {
        "step": training.step,
        "steps_per_epoch": length.steps_per_epoch,
        "total_steps": length.total_steps,
        "dataset_size": length.dataset_size,
    }
    training.checkpoint = save_checkpoint(
        config.run_dir,
        training.step,
        training.model,
        training.optimizer,
        {
            "progress": progress,
            "scheduler": training.scheduler.state_dict(),
            "scaler": training.scaler.state_dict(),
            "metrics": record,
            "cpu_threads": torch.get_num_threads(),
        },
        context,
        sharded=config.train.fsdp,
        keep_last=config.checkpoint.keep_last,
    )
