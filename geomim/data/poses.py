"""nuScenes poses as numpy matrices: (w, x, y, z) quaternions and translations (numpy only, so
that the synthetic generator and its command line need no torch)."""

from __future__ import annotations

import numpy as np


def quaternion_to_matrix(quaternion: list[float] | np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion, as nuScenes stores rotations, -> 3x3 rotation matrix."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_matrix(rotation: list[float] | np.ndarray, translation: list[float]) -> np.ndarray:
    """4x4 rigid transform from a nuScenes (w, x, y, z) rotation and a translation."""
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix(rotation)
    matrix[:3, 3] = translation
    return matrix
