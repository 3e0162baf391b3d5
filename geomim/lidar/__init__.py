"""The LiDAR BEV teacher: hard voxelisation and BEVFusion's LiDAR-only sparse encoder (spconv 2).

spconv is only needed to build an encoder: `pip install "geomim[lidar]"`.
"""

from geomim._lazy import lazy_attributes

# each name is imported on first use: `python -m geomim.lidar.convert` runs that module as
# __main__ (importing it here first would make runpy warn about the double import), and its
# --help answers before torch loads
_HOMES = {
    **dict.fromkeys(("SparseEncoder", "SparseEncoderConfig"), "geomim.lidar.sparse_encoder"),
    **dict.fromkeys(("LiDARTeacher", "LiDARTeacherConfig"), "geomim.lidar.teacher"),
    **dict.fromkeys(
        ("VoxelBatch", "VoxelConfig", "Voxels", "hard_voxelize", "voxelize"),
        "geomim.lidar.voxelize",
    ),
    **dict.fromkeys(
        (
            "ConversionReport",
            "convert_lidar_checkpoint",
            "lidar_checkpoint_filter_fn",
            "official_lidar_to_geomim",
        ),
        "geomim.lidar.convert",
    ),
}
__getattr__ = lazy_attributes(__name__, _HOMES)

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
