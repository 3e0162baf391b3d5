"""GeoMIM pretraining from a config file.

    python -m geomim.train --config swin_base data.root=/data/nuscenes run_dir=runs/swin_base
    torchrun --nproc_per_node=8 -m geomim.train --config swin_base data.root=/data/nuscenes
    python -m geomim.train --config runs/swin_base/config.yaml --resume auto

--config takes a YAML file or the name of a shipped config (swin_base, swin_large, cva_vit_base,
tiny_synthetic); `key=value` overrides (dotted keys, YAML values) are applied on top. The config
is validated before anything runs; the resolved config is saved as RUN_DIR/config.yaml.

A run folder that holds an earlier run (checkpoints, metrics) is never overwritten by accident:
--resume auto continues it from its newest complete checkpoint (passing over broken newer ones,
and saying so), --fresh discards it and starts over; without either, the run does not start.
Ctrl-C (SIGINT) or SIGTERM stops the run after the current step, writes a checkpoint and prints
the command that resumes it (exit status 130 / 143); a second one exits at once, without a
checkpoint. A bad command line, config or run folder prints one message and exits with status 2
(--debug: raise, with the traceback).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The arguments are parsed before anything imports torch (`--help` answers at once); the
# training modules are imported by the functions that use them.
CONFIGS = Path(__file__).resolve().parent / "configs"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, Any]:
    """The command line; see the module docstring."""
    names = ", ".join(p.stem for p in sorted(CONFIGS.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog="python -m geomim.train",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML file or shipped config ({names})")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="auto: continue the run in run_dir from its newest complete checkpoint (step 0 if "
        "run_dir holds no run; an error if it holds one without a complete checkpoint); "
        "PATH: from that checkpoint folder",
    )
    start.add_argument(
        "--fresh",
        action="store_true",
        help="start over at step 0, deleting the checkpoints, metrics, panels and TensorBoard "
        "events of an earlier run in run_dir",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument(
        "--debug", action="store_true", help="raise errors with their traceback (no exit 2)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser, parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the config, then train (every rank runs this). Exits with status 2 on a start-up
    error, 128 + the signal's number when a signal stopped the run."""
    parser, args = parse_args(argv)
    from geomim.training.distributed import rank_from_env

    is_main = rank_from_env() == 0
    try:
        status = _start(parser, args, is_main)
    except KeyboardInterrupt:  # before training started (it catches its own)
        if args.debug:
            raise
        status = 130
        if is_main:
            print(f"{parser.prog}: interrupted before training started", file=sys.stderr)
    if status:
        raise SystemExit(status)


def resume_command(run_dir: str | os.PathLike, world_size: int) -> str:
    """The command line that continues the run in `run_dir` as it was launched."""
    from geomim.training.startup import CONFIG_FILE

    config = shlex.quote(str(Path(run_dir) / CONFIG_FILE))
    launcher = "python"
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        nodes = f" --nnodes={world_size // per_node}" if world_size > per_node else ""
        launcher = f"torchrun{nodes} --nproc_per_node={per_node}"
    return f"{launcher} -m geomim.train --config {config} --resume auto"


def run_summary(run_dir: str | os.PathLike) -> str:
    """Where a finished run's outputs are: folder, last checkpoint, metrics, newest panel."""
    from geomim.training.checkpointing import latest_checkpoint
    from geomim.training.metrics import METRICS_FILE
    from geomim.training.panel import PANELS

    run_dir = Path(run_dir)
    panels = sorted((run_dir / PANELS).glob("step-*.png"))
    lines = {
        "run": run_dir,
        "checkpoint": latest_checkpoint(run_dir),
        "metrics": run_dir / METRICS_FILE,
        "panel": panels[-1] if panels else None,
    }
    return "\n".join(f"{name:<11} {path if path else '-'}" for name, path in lines.items())


def _start(parser: argparse.ArgumentParser, args: Any, is_main: bool) -> int:
    """Start-up checks, then the training; returns the exit status."""
    from geomim.training import distributed, engine
    from geomim.training.config import ConfigError, dump_config, load_config
    from geomim.training.startup import check_startup, resolve_resume

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        report = print if is_main else _silent
        resume = resolve_resume(args.resume, config.run_dir, fresh=args.fresh, report=report)
        check_startup(config, distributed.world_size_from_env())
    except ConfigError as error:
        if args.debug:
            raise
        parser.error(str(error))
    context = distributed.init_distributed(config.train.device, need_group=config.train.fsdp)
    try:
        with distributed.stop_on_signals(announce=is_main) as stop:
            engine.train(config, context, resume, fresh=args.fresh, stop=stop)
    except ConfigError as error:  # a checkpoint that does not load into the model
        if args.debug:
            raise
        if is_main:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except engine.TrainingStopped as stopped:
        if is_main:
            where = (
                f"last checkpoint {stopped.checkpoint}"
                if stopped.checkpoint
                else "no checkpoint yet"
            )
            command = resume_command(config.run_dir, context.world_size)
            print(
                f"stopped by {stopped.received.name} after step {stopped.step}; {where}; "
                f"resume with: {command}",
                file=sys.stderr,
            )
        return 128 + stopped.received
    finally:
        distributed.shutdown_distributed()
    if is_main:
        print(run_summary(config.run_dir))
    return 0


def _silent(message: str) -> None:
    """A `report` for the ranks that say nothing."""


if __name__ == "__main__":
    main()
