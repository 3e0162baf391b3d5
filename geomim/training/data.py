"""The training data: the dataset a config names, a resumable distributed sampler, the loader,
and how the dataset falls into steps.

Sample order does not depend on the number of ranks: the epoch's permutation is drawn from
(seed, epoch), rank r takes its entries r, r + W, r + 2W, ..., so the k-th micro-batch of every
rank together always holds the same samples, whatever W and the accumulation make of them.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from geomim.data import NuScenesMultiView, collate_multiview
from geomim.data.rig import RigSamples
from geomim.training.config import TrainConfig

TrainingData = NuScenesMultiView | RigSamples


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffled per epoch, tail dropped) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` from this rank's `start`-th sample on."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def build_dataset(config: TrainConfig) -> TrainingData:
    """The training split with the recipe's augmentation at the model's image size (or the
    synthetic rig's random samples, `data.source: rig`)."""
    height, width = config.model.view_transform.image_size
    data = config.data
    if data.source == "rig":
        return RigSamples(data.rig_samples, (height, width), data.rig_points, config.train.seed)
    return NuScenesMultiView(
        data.root,
        version=data.version,
        split=data.split,
        cameras=data.cameras,
        train=True,
        image_size=(width, height),
        points=data.points,
        seed=config.train.seed,
        cache_dir=data.cache_dir,
        skip_bad=data.skip_bad,
    )


def build_loader(
    dataset: NuScenesMultiView | RigSamples,
    sampler: ResumableSampler,
    config: TrainConfig,
    pin: bool,
) -> DataLoader:
    """Micro-batches of `MultiViewBatch`; its own generator, so that making an iterator does not
    draw from the global RNG (the trajectory must not depend on where a run was resumed)."""
    workers = config.data.workers
    return DataLoader(
        dataset,
        batch_size=config.train.micro_batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_multiview,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(config.train.seed),
        worker_init_fn=_ignore_interrupts if workers else None,
    )


def _ignore_interrupts(worker: int) -> None:
    """Ctrl-C is the main process's to handle (it stops the run at a step boundary), also where
    workers are spawned rather than forked with its handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class RunLength:
    """How the run's steps fall: per epoch, in all, and micro-batches per rank per step."""

    dataset_size: int
    steps_per_epoch: int
    total_steps: int
    accumulation: int


def run_length(config: TrainConfig, dataset_size: int, world_size: int) -> RunLength:
    """Steps per epoch (whole global batches), steps in all, micro-batches per rank per step."""
    steps_per_epoch = dataset_size // config.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the dataset at {config.data.root} has {dataset_size} samples, fewer than one "
            f"batch (train.batch_size {config.train.batch_size})"
        )
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    accumulation = config.train.accumulation(world_size)
    return RunLength(dataset_size, steps_per_epoch, total_steps, accumulation)
