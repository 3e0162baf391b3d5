"""The command line of `generate`: an option per `SyntheticConfig` field, checked before writing."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from geomim.data.synthetic.config import SyntheticConfig
from geomim.data.synthetic.writer import generate

OPTION_HELP = {
    "scenes": "number of scenes",
    "samples_per_scene": "key frames (2 Hz) per scene",
    "sweeps_per_sample": "LiDAR sweeps (20 Hz) before each key frame",
    "seed": "seed of the worlds, the drives and the tokens",
    "width": "camera image width, pixels",
    "height": "camera image height, pixels",
    "beams": "LiDAR beams (rings)",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m geomim.data.synthetic OUT_DIR [--scenes S ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.data.synthetic",
        description="Synthetic nuScenes: small datasets in the exact `v1.0-mini` layout, "
        "rendered from a 3D world (the official devkit loads them).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="dataset root (the devkit's dataroot)")
    for spec in dataclasses.fields(SyntheticConfig):
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=int,
            default=spec.default,
            help=OPTION_HELP[spec.name],
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = vars(parser.parse_args(argv))
    out_dir, quiet = args.pop("out_dir"), args.pop("quiet")
    try:
        SyntheticConfig(**args)
    except ValueError as error:
        parser.error(str(error))  # a usage error, before anything is written
    generate(out_dir, progress=not quiet, **args)
    if not quiet:
        print(f"{out_dir}: {args['scenes']} scenes x {args['samples_per_scene']} samples")
