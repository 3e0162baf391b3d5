"""nuScenes multi-view data, camera geometry, and synthetic nuScenes-format datasets."""

from geomim.data.batch import CameraGeometry, MultiViewBatch, collate_multiview
from geomim.data.nuscenes import CAMERAS, NuScenesMultiView, PointConfig

__all__ = [
    "CAMERAS",
    "CameraGeometry",
    "MultiViewBatch",
    "NuScenesMultiView",
    "PointConfig",
    "collate_multiview",
]
