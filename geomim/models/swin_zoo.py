"""The GeoMIM Swin models as timm registers them: `geomim_test`, `geomim_base`, `geomim_large`,
their pretrained cfgs (Hub names, input size, licence) and where their weights come from."""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model

from geomim.architectures import SWIN_ARCHITECTURES
from geomim.models._factory import backbone_cfg, create_backbone
from geomim.models.swin import GeoMIMSwin
from geomim.models.swin_convert import swin_checkpoint_filter_fn

HF_HUB_ORG = "geomim"


def _cfg(variant: str, tag: str, input_size: tuple[int, int, int] = (3, 256, 704), **overrides):
    """Swin features leave at stride 32; any image of one 4 x 4 patch or more is accepted."""
    official = dict(
        hf_hub_id=f"{HF_HUB_ORG}/{variant}.{tag}",
        paper_name="GeoMIM: Towards Better 3D Knowledge Transfer via Masked Image Modeling "
        "for Multi-view 3D Understanding",
        origin_url="https://github.com/Sense-X/GeoMIM",
        license="unspecified (the official repository declares no licence)",
    )
    return backbone_cfg(input_size, feature_stride=32, min_side=4, **{**official, **overrides})


default_cfgs = generate_default_cfgs(
    {
        "geomim_base.nuscenes": _cfg("geomim_base", "nuscenes"),
        "geomim_large.nuscenes": _cfg("geomim_large", "nuscenes"),
        "geomim_test.random": _cfg(
            "geomim_test",
            "random",
            input_size=(3, 128, 352),
            license="apache-2.0",
            notes=("random weights for tests and demos, no release behind them",),
        ),
    }
)


OFFICIAL_WEIGHTS_HELP = (
    "The official GeoMIM release is a .pth file from https://github.com/Sense-X/GeoMIM. "
    "Either load it directly:\n"
    "    timm.create_model({variant!r}, pretrained=True, "
    "pretrained_cfg_overlay=dict(file='/path/to/{variant}.pth'))\n"
    "or convert it once into a Hub-style folder and load that:\n"
    "    python -m geomim.hub convert /path/to/{variant}.pth ./{variant} --variant {variant}\n"
    "    timm.create_model({variant!r}, pretrained=True, "
    "pretrained_cfg_overlay=dict(file='./{variant}/model.safetensors'))\n"
    "With the Hugging Face cache populated (or HF_HUB_OFFLINE=0 and network access), "
    "pretrained=True alone resolves the Hub copy."
)


def _create_geomim_swin(variant: str, pretrained: bool = False, **kwargs) -> GeoMIMSwin:
    return create_backbone(
        GeoMIMSwin,
        variant,
        pretrained,
        filter_fn=swin_checkpoint_filter_fn,
        how_to_get_weights=OFFICIAL_WEIGHTS_HELP,
        default_out_indices=(2, 3),
        **{**SWIN_ARCHITECTURES[variant], **kwargs},
    )


@register_model
def geomim_test(pretrained: bool = False, **kwargs) -> GeoMIMSwin:
    """Tiny GeoMIM Swin (C=16) with the same code path, for tests and demos."""
    return _create_geomim_swin("geomim_test", pretrained, **kwargs)


@register_model
def geomim_base(pretrained: bool = False, **kwargs) -> GeoMIMSwin:
    """GeoMIM Swin-B (C=128): outputs 512 @ /16 and 1024 @ /32."""
    return _create_geomim_swin("geomim_base", pretrained, **kwargs)


@register_model
def geomim_large(pretrained: bool = False, **kwargs) -> GeoMIMSwin:
    """GeoMIM Swin-L (C=192): outputs 768 @ /16 and 1536 @ /32."""
    return _create_geomim_swin("geomim_large", pretrained, **kwargs)
