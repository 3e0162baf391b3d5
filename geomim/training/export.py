"""A pretraining run's encoder as a timm backbone folder (weights, config, model card), and the
backbone of a run or weights file for deployment; the command line is `geomim.export`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from geomim.hub import WEIGHTS_NAME, write_timm_folder
from geomim.models import masked_encoder_kwargs
from geomim.training.checkpointing import (
    checkpoint_problem,
    latest_checkpoint,
    read_model_weights,
    read_train_state,
    step_folders,
)
from geomim.training.config import TrainConfig, dump_config, load_config
from geomim.training.startup import CONFIG_FILE

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
    name = config.model.encoder
    step = state["progress"]["step"]
    height, width = config.model.view_transform.image_size
    encoder.pretrained_cfg = {  # what config.json tells timm about these weights
        **encoder.pretrained_cfg,
        "tag": "geomim_train",
        "license": run_license(config),
        "input_size": (3, height, width),
        "notes": [f"geomim.train run {run_dir}, step {step}, teacher {config.teacher.kind}"],
    }
    weights = encoder.state_dict()
    card = run_model_card(config, state, weights)
    source = f"{run_dir} step {step}"
    return write_timm_folder(
        out_dir, weights, encoder, name, source, card, model_args=encoder_kwargs(config)
    )


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
