"""Export a pretraining run's encoder as a timm backbone folder (weights, config, model card).

    python -m geomim.export runs/tiny_synthetic exported/tiny
    python -m geomim.export runs/swin_base exported/swin_base \
        --checkpoint runs/swin_base/checkpoints/step-00020000

The folder holds model.safetensors, timm's config.json and a README.md model card (the run's
config and final metrics), ready for `python -m geomim.hub push` (then `hf-hub:` names load it)
or a local load:
    overlay = dict(file="exported/tiny/model.safetensors")
    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from timm.models._hub import save_config_for_hf
from torch import Tensor, nn

from geomim.checkpoints import save_safetensors_atomic, write_atomic
from geomim.hub import WEIGHTS_NAME
from geomim.training.checkpointing import latest_checkpoint, read_model_weights, read_train_state
from geomim.training.config import TrainConfig, dump_config, load_config
from geomim.training.engine import CONFIG_FILE

ENCODER_PREFIX = "camera_branch.encoder."


def encoder_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments the pretrainer built its encoder with (besides the name)."""
    return {"num_views": config.model.num_views, **config.model.encoder_kwargs}


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
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint")
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
license: other
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


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m geomim.export RUN_DIR OUT_DIR [--checkpoint PATH]`."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a geomim.train run folder (with config.yaml)")
    parser.add_argument("out_dir", help="folder for model.safetensors, config.json, README.md")
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the run's latest)")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run_dir, args.out_dir, args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"wrote {folder / WEIGHTS_NAME}, config.json and README.md")


if __name__ == "__main__":
    main()
