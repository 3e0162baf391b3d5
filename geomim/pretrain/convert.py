"""Official pretraining checkpoints (`SwinTransformerBEV`) -> `CameraBranch` state dicts."""

from __future__ import annotations

import re

from torch import Tensor, nn

from geomim.checkpoint_layouts import PRETRAIN_DECODER_KEYS
from geomim.checkpoints import fit_to_model
from geomim.models.swin_convert import OFFICIAL_RENAMES, official_swin_to_geomim, select_backbone
from geomim.pretrain.decoder import DecoderConfig

DECODER_RENAMES = (
    (re.compile(r"^up_p4_fc\."), "top_down."),
    (re.compile(r"^up_smooth_p4\."), "smooth."),
    (re.compile(r"^final_norm\."), "smooth_norm."),
    (re.compile(r"^decoder_embed_new\."), "embed."),
    (re.compile(r"^decoder_pos_embed$"), "pos_embed"),
    (re.compile(r"^decoder_blocks_pix\."), "geometry_blocks."),
    (re.compile(r"^decoder_blocks\."), "semantic_blocks."),
    (re.compile(r"^decoder_norm_pix\."), "geometry_norm."),
    (re.compile(r"^decoder_norm\."), "semantic_norm."),
    (re.compile(r"^cam_pose\.bn\."), "camera.norm."),
    (re.compile(r"^cam_pose\.depth_mlp\."), "camera.mlp."),
    (re.compile(r"^cam_pose\.depth_se\.conv_reduce\."), "camera.gate_reduce."),
    (re.compile(r"^cam_pose\.depth_se\.conv_expand\."), "camera.gate_expand."),
)
CROSS_VIEW = re.compile(r"^decoder_cross_module\.(\d+)\.")


def official_pretrain_to_geomim(
    state_dict: dict[str, Tensor], config: DecoderConfig | None = None
) -> dict[str, Tensor]:
    """Rename an official pretraining checkpoint (any wrapping) to `CameraBranch` keys."""
    config = config or DecoderConfig()
    state_dict = select_backbone(state_dict)
    converted = {f"encoder.{k}": v for k, v in official_swin_to_geomim(state_dict).items()}
    # The official cross-view blocks form one list: the semantic ones, then the geometry ones.
    cross_view = [f"semantic_cross_view.{i}." for i in config.semantic_cross_view]
    cross_view += [f"geometry_cross_view.{i}." for i in config.geometry_cross_view]
    for key, value in state_dict.items():
        if not PRETRAIN_DECODER_KEYS.match(key) or key.endswith("relative_position_index"):
            continue
        for pattern, replacement in (*DECODER_RENAMES, *OFFICIAL_RENAMES):
            key = pattern.sub(replacement, key)
        match = CROSS_VIEW.match(key)
        if match:
            key = cross_view[int(match.group(1))] + key[match.end() :]
        converted[f"decoder.{key}"] = value
    return converted


def pretrain_checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict:
    """An official pretraining checkpoint fitted to a `CameraBranch`, every key accounted for."""
    converted = official_pretrain_to_geomim(state_dict, model.decoder.config)
    return fit_to_model(converted, model, "GeoMIM pretraining camera branch")
