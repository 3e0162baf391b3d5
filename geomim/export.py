"""Export a pretraining run's encoder as a timm backbone folder (weights, config, model card), or
a run's or a weights file's backbone for deployment (ONNX, `torch.export` program).

    python -m geomim.export runs/tiny_synthetic exported/tiny
    python -m geomim.export runs/swin_base exported/swin_base \
        --checkpoint runs/swin_base/checkpoints/step-00020000
    python -m geomim.export runs/swin_base deploy/ --format onnx
    python -m geomim.export model.safetensors deploy/ --format onnx --model geomim_base
    python -m geomim.export model.safetensors deploy/ --format exported-program --model geomim_base

The folder holds model.safetensors, timm's config.json and a README.md model card (the run's
config and final metrics), ready for `python -m geomim.hub push` (then `hf-hub:` names load it)
or a local load:
    overlay = dict(file="exported/tiny/model.safetensors")
    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from geomim._lazy import lazy_attributes

# the library (geomim.training.export) loads on first use, so that `--help` answers at once
LIBRARY = (
    "ENCODER_PREFIX", "deployment_backbone", "encoder_kwargs", "export_run", "load_run_encoder",
    "run_license", "run_model_card",
)  # fmt: skip
__getattr__ = lazy_attributes(__name__, dict.fromkeys(LIBRARY, "geomim.training.export"))

FORMATS = ("timm", "onnx", "exported-program")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing install: a message, no traceback (unless --debug)."""
    from geomim.deploy import ExportCheckError

    return (OSError, ValueError, TypeError, ImportError, ExportCheckError)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (`python -m geomim.export --help`)."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("source", help="a run folder (with config.yaml) or a weights file with --model")
    add("out_dir", help="where the files go (created if missing)")
    add("--format", choices=FORMATS, default="timm",
        help="timm: model.safetensors, config.json, README.md (runs only); onnx: model.onnx; "
        "exported-program: model.pt2 (default: timm)")  # fmt: skip
    add("--model", help="the architecture of a weights file, e.g. geomim_base")
    add("--checkpoint", help="a checkpoint folder of the run (default: its latest)")
    add("--out-indices", type=int, nargs="+",
        help="stages to output (default: the model's features_only outputs)")  # fmt: skip
    add("--image-size", type=int, nargs=2, metavar=("H", "W"),
        help="input size (default: the run's training size, else 256 704)")  # fmt: skip
    add("--views", type=int, help="cameras per rig (default: the run's, else 6)")
    add("--fixed-rigs", action="store_true", help="one rig per call, not a dynamic rig count")
    add("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring (`python -m geomim.export --help`)."""
    args = parse_args(argv)
    try:
        print(export_command(args))
    except Exception as error:
        if args.debug or not isinstance(error, expected_errors()):
            raise
        print(f"python -m geomim.export: error: {error}", file=sys.stderr)
        sys.exit(2)


def export_command(args: argparse.Namespace) -> str:
    """Carry out one export; the line that says what was written."""
    from geomim.hub import WEIGHTS_NAME
    from geomim.training.export import deployment_backbone, export_run

    if args.format == "timm":
        if args.model is not None or not Path(args.source).is_dir():
            raise ValueError("--format timm exports a run folder; for a weights file choose "
                             "--format onnx or exported-program")  # fmt: skip
        folder = export_run(args.source, args.out_dir, args.checkpoint)
        return f"wrote {folder / WEIGHTS_NAME}, config.json and README.md"
    from geomim.deploy import DEFAULT_IMAGE_SIZE, DEFAULT_VIEWS, to_exported_program, to_onnx

    backbone, trained = deployment_backbone(
        args.source, args.model, args.checkpoint, args.out_indices
    )
    size = tuple(args.image_size or trained.get("image_size", DEFAULT_IMAGE_SIZE))
    views = args.views or trained.get("views", DEFAULT_VIEWS)
    export, filename = (
        (to_onnx, "model.onnx") if args.format == "onnx" else (to_exported_program, "model.pt2")
    )
    report = export(backbone, Path(args.out_dir) / filename, size, views, not args.fixed_rigs)
    rigs = "a dynamic count of" if report.dynamic_rigs else "one"
    return (
        f"wrote {report.path}: {rigs} rig(s) of {views} x 3 x {size[0]} x {size[1]} -> "
        f"{report.output_shapes}; max |difference| to eager PyTorch {report.max_abs_error:.1e}"
    )


if __name__ == "__main__":
    main()
