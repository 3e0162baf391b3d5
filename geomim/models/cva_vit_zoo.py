"""The CVA-ViT models as timm registers them: `geomim_vit_small`, `geomim_vit_base`,
`geomim_vit_large`, their pretrained cfgs and where their weights come from."""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model

from geomim.architectures import CVA_VIT_ARCHITECTURES
from geomim.models._factory import backbone_cfg, create_backbone
from geomim.models.cva_vit import GeoMIMViT
from geomim.models.cva_vit_convert import cva_vit_checkpoint_filter_fn

WEIGHTS_HELP = (
    "No CVA-ViT weights have been released yet; load a checkpoint of your own:\n"
    "    timm.create_model({variant!r}, pretrained=True, "
    "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors'))"
)

default_cfgs = generate_default_cfgs(
    {
        f"{variant}.nuscenes": backbone_cfg(
            (3, 256, 704),
            feature_stride=16,  # forward_features: the stride-16 map
            min_side=16,
            hf_hub_id=f"geomim/{variant}.nuscenes",
            license="apache-2.0",
            notes=("input: whole rigs of num_views images, (B, N, 3, H, W) or (B*N, 3, H, W)",),
        )
        for variant in CVA_VIT_ARCHITECTURES
    }
)


def _create_geomim_vit(variant: str, pretrained: bool = False, **kwargs) -> GeoMIMViT:
    return create_backbone(
        GeoMIMViT,
        variant,
        pretrained,
        filter_fn=cva_vit_checkpoint_filter_fn,
        how_to_get_weights=WEIGHTS_HELP,
        default_out_indices=(0, 1, 2),
        **{**CVA_VIT_ARCHITECTURES[variant], **kwargs},
    )


@register_model
def geomim_vit_small(pretrained: bool = False, **kwargs) -> GeoMIMViT:
    """CVA-ViT-S/16 (384 wide, 12 blocks, CVA after blocks 2, 5, 8, 11)."""
    return _create_geomim_vit("geomim_vit_small", pretrained, **kwargs)


@register_model
def geomim_vit_base(pretrained: bool = False, **kwargs) -> GeoMIMViT:
    """CVA-ViT-B/16 (768 wide, 12 blocks, CVA after blocks 2, 5, 8, 11)."""
    return _create_geomim_vit("geomim_vit_base", pretrained, **kwargs)


@register_model
def geomim_vit_large(pretrained: bool = False, **kwargs) -> GeoMIMViT:
    """CVA-ViT-L/16 (1024 wide, 24 blocks, CVA after blocks 5, 11, 17, 23)."""
    return _create_geomim_vit("geomim_vit_large", pretrained, **kwargs)
