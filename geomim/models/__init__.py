"""Backbones registered with timm (importing this module registers them)."""

from geomim.models.swin import GeoMIMSwin, geomim_base, geomim_large, geomim_test
from geomim.models.swin_convert import checkpoint_filter_fn, official_to_geomim

__all__ = [
    "GeoMIMSwin",
    "checkpoint_filter_fn",
    "geomim_base",
    "geomim_large",
    "geomim_test",
    "official_to_geomim",
]
