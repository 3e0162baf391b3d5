# GeoMIM Swin-B as BEVDepth's image backbone (Megvii-BaseDetection/BEVDepth, mmdet 2.x registries).
#
# BEVDepth's experiments are Python files, not mmcv configs: import this fragment in an exps/
# file and put its dicts into `backbone_conf` before the model is built, e.g. in
# exps/nuscenes/mv/bev_depth_lss_r50_256x704_128x128_24e_2key.py:
#     import geomim.adapters.mmdet3d  # registers GeoMIMBackbone in mmdet's BACKBONES
#     from examples.configs.bevdepth_geomim_base import img_backbone_conf, img_neck_conf
#     backbone_conf.update(img_backbone_conf=img_backbone_conf, img_neck_conf=img_neck_conf)
# BaseLSSFPN builds img_backbone_conf with mmdet's build_backbone (then calls its init_weights(),
# a no-op: the weights load at construction), and takes the neck's output at stride 16 (its
# downsample_factor) into the camera-aware depth net (depth_net_conf in_channels 512, unchanged
# from the ResNet-50 experiment).
#
# Results: the GeoMIM paper and repository publish BEVDet numbers only (see
# bevdet_geomim_base.py: 42.25 mAP / 53.1 NDS for BEVDet4D Swin-B 256 x 704); there is no
# official BEVDepth + GeoMIM result to reproduce. The reference point for this setup is BEVDepth's
# own ResNet-50 256 x 704 2-key experiment and, for the backbone's gain, the BEVDet pair
# 47.19 -> 53.1 NDS.

import geomim.adapters.mmdet3d  # noqa: F401

img_backbone_conf = dict(
    type="GeoMIMBackbone",
    model_name="geomim_base",
    checkpoint="/path/to/geomim_base.pth",
    out_indices=(2, 3),  # 512 @ /16, 1024 @ /32
    drop_path_rate=0.2,
    frozen_stages=-1,
    with_cp=True,  # BEVDepth's 2-key experiments run the backbone on two frames
)
img_neck_conf = dict(
    type="SECONDFPN",
    in_channels=[512, 1024],
    upsample_strides=[1, 2],  # both to stride 16
    out_channels=[256, 256],  # concatenated: 512, the depth net's in_channels
)
depth_net_conf = dict(in_channels=512, mid_channels=512)
