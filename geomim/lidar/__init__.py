"""The LiDAR BEV teacher: hard voxelisation and BEVFusion's LiDAR-only sparse encoder (spconv 2).

spconv is only needed to build an encoder: `pip install "geomim[lidar]"`.
"""

from geomim.lidar.convert import (
    ConversionReport,
    convert_checkpoint,
    lidar_checkpoint_filter_fn,
    official_to_geomim,
)
from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig
from geomim.lidar.teacher import LiDARTeacher, LiDARTeacherConfig
from geomim.lidar.voxelize import VoxelBatch, VoxelConfig, Voxels, hard_voxelize, voxelize

__all__ = [
    "ConversionReport",
    "LiDARTeacher",
    "LiDARTeacherConfig",
    "SparseEncoder",
    "SparseEncoderConfig",
    "VoxelBatch",
    "VoxelConfig",
    "Voxels",
    "convert_checkpoint",
    "hard_voxelize",
    "lidar_checkpoint_filter_fn",
    "official_to_geomim",
    "voxelize",
]
