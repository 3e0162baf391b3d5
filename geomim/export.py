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
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from timm.models._hub import save_config_for_hf
from torch import Tensor, nn

from geomim.checkpoints import save_safetensors_atomic, write_atomic
from geomim.deploy import ExportCheckError
from geomim.hub import WEIGHTS_NAME
from geomim.models import masked_encoder_kwargs
from geomim.training.checkpointing import (
    checkpoint_problem,
    latest_checkpoint,
    read_model_weights,
    read_train_state,
    step_folders,
)
from geomim.training.config import TrainConfig, dump_config, load_config
from geomim.training.engine import CONFIG_FILE

ENCODER_PREFIX = "camera_branch.encoder."


def encoder_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments the pretrainer built its encoder with (besides the name)."""
    return {
        "num_views": config.model.num_views,
        **masked_encoder_kwargs(config.model.encoder),
        **config.model.encoder_kwargs,
    }


def load_run_encoder(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """The trained encoder of a run (its latest checkpoint unless one is named), the run's config
    and the checkpoint's train state."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if path is None:
        problems = [
            f"{folder.name}: {checkpoint_problem(folder)}" for folder in step_folders(run_dir)
        ]
        raise FileNotFoundError(
            f"{run_dir} holds no complete checkpoint"
            + (f" ({'; '.join(problems)})" if problems else "")
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise FileNotFoundError(f"checkpoint {path} cannot be exported: {problem}")
    state = read_train_state(path)
    encoder = timm.create_model(config.model.encoder, **encoder_kwargs(config))
    template = {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
    weights = read_model_weights(path, template)
    encoder.load_state_dict({k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items()})
    state["checkpoint"] = str(path)
    return encoder.eval(), config, state


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Write the run's encoder as model.safetensors, config.json and README.md into `out_dir`."""
    encoder, config, state = load_run_encoder(run_dir, checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = config.model.encoder
    step = state["progress"]["step"]
    metadata = {"format": "pt", "architecture": name, "source": f"{run_dir} step {step}"}
    save_safetensors_atomic(encoder.state_dict(), out_dir / WEIGHTS_NAME, metadata=metadata)
    height, width = config.model.view_transform.image_size
    encoder.pretrained_cfg = {  # what config.json tells timm about these weights
        **encoder.pretrained_cfg,
        "tag": "geomim_train",
        "license": run_license(config),
        "input_size": (3, height, width),
        "notes": [f"geomim.train run {run_dir}, step {step}, teacher {config.teacher.kind}"],
    }
    write_atomic(
        out_dir / "config.json",
        lambda path: save_config_for_hf(encoder, path, model_args=encoder_kwargs(config)),
    )
    card = run_model_card(config, state, encoder.state_dict())
    write_atomic(out_dir / "README.md", lambda path: Path(path).write_text(card))
    return out_dir


def run_license(config: TrainConfig) -> str:
    """The licence of a run's weights: Apache-2.0 (the code's) when trained from scratch; when
    initialised from other weights (`encoder_weights`, e.g. the official release, which declares
    no licence) their licence applies, which we cannot state."""
    return "apache-2.0" if config.encoder_weights is None else "other"


def run_model_card(
    config: TrainConfig, state: Mapping[str, Any], weights: dict[str, Tensor]
) -> str:
    """The README.md of an exported encoder: what it is, how to load it, how it was trained."""
    name = config.model.encoder
    progress = state["progress"]
    params = sum(t.numel() for k, t in weights.items() if not k.startswith("head."))
    kwargs = "".join(f", {k}={v!r}" for k, v in encoder_kwargs(config).items())
    metrics = state.get("metrics", {})
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items() if isinstance(v, float))
    teacher = config.teacher
    teacher_note = (
        "\n**Teacher**: a `HistogramTeacher` stand-in (a fixed function of the LiDAR points), "
        "not the paper's BEVFusion LiDAR detector: these weights demonstrate the pipeline, they "
        "are not GeoMIM-pretrained in the paper's sense.\n"
        if teacher.kind == "histogram"
        else ""
    )
    return f"""---
library_name: timm
license: {run_license(config)}
tags: [geomim, image-feature-extraction, autonomous-driving, bev, masked-image-modeling]
---
# {name}, pretrained with `geomim.train`

The `{name}` encoder ({params:,} parameters) of a GeoMIM pretraining run (masked image modeling
against a frozen LiDAR teacher's BEV features, [arXiv:2303.11325](https://arxiv.org/abs/2303.11325)),
exported from `{state["checkpoint"]}` after {progress["step"]} of {progress["total_steps"]} steps
(global batch {config.train.batch_size}, {progress["dataset_size"]} training samples, data
`{config.data.root}` {config.data.version}).
{teacher_note}
```python
import geomim, timm
backbone = timm.create_model(
    "{name}", pretrained=True, features_only=True{kwargs},
    pretrained_cfg_overlay=dict(file="model.safetensors"),
)
features = backbone(images)  # images (B, N, 3, H, W) or (B*N, 3, H, W), ImageNet-normalised
```

Trained at {config.model.view_transform.image_size[0]} x {config.model.view_transform.image_size[1]}
with {config.model.num_views} cameras; any input size works.

## Final metrics (mean over the last logging window)

| metric | value |
|---|---|
{rows}

## Training config

```yaml
{dump_config(config)}```
"""


FORMATS = ("timm", "onnx", "exported-program")
# errors that mean bad input or a missing install: a message, no traceback (unless --debug)
EXPECTED_ERRORS = (OSError, ValueError, TypeError, ImportError, ExportCheckError)


def deployment_backbone(
    source: str | os.PathLike,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The `features_only` backbone of a run folder (its trained encoder) or of a weights file
    (`model` names its architecture), and what the run says about its input (views, size)."""
    source = Path(source)
    extra = {} if out_indices is None else {"out_indices": tuple(out_indices)}
    if source.is_dir():
        with tempfile.TemporaryDirectory() as folder:
            export_run(source, folder, checkpoint)
            config = load_config(source / CONFIG_FILE)
            backbone = _weights_backbone(
                config.model.encoder, Path(folder) / WEIGHTS_NAME, encoder_kwargs(config) | extra
            )
        view_transform = config.model.view_transform
        return backbone, {"views": config.model.num_views, "image_size": view_transform.image_size}
    if not source.is_file():
        raise FileNotFoundError(f"{source} is neither a run folder nor a weights file")
    if model is None:
        raise ValueError(f"--model NAME is needed to export the weights file {source}")
    if not timm.is_model(model) or not model.startswith("geomim"):
        raise ValueError(
            f"{model!r} is not a GeoMIM model; choose from {timm.list_models('geomim*')}"
        )
    return _weights_backbone(model, source, extra), {}


def _weights_backbone(name: str, weights: Path, kwargs: dict[str, Any]) -> nn.Module:
    overlay = {"file": str(weights)}
    return timm.create_model(
        name, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay, **kwargs
    ).eval()


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
        if args.debug or not isinstance(error, EXPECTED_ERRORS):
            raise
        print(f"python -m geomim.export: error: {error}", file=sys.stderr)
        sys.exit(2)


def export_command(args: argparse.Namespace) -> str:
    """Carry out one export; the line that says what was written."""
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
