"""Official LiDAR teacher weights (BEVFusion's `lidar-only-det.pth`) -> `SparseEncoder` state dicts.

Accepted forms: the whole BEVFusion detector (the encoder under `encoders.lidar.backbone.` inside
`state_dict`; heads, decoder and fuser dropped and reported), the encoder's own official keys, and
our converted safetensors. Official sparse conv weights are in the in-tree spconv 1.x layout
(k0, k1, k2, in, out), kernel axes (X, Y, Z), not flipped; spconv 2 holds (out, k0, k1, k2, in).

    python -m geomim.lidar.convert lidar-only-det.pth lidar-teacher.safetensors
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the checkpoint tools load where used: `--help` answers at once
    from torch import Tensor, nn

    from geomim.lidar.sparse_encoder import SparseEncoderConfig

OFFICIAL_PREFIX = "encoders.lidar.backbone."
OFFICIAL_ENCODER_KEY = re.compile(r"^(conv_input|encoder_layers|conv_out)\.")


def _in_stage(template: str) -> Callable[[re.Match], str]:
    """A replacement shifting the official 1-based stage number (group 1) to our 0-based one."""
    return lambda match: template.format(int(match[1]) - 1, *match.groups()[1:])


# Official name -> ours. Stage blocks 0..n-1 are basic blocks, block n the stride-2 conv module.
OFFICIAL_RENAMES = (
    (re.compile(r"^conv_input\.0\."), "stem.conv."),
    (re.compile(r"^conv_input\.1\."), "stem.norm."),
    (
        re.compile(r"^encoder_layers\.encoder_layer(\d+)\.(\d+)\.conv(\d)\."),
        _in_stage("stages.{0}.blocks.{1}.conv{2}."),
    ),
    (
        re.compile(r"^encoder_layers\.encoder_layer(\d+)\.(\d+)\.bn(\d)\."),
        _in_stage("stages.{0}.blocks.{1}.norm{2}."),
    ),
    (
        re.compile(r"^encoder_layers\.encoder_layer(\d+)\.\d+\.0\."),
        _in_stage("stages.{0}.downsample.conv."),
    ),
    (
        re.compile(r"^encoder_layers\.encoder_layer(\d+)\.\d+\.1\."),
        _in_stage("stages.{0}.downsample.norm."),
    ),
    (re.compile(r"^conv_out\.0\."), "to_bev.conv."),
    (re.compile(r"^conv_out\.1\."), "to_bev.norm."),
)


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion kept and dropped (dropped keys counted by prefix)."""

    kept: int
    dropped: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        dropped = ", ".join(f"{prefix}* ({count})" for prefix, count in self.dropped.items())
        return f"kept {self.kept} LiDAR encoder tensors; dropped {sum(self.dropped.values())}" + (
            f": {dropped}" if dropped else ""
        )


def official_lidar_to_geomim(
    state_dict: dict[str, Tensor],
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Select the LiDAR encoder of any accepted form, rename it and permute its conv weights."""
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if any(key.startswith(OFFICIAL_PREFIX) for key in state_dict):
        encoder = {
            k[len(OFFICIAL_PREFIX) :]: v
            for k, v in state_dict.items()
            if k.startswith(OFFICIAL_PREFIX)
        }
        others = [key for key in state_dict if not key.startswith(OFFICIAL_PREFIX)]
    else:
        encoder, others = state_dict, []
    converted = {}
    for key, value in encoder.items():
        if OFFICIAL_ENCODER_KEY.match(key):
            if (
                value.ndim == 5
            ):  # spconv 1.x (k0, k1, k2, in, out) -> spconv 2 (out, k0, k1, k2, in)
                value = value.permute(4, 0, 1, 2, 3).contiguous()
            for pattern, replacement in OFFICIAL_RENAMES:
                key = pattern.sub(replacement, key)
        converted[key] = value  # ours (a converted file) or unknown: fit_to_model names it
    dropped = Counter(_group(key) for key in others)
    return converted, ConversionReport(len(converted), dict(sorted(dropped.items())))


def lidar_checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: nn.Module
) -> dict[str, Tensor]:
    """Any accepted form fitted to a `SparseEncoder` with every key accounted for, or raise."""
    from geomim.checkpoints import fit_to_model

    converted, _ = official_lidar_to_geomim(state_dict)
    return fit_to_model(converted, model, "LiDAR sparse encoder")


def convert_lidar_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    config: SparseEncoderConfig | None = None,
) -> ConversionReport:
    """Convert an official LiDAR checkpoint to our safetensors (checked against the encoder)."""
    from geomim.checkpoints import fit_to_model, read_checkpoint, save_safetensors_atomic
    from geomim.lidar.sparse_encoder import SparseEncoder

    converted, report = official_lidar_to_geomim(read_checkpoint(source))
    fitted = fit_to_model(converted, SparseEncoder(config), "LiDAR sparse encoder")
    save_safetensors_atomic(fitted, target, metadata={"format": "geomim-lidar-sparse-encoder"})
    return report


def _group(key: str) -> str:
    """Up to two leading name components: `heads.object.`, `decoder.backbone.`, `fuser.`."""
    parts = key.split(".")
    return ".".join(parts[: min(2, len(parts) - 1)]) + "."


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m geomim.lidar.convert SOURCE TARGET.safetensors`."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.lidar.convert", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source", help="lidar-only-det.pth or an encoder state dict")
    parser.add_argument("target", help="output .safetensors")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    args = parser.parse_args(argv)
    try:
        print(convert_lidar_checkpoint(args.source, args.target))
    except (ValueError, OSError) as error:  # CheckpointError, a missing or unreadable file
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
