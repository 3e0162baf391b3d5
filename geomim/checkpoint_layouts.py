"""Where official, detector and adapter checkpoints keep the camera backbone, and which of their
keys belong to the pretraining decoder: read by the Swin conversion and the pretraining
conversion (one place, so that neither imports the other for it)."""

from __future__ import annotations

import re

# Module names under which a whole model stores the camera backbone, wherever they sit in the
# model (BEVDepth nests it: `model.backbone.img_backbone.`); the first one present is selected.
BACKBONE_PREFIXES = ("encoders.camera.backbone.", "img_backbone.", "backbone.")
# What geomim's `GeoMIMBackbone` adapter puts before the timm model's keys (its `model`).
ADAPTER_PREFIX = "model."
# Keys of the pretraining decoder that share the backbone's namespace in `SwinTransformerBEV`.
PRETRAIN_DECODER_KEYS = re.compile(
    r"^(mask_token|decoder_\w+|up_p4_fc|up_smooth_p4|final_norm|cam_pose)(\.|$)"
)
