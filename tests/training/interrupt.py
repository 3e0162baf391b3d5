"""Run `geomim.train` and kill or signal this process at a chosen point (for the resume tests).

python interrupt.py step 5 --config ...      # rank 0 dies (SIGKILL) as it starts step 5 (0-based)
python interrupt.py save 6 --config ...      # dies half-way through writing checkpoint 6
python interrupt.py prune 2 --config ...     # dies deleting a checkpoint folder, 1 file removed
python interrupt.py replace config.yaml ...  # dies as write_atomic renames its temp file onto it
python interrupt.py ctrl-c 1 --config ...    # Ctrl-C (SIGINT to the process group, the data-loader
                                             # workers too) as loader 1 shuts its workers down
python interrupt.py sigint-twice 1 ...       # two SIGINTs as step 1 (0-based) starts

The kill points inside the standard library are found with audit hooks (`sys.addaudithook`) on
the events of `shutil.rmtree`, `os.remove` and `os.replace`, so that the code under test runs
unchanged up to the moment it dies.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import safetensors.torch

from geomim import train
from geomim.training import engine

CHECKPOINT_FOLDER = re.compile(r"^(\.deleting-)?step-\d{8}$")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, at, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = int(os.environ.get("RANK", "0"))
    if mode == "step":
        original_step = engine.train_step

        def train_step(training, *step_args, **kwargs):
            if rank == 0 and training.step == int(at):
                die()
            return original_step(training, *step_args, **kwargs)

        engine.train_step = train_step
    elif mode == "save":
        original_save = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            if f"step-{int(at):08d}" in str(filename):
                data = safetensors.torch.save(tensors, metadata)
                with open(filename, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                die()
            return original_save(tensors, filename, metadata)

        safetensors.torch.save_file = save_file
    elif mode == "prune":
        sys.addaudithook(die_at_file_removal(int(at)))
    elif mode == "replace":
        sys.addaudithook(die_at_replace(at))
    elif mode == "ctrl-c":
        ctrl_c_at_worker_shutdown(int(at))
    elif mode == "sigint-twice":
        original_step = engine.train_step

        def train_step(training, *step_args, **kwargs):
            if training.step == int(at):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return original_step(training, *step_args, **kwargs)

        engine.train_step = train_step
    else:
        raise ValueError(f"unknown mode {mode!r}")
    train.main(args)


def die_at_file_removal(count: int):
    """An audit hook: SIGKILL as the `count`-th file of a checkpoint folder that `shutil.rmtree`
    deletes is about to go (count - 1 files gone)."""
    removed = 0
    deleting_checkpoint = False

    def hook(event: str, event_args: tuple) -> None:
        nonlocal removed, deleting_checkpoint
        if event == "shutil.rmtree":
            deleting_checkpoint = bool(CHECKPOINT_FOLDER.match(os.path.basename(event_args[0])))
        elif event == "os.remove" and deleting_checkpoint:
            removed += 1
            if removed == count:
                die()

    return hook


def die_at_replace(name: str):
    """An audit hook: SIGKILL as `write_atomic` renames its temporary file onto `name`."""

    def hook(event: str, event_args: tuple) -> None:
        if event != "os.rename":
            return
        source, target = (os.path.basename(str(path)) for path in event_args[:2])
        if target == name and source.startswith(f".{name}."):
            die()

    return hook


def ctrl_c_at_worker_shutdown(count: int) -> None:
    """SIGINT to this process's group (as a terminal's Ctrl-C: the data-loader workers get it
    too) as the `count`-th multi-process loader iterator shuts its workers down, i.e. as an epoch
    ends with a `break` and the iterator is dropped."""
    from torch.utils.data import dataloader

    os.setpgid(0, 0)  # a group of our own: the test runner must not get the signal
    iterator = dataloader._MultiProcessingDataLoaderIter
    original_shutdown = iterator._shutdown_workers
    calls = 0

    def shutdown_workers(self):
        nonlocal calls
        if not self._shutdown:
            calls += 1
            if calls == count:
                os.killpg(0, signal.SIGINT)
        return original_shutdown(self)

    iterator._shutdown_workers = shutdown_workers


if __name__ == "__main__":
    main()
