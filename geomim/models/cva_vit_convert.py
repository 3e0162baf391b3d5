"""CVA-ViT checkpoints -> `GeoMIMViT` state dicts (`cva_vit_checkpoint_filter_fn`, timm's
`pretrained_filter_fn` for the CVA-ViT models): our own keys, the position embedding resized to
the model's patch grid, pyramid levels matched to its `out_indices`."""

from __future__ import annotations

import re

from torch import Tensor, nn

from geomim.checkpoints import fit_to_model

# The pyramid's keys: its levels are built per out_indices, and pretraining trains none.
PYRAMID_KEYS = re.compile(r"^pyramid\.")


def cva_vit_checkpoint_filter_fn(
    state_dict: dict[str, Tensor], model: nn.Module
) -> dict[str, Tensor]:
    """A CVA-ViT state dict (optionally under `module.`) fitted to `model`, position embedding
    resized to the model's grid; missing or unexpected keys are an error that lists them.

    Pyramid levels are built per `out_indices`: those of the checkpoint the model lacks are
    dropped, and levels the checkpoint lacks (an encoder from pretraining) keep their fresh
    initialisation; both are logged."""
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return fit_to_model(
        state_dict,
        model,
        "CVA-ViT",
        resize=_resize_pos_embed,
        optional=PYRAMID_KEYS,
        fresh=PYRAMID_KEYS,
    )


def _resize_pos_embed(key: str, value: Tensor, expected: Tensor) -> Tensor:
    if key != "pos_embed" or value.ndim != 4 or value.shape[1] != expected.shape[1]:
        return value
    return nn.functional.interpolate(
        value, size=expected.shape[-2:], mode="bicubic", align_corners=False
    )
