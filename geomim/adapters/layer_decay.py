"""Layer-wise learning-rate decay over the GeoMIM backbones inside a detector, as the official
BEVDet fine-tuning does it, in plain PyTorch parameter groups.

Layer ids (official): 0 for the patch and position embeddings, 1..sum(depths) for the Swin blocks
in order (a patch merging counts with the first block of the next stage), num_layers + 1 for
everything else (the output norms, the neck, the heads). A parameter of layer i learns at
lr * decay_rate ** (num_layers + 1 - i); biases and 1-D tensors get no weight decay.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from geomim.adapters.backbone import GeoMIMBackbone
from geomim.models.swin import GeoMIMSwin

_BLOCK = re.compile(r"^stages\.(\d+)\.(?:(?:blocks|cva)\.(\d+)|downsample)\.")


def swin_layer_id(name: str, depths: Sequence[int]) -> int | None:
    """The official layer id of a `GeoMIMSwin` parameter; None outside the embedding and blocks.
    A cross-view block counts with the Swin block it follows."""
    if name == "absolute_pos_embed" or name.startswith("patch_embed."):
        return 0
    match = _BLOCK.match(name)
    if match is None:
        return None
    stage = int(match.group(1))
    if match.group(2) is None:  # the patch merging after the stage
        return sum(depths[: stage + 1]) + 1
    return sum(depths[:stage]) + int(match.group(2)) + 1


def layer_decay_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay_rate: float,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups of `model` (a whole detector) with layer-wise decay over every
    `GeoMIMBackbone` in it; `num_layers` defaults to the backbone's block count (24 for Swin-B,
    the official setting)."""
    layer_of: dict[str, int] = {}
    for prefix, backbone in model.named_modules():
        if not isinstance(backbone, GeoMIMBackbone):
            continue
        swin = backbone.model
        if not isinstance(swin, GeoMIMSwin):
            raise ValueError(
                f"layer-wise decay is defined for GeoMIM Swin backbones, got "
                f"{type(swin).__name__} at {prefix or 'the top level'}"
            )
        depths = [len(stage.blocks) for stage in swin.stages]
        num_layers = sum(depths) if num_layers is None else num_layers
        if num_layers < sum(depths):
            raise ValueError(
                f"num_layers must count at least the {sum(depths)} blocks of the backbone at "
                f"{prefix or 'the top level'}, got {num_layers}"
            )
        model_prefix = f"{prefix}.model." if prefix else "model."
        for name, _ in swin.named_parameters():
            layer = swin_layer_id(name, depths)
            if layer is not None:
                layer_of[model_prefix + name] = layer
    if num_layers is None:
        raise ValueError(f"expected a GeoMIMBackbone inside the model, got {type(model).__name__}")

    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue  # frozen stages
        layer = layer_of.get(name, num_layers + 1)
        no_decay = parameter.ndim == 1 or name.endswith(".bias")
        if (layer, no_decay) not in groups:
            scale = decay_rate ** (num_layers + 1 - layer)
            groups[layer, no_decay] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[layer, no_decay]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]
