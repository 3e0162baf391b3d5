"""nuScenes multi-view data, camera geometry, and synthetic nuScenes-format datasets (each name
imported on first use)."""

from geomim._lazy import lazy_attributes
from geomim.data.cameras import CAMERAS

_HOMES = {
    "CameraGeometry": "geomim.data.batch",
    "MultiViewBatch": "geomim.data.batch",
    "collate_multiview": "geomim.data.batch",
    "NuScenesMultiView": "geomim.data.nuscenes",
    "PointConfig": "geomim.data.nuscenes",
}
__getattr__ = lazy_attributes(__name__, _HOMES)
__all__ = ["CAMERAS", *sorted(_HOMES)]
