# GeoMIM Swin-B as the camera branch of BEVFusion (mmdet3d 1.x, projects/BEVFusion).
#
# Put this file in mmdetection3d's projects/BEVFusion/configs/ and train it as the base config:
#     pip install "geomim[mmdet3d]"
#     python tools/train.py projects/BEVFusion/configs/bevfusion_geomim_base.py
# The camera branch takes stride 8, 16 and 32 maps into GeneralizedLSSFPN and the view transform
# at stride 8 (feature_size 32 x 88), as with BEVFusion's Swin-T; GeoMIM's are 256, 512 and
# 1024 channels wide instead of 192, 384 and 768.
#
# mit-han-lab/bevfusion (mmcv 1.x, YAML configs): add `import geomim.adapters.mmdet3d` to
# tools/train.py and tools/test.py, then in the model YAML:
#     encoders:
#       camera:
#         backbone:
#           type: GeoMIMBackbone
#           model_name: geomim_base
#           checkpoint: /path/to/geomim_base.pth
#           out_indices: [1, 2, 3]
#           drop_path_rate: 0.2
#           with_cp: true
#         neck:
#           in_channels: [256, 512, 1024]
#
# Results: GeoMIM itself was pretrained inside BEVFusion's code base, but the paper and repository
# publish fine-tuning results for BEVDet only (bevdet_geomim_base.py: 42.25 mAP / 53.1 NDS, BEVDet4D
# Swin-B 256 x 704). There is no official BEVFusion + GeoMIM number to reproduce; compare with
# the BEVFusion config you start from.

_base_ = ["./bevfusion_lidar-cam_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py"]

custom_imports = dict(
    imports=["projects.BEVFusion.bevfusion", "geomim.adapters.mmdet3d"],
    allow_failed_imports=False,
)

model = dict(
    img_backbone=dict(
        _delete_=True,  # drop mmdet.SwinTransformer's arguments
        type="GeoMIMBackbone",
        model_name="geomim_base",
        checkpoint="/path/to/geomim_base.pth",
        out_indices=(1, 2, 3),  # 256 @ /8, 512 @ /16, 1024 @ /32
        drop_path_rate=0.2,
        frozen_stages=-1,
        with_cp=True,
    ),
    img_neck=dict(
        type="GeneralizedLSSFPN",
        in_channels=[256, 512, 1024],
        out_channels=256,  # the view transform's in_channels, unchanged
        start_level=0,
        num_outs=3,
    ),
)
