"""GeoMIM backbones as drop-in parts of other frameworks.

`GeoMIMBackbone` (plain PyTorch) has the backbone interface of mmdet-style detectors, and
`layer_decay_param_groups` the official fine-tuning's layer-wise learning-rate decay over it;
`import geomim.adapters.mmdet3d` registers both with mmdet3d / mmdet / mmengine and the mmcv-1.x
registries of BEVDet, BEVDepth and BEVFusion (`pip install "geomim[mmdet3d]"`). Importing this
package imports none of those frameworks.
"""

from geomim.adapters.backbone import GeoMIMBackbone
from geomim.adapters.layer_decay import layer_decay_param_groups, swin_layer_id

__all__ = ["GeoMIMBackbone", "layer_decay_param_groups", "swin_layer_id"]
