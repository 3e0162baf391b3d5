"""Backbones registered with timm (importing this module registers them)."""

from geomim.architectures import CVA_VIT_ARCHITECTURES, SWIN_ARCHITECTURES
from geomim.models import swin
from geomim.models.cva_vit import GeoMIMViT
from geomim.models.cva_vit_zoo import geomim_vit_base, geomim_vit_large, geomim_vit_small
from geomim.models.swin import GeoMIMSwin
from geomim.models.swin_convert import official_swin_to_geomim, swin_checkpoint_filter_fn
from geomim.models.swin_zoo import geomim_base, geomim_large, geomim_test

__all__ = [
    "GeoMIMSwin",
    "GeoMIMViT",
    "geomim_base",
    "geomim_large",
    "geomim_test",
    "geomim_vit_base",
    "geomim_vit_large",
    "geomim_vit_small",
    "masked_encoder_kwargs",
    "official_swin_to_geomim",
    "swin_checkpoint_filter_fn",
]


def masked_encoder_kwargs(name: str) -> dict:
    """What `timm.create_model(name, ...)` needs for an encoder of masked pretraining
    (`forward_masked`): a GeoMIM Swin builds its stage 2 and 3 output norms; a CVA-ViT nothing
    (its masked mode does not use the pyramid)."""
    if name in SWIN_ARCHITECTURES:
        return {"out_indices": swin.MASKED_STAGES}
    if name in CVA_VIT_ARCHITECTURES:
        return {}
    known = sorted({*SWIN_ARCHITECTURES, *CVA_VIT_ARCHITECTURES})
    raise ValueError(f"{name!r} is no GeoMIM encoder; expected one of {known}")
