"""Run `geomim.train` and SIGKILL this process at a chosen point (for the resume tests).

python interrupt.py step 5 --config ...   # rank 0 dies as it starts step 5 (0-based)
python interrupt.py save 6 --config ...   # dies half-way through writing checkpoint 6
"""

from __future__ import annotations

import os
import signal
import sys

import safetensors.torch

from geomim import train
from geomim.training import engine


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, at_step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank = int(os.environ.get("RANK", "0"))
    if mode == "step":
        original_step = engine.train_step

        def train_step(training, *step_args, **kwargs):
            if rank == 0 and training.step == at_step:
                die()
            return original_step(training, *step_args, **kwargs)

        engine.train_step = train_step
    elif mode == "save":
        original_save = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            if f"step-{at_step:08d}" in str(filename):
                data = safetensors.torch.save(tensors, metadata)
                with open(filename, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                die()
            return original_save(tensors, filename, metadata)

        safetensors.torch.save_file = save_file
    else:
        raise ValueError(f"mode must be 'step' or 'save', got {mode!r}")
    train.main(args)


if __name__ == "__main__":
    main()
