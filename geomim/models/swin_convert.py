"""Official GeoMIM Swin checkpoints -> `GeoMIMSwin` state dicts (`swin_checkpoint_filter_fn`,
timm's `pretrained_filter_fn` for the Swin models).

Accepted forms: the released backbone (`SwinTransformerBEVFT` keys), the pretraining checkpoint
(`encoders.camera.backbone.` inside `state_dict`, decoder keys dropped), detector checkpoints
(BEVDet / mmdet3d `img_backbone.`, BEVDepth `model.backbone.img_backbone.`, BEVFusion
`encoders.camera.backbone.`; with the official backbone class or geomim's `GeoMIMBackbone`
adapter), `backbone.` / `module.` prefixes, and our own safetensors.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from timm.layers import resize_rel_pos_bias_table
from torch import Tensor, nn

from geomim.architectures import SWIN_ARCHITECTURES as ARCHITECTURES
from geomim.checkpoint_layouts import ADAPTER_PREFIX, BACKBONE_PREFIXES, PRETRAIN_DECODER_KEYS
from geomim.checkpoints import CheckpointError, fit_to_model

# The output norms, built per out_indices (the official model builds them for its out_indices).
STAGE_NORM_KEYS = re.compile(r"^stage_norms\.")
# Official name -> our name. Each rule leaves already-converted names untouched.
OFFICIAL_RENAMES = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"\.attn\.w_msa\."), ".attn."),
    (re.compile(r"\.ffn\.layers\.0\.0\."), ".mlp.fc1."),
    (re.compile(r"\.ffn\.layers\.1\."), ".mlp.fc2."),
    (re.compile(r"^norm(\d+)\."), r"stage_norms.\1."),
)


@dataclass(frozen=True)
class BackboneSplit:
    """A checkpoint's camera-backbone tensors (wrapper prefixes removed) and what else it holds."""

    tensors: dict[str, Tensor]
    prefix: str  # where the backbone was found; "" when the checkpoint is a backbone alone
    left_aside: dict[str, int]  # group of keys the backbone conversion does not use -> tensors

    def summary(self) -> str:
        """A few lines for people: where the backbone was, what was dropped."""
        where = f"under {self.prefix!r}" if self.prefix else "at the top level"
        lines = [f"camera backbone: {len(self.tensors)} tensors {where}"]
        if self.left_aside:
            total = sum(self.left_aside.values())
            lines.append(f"dropped: {total} tensors in {len(self.left_aside)} groups")
            shown = sorted(self.left_aside.items(), key=lambda item: (-item[1], item[0]))
            lines += [f"  {group}: {count}" for group, count in shown[:12]]
            if len(shown) > 12:
                lines.append(f"  ... {len(shown) - 12} more groups")
        return "\n".join(lines)


def split_backbone(state_dict: dict[str, Tensor]) -> BackboneSplit:
    """Find the camera backbone in any official, detector or wrapped checkpoint."""
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    prefix = _backbone_prefix(state_dict)
    tensors = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if tensors and all(key.startswith(ADAPTER_PREFIX) for key in tensors):
        tensors = {key[len(ADAPTER_PREFIX) :]: value for key, value in tensors.items()}
    depth = max(1, prefix.count("."))
    left_aside = Counter(_group(key, depth) for key in state_dict if not key.startswith(prefix))
    decoder = sum(1 for key in tensors if PRETRAIN_DECODER_KEYS.match(key))
    if decoder:
        left_aside[f"{prefix}(pretraining decoder)"] = decoder
    return BackboneSplit(tensors, prefix, dict(left_aside))


