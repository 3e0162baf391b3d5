"""The LiDAR BEV teacher: hard voxelisation and BEVFusion's LiDAR-only sparse encoder (spconv 2).

spconv is only needed to build an encoder: `pip install "geomim[lidar]"`.
"""

from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig
from geomim.lidar.teacher import LiDARTeacher, LiDARTeacherConfig
from geomim.lidar.voxelize import VoxelBatch, VoxelConfig, Voxels, hard_voxelize, voxelize

# the conversion is imported on first use: `python -m geomim.lidar.convert` runs that module as
# __main__, and importing it here first would make runpy warn about the double import
_CONVERSION = (
    "ConversionReport", "convert_lidar_checkpoint", "lidar_checkpoint_filter_fn",
    "official_lidar_to_geomim",
)  # fmt: skip


def __getattr__(name: str):
    if name in _CONVERSION:
        from geomim.lidar import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'geomim.lidar' has no attribute {name!r}")


__all__ = [
    "ConversionReport",
    "LiDARTeacher",
    "LiDARTeacherConfig",
    "SparseEncoder",
    "SparseEncoderConfig",
    "VoxelBatch",
    "VoxelConfig",
    "Voxels",
    "convert_lidar_checkpoint",
    "hard_voxelize",
    "lidar_checkpoint_filter_fn",
    "official_lidar_to_geomim",
    "voxelize",
]
