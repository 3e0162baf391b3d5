"""Backbones registered with timm (importing this module registers them)."""

from geomim.models.cva_vit import GeoMIMViT, geomim_vit_base, geomim_vit_large, geomim_vit_small
from geomim.models.swin import GeoMIMSwin, geomim_base, geomim_large, geomim_test
from geomim.models.swin_convert import checkpoint_filter_fn, official_to_geomim

__all__ = [
    "GeoMIMSwin",
    "GeoMIMViT",
    "checkpoint_filter_fn",
    "geomim_base",
    "geomim_large",
    "geomim_test",
    "geomim_vit_base",
    "geomim_vit_large",
    "geomim_vit_small",
    "official_to_geomim",
]