def select_backbone(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The camera backbone's tensors of any official checkpoint, without wrapper prefixes."""
    return split_backbone(state_dict).tensors


def _backbone_prefix(state_dict: dict[str, Tensor]) -> str:
    """The key prefix ending in the first of `BACKBONE_PREFIXES` found at a name boundary (the
    one most keys share, if several), or "" for a bare backbone."""
    for marker in BACKBONE_PREFIXES:
        found = Counter()
        for key in state_dict:
            if key.startswith(marker):
                found[marker] += 1
            elif (at := key.find("." + marker)) >= 0:
                found[key[: at + 1 + len(marker)]] += 1
        if found:
            return min(found, key=lambda prefix: (-found[prefix], len(prefix)))
    return ""


def _group(key: str, depth: int) -> str:
    """The first `depth` names of a key, never its last (the tensor's own name)."""
    names = key.split(".")
    if len(names) == 1:
        return "(top-level tensors)"  # e.g. the `ema_*` buffers of mmdet's EMA hooks
    names = names[: min(depth, len(names) - 1)]
    while len(names) > 1 and names[-1].isdigit():  # "fuser.0" -> "fuser"
        names.pop()
    return ".".join(names)


def official_swin_to_geomim(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Select the backbone's tensors from any official form and rename them to ours."""
    converted = {}
    for key, value in select_backbone(state_dict).items():
        if key.endswith("relative_position_index") or PRETRAIN_DECODER_KEYS.match(key):
            continue  # index buffers carry nothing learned; decoder weights are not the backbone's
        for pattern, replacement in OFFICIAL_RENAMES:
            key = pattern.sub(replacement, key)
        converted[key] = value
    if "absolute_pos_embed" in converted:
        converted["absolute_pos_embed"] = _pos_embed_as_grid(converted["absolute_pos_embed"])
    return converted


def swin_checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert an official or geomim state dict to exactly `model`'s keys and shapes, or raise.

    The output norms a model builds depend on its `out_indices` (a classifier has only the last
    stage's): the checkpoint's norms of other stages are dropped (and logged)."""
    converted = official_swin_to_geomim(state_dict)
    _check_variant(converted, model.state_dict())
    return fit_to_model(
        converted,
        model,
        "GeoMIM Swin backbone",
        resize=_resize_relative_table,
        optional=STAGE_NORM_KEYS,
    )


def _pos_embed_as_grid(pos_embed: Tensor) -> Tensor:
    """(1, L, C) with L a square -> (1, C, sqrt(L), sqrt(L)); (1, C, H, W) passes through."""
    if pos_embed.ndim == 4:
        return pos_embed
    if pos_embed.ndim != 3 or math.isqrt(pos_embed.shape[1]) ** 2 != pos_embed.shape[1]:
        raise CheckpointError(
            "absolute_pos_embed: expected (1, C, H, W) or (1, L, C) with L a square, "
            f"got {tuple(pos_embed.shape)}"
        )
    side = math.isqrt(pos_embed.shape[1])
    return pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2).contiguous()


def _resize_relative_table(key: str, table: Tensor, expected: Tensor) -> Tensor:
    """A ((2w-1)^2, heads) table made for another window, resampled to the model's window
    (BEiT-style geometric progression); any other tensor is returned as it is."""
    rows, shape = table.shape[0], tuple(expected.shape)
    is_other_window = (
        key.endswith("relative_position_bias_table")
        and table.ndim == 2
        and table.shape[1] == shape[1]
        and math.isqrt(rows) ** 2 == rows
    )
    if not is_other_window:
        return table
    window = (math.isqrt(shape[0]) + 1) // 2
    return resize_rel_pos_bias_table(table, (window, window), shape)


def _check_variant(found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Name both variants when the checkpoint's embedding width is not the model's."""
    stem = "patch_embed.proj.weight"
    if stem not in found or found[stem].shape == expected[stem].shape:
        return

    def variant_with(dim: int) -> str:
        names = [name for name, arch in ARCHITECTURES.items() if arch["embed_dim"] == dim]
        return f"embed dim {dim}" + (f" ({names[0]})" if names else "")

    raise CheckpointError(
        f"checkpoint is for a Swin with {variant_with(found[stem].shape[0])}, "
        f"but the model has {variant_with(expected[stem].shape[0])}: pick the matching variant"
    )
