"""Teacher command line: cache a frozen teacher's BEV maps over a nuScenes-format dataset.

    python -m geomim.teacher cache DATAROOT OUT --teacher lidar --checkpoint lidar-only-det.pth
    python -m geomim.teacher cache DATAROOT OUT --teacher histogram --version v1.0-mini --split None

The cache (see `geomim.pretrain.teacher_cache`) is sharded safetensors keyed by sample token;
rerunning the same command after an interruption finishes the missing shards only. Train with it
through a `cache` teacher, which refuses a cache made with another teacher or data source.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `--help` answers before torch loads
    from geomim.training.teacher_factory import TeacherSpec

DTYPES = ("float32", "bfloat16", "float16")  # as geomim.pretrain.teacher_cache.DTYPES


def teacher_spec(kind: str, checkpoint: Path | None) -> TeacherSpec:
    """The spec `--teacher` and `--checkpoint` name (built by the trainer's `build_teacher`)."""
    from geomim.training.teacher_factory import HistogramTeacherSpec, LiDARTeacherSpec

    if kind == "histogram":
        return HistogramTeacherSpec()
    if checkpoint is None:
        raise ValueError("--teacher lidar needs --checkpoint (BEVFusion's lidar-only-det.pth)")
    return LiDARTeacherSpec(checkpoint=str(checkpoint))


def cache(args: argparse.Namespace) -> Path:
    """Run the `cache` subcommand; returns the cache folder."""
    import torch

    from geomim.data.nuscenes import NuScenesMultiView
    from geomim.pretrain.teacher_cache import points_source, write_teacher_cache
    from geomim.training.teacher_factory import build_teacher

    if not args.dataroot.is_dir():
        raise FileNotFoundError(f"dataset folder {args.dataroot} does not exist")
    teacher = build_teacher(teacher_spec(args.teacher, args.checkpoint))
    split = None if args.split in ("None", "all") else args.split
    dataset = NuScenesMultiView(args.dataroot, args.version, split=split, train=False)
    tokens = [str(token) for token in dataset.index.tokens]
    start = time.perf_counter()
    out = write_teacher_cache(
        teacher,
        tokens,
        lambda index: dataset.sample_points(index)[1],
        args.out,
        source=points_source(dataset.version, dataset.seed, dataset.points),
        shard_size=args.shard_size,
        dtype=args.dtype,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        progress=not args.quiet,
    )
    print(f"teacher cache of {len(tokens)} samples in {out} ({time.perf_counter() - start:.1f} s)")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m geomim.teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("cache", help="run a frozen teacher over a dataset once")
    run.add_argument("dataroot", type=Path, help="nuScenes-format folder (v1.0-*/, samples/)")
    run.add_argument("out", type=Path, help="cache folder (created, or resumed)")
    run.add_argument("--teacher", choices=["lidar", "histogram"], default="lidar")
    run.add_argument("--checkpoint", type=Path, help="lidar: lidar-only-det.pth or converted")
    run.add_argument("--version", default="v1.0-trainval", help="tables folder name")
    run.add_argument("--split", default="train", help="official split name, or None for all")
    run.add_argument("--shard-size", type=int, default=64, help="samples per shard file")
    run.add_argument("--dtype", choices=list(DTYPES), default="float32", help="stored maps")
    run.add_argument("--device", help="where the teacher runs (default: cuda if available)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; a bad input prints one line and exits 2 (--debug: the traceback)."""
    args = parse_args(argv)
    try:
        if args.command == "cache":
            cache(args)
    except (ValueError, OSError) as error:  # bad paths, checkpoints, configs, cache mismatches
        if args.debug:
            raise
        print(f"python -m geomim.teacher {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
