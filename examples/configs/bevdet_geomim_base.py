# GeoMIM Swin-B in BEVDet4D at 256 x 704 (BEVDet on mmcv 1.x; the official GeoMIM fine-tuning).
#
# Put this file in the configs/ folder of the GeoMIM fork of BEVDet (Sense-X/GeoMIM, bevdet/),
# beside bevdet_geomim/, and train it as any BEVDet config:
#     pip install "geomim[mmdet3d]"       # in BEVDet's environment; mmengine only for 1.x
#     python tools/train.py configs/bevdet_geomim_base.py
# It takes the official config and swaps the official SwinTransformerBEVFT for geomim's
# GeoMIMBackbone: the same network and weights (outputs equal to 1e-5 on the official fixture).
# The weights: the released geomim_base.pth, our converted model.safetensors, or a BEVDet /
# BEVDepth / BEVFusion checkpoint (its camera backbone is taken out).
#
# Official results this reproduces (nuScenes val, GeoMIM README):
#     bevdet-swinb-4d-256x704-cbgs-geomim    mAP 42.25  NDS 53.1
#     the same with ImageNet-style Swin-B    mAP 33.98  NDS 47.19  (bevdet-swinb-4d-256x704-cbgs)
# The 4D-stereo configs (45.33 / 55.1 at 256 x 704, 52.04 / 60.92 at 512 x 1408) need BEVDet's
# BEVStereo4D, whose extract_stereo_ref_feat reaches into the official Swin's attributes
# (patch_embed.DH, drop_after_pos, stages[0] returning four values): it does not run with
# GeoMIMBackbone as is.

_base_ = ["./bevdet_geomim/bevdet-swinb-4d-256x704-cbgs-geomim.py"]

custom_imports = dict(imports=["geomim.adapters.mmdet3d"], allow_failed_imports=False)

model = dict(
    img_backbone=dict(
        _delete_=True,  # drop the official SwinTransformerBEVFT's arguments
        type="GeoMIMBackbone",
        model_name="geomim_base",
        checkpoint="/path/to/geomim_base.pth",
        out_indices=(2, 3),  # 512 channels @ /16, 1024 @ /32 (both LayerNorm'd)
        drop_path_rate=0.2,
        frozen_stages=-1,
        with_cp=False,
    ),
    img_neck=dict(
        type="FPN_LSS",
        in_channels=512 + 1024,  # the two GeoMIM maps, the /32 one upsampled x2 and concatenated
        out_channels=256,  # 512 in the 4D-stereo configs
        extra_upsample=None,
        input_feature_index=(0, 1),
        scale_factor=2,
    ),
    img_view_transformer=dict(in_channels=256),
)

# The official run's layer-wise learning-rate decay (0.8 over the 24 Swin blocks; weight decay
# off for biases and 1-D tensors). The fork's LayerDecayOptimizerConstructor only recognises its
# own Swin class, so geomim registers an equivalent that knows GeoMIMBackbone.
optimizer = dict(
    _delete_=True,
    type="AdamW",
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
    constructor="GeoMIMLayerDecayOptimizerConstructor",
    paramwise_cfg=dict(decay_rate=0.8, num_layers=24),
)
optimizer_config = dict(grad_clip=dict(max_norm=5, norm_type=2))
