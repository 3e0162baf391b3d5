"""The sensor rig: six cameras and a LiDAR mounted as in nuScenes, and yaw rotations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geomim.data.cameras import CAMERAS
from geomim.data.poses import pose_matrix

LIDAR = "LIDAR_TOP"

# The rig at 1600 x 900, close to nuScenes' calibration: translation in the ego frame (m), yaw of
# the optical axis from ego x (degrees), focal length and principal point (pixels).
REFERENCE_SIZE = (1600, 900)
CAMERA_MOUNTS = {
    "CAM_FRONT": ((1.70, 0.02, 1.51), 0.0, 1266.0, (816.0, 491.0)),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 1261.0, (808.0, 495.0)),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1272.0, (827.0, 480.0)),
    "CAM_BACK": ((0.03, 0.00, 1.58), 180.0, 809.0, (829.0, 482.0)),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.59), 110.0, 1257.0, (792.0, 493.0)),
    "CAM_BACK_RIGHT": ((1.01, -0.48, 1.56), -110.0, 1260.0, (807.0, 501.0)),
}
CAMERA_AXES = np.array([0.5, -0.5, 0.5, -0.5])  # camera (right, down, forward) -> ego (x, y, z)
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -90.0  # the LiDAR's x axis points to the ego's right, as in nuScenes


@dataclass(frozen=True)
class Sensor:
    """A calibrated sensor of the rig: its pose on the ego and, for a camera, its intrinsics."""

    channel: str
    translation: tuple[float, float, float]  # in the ego frame, metres
    rotation: tuple[float, float, float, float]  # (w, x, y, z), sensor -> ego
    intrinsic: tuple[tuple[float, ...], ...] | None = None  # 3x3 pinhole matrix; None: LiDAR

    @property
    def modality(self) -> str:
        """nuScenes' sensor modality: "camera" or "lidar"."""
        return "lidar" if self.intrinsic is None else "camera"

    def to_global(self, ego_to_global: np.ndarray) -> np.ndarray:
        """4x4 sensor -> global transform at an ego pose (4x4 ego -> global)."""
        return ego_to_global @ pose_matrix(self.rotation, self.translation)


def make_rig(width: int = 1600, height: int = 900) -> tuple[Sensor, ...]:
    """The six cameras, in `CAMERAS` order, then the LiDAR; intrinsics scaled to the image size."""
    scale_x, scale_y = width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1]
    sensors = []
    for channel in CAMERAS:
        translation, yaw, focal, (cx, cy) = CAMERA_MOUNTS[channel]
        rotation = _quaternion_product(yaw_quaternion(math.radians(yaw)), CAMERA_AXES)
        intrinsic = (
            (focal * scale_x, 0.0, cx * scale_x),
            (0.0, focal * scale_y, cy * scale_y),
            (0.0, 0.0, 1.0),
        )
        sensors.append(Sensor(channel, translation, tuple(rotation.tolist()), intrinsic))
    lidar_rotation = yaw_quaternion(math.radians(LIDAR_YAW))
    sensors.append(Sensor(LIDAR, LIDAR_TRANSLATION, tuple(lidar_rotation.tolist())))
    return tuple(sensors)


def yaw_quaternion(yaw: float) -> np.ndarray:
    """(w, x, y, z) rotation by `yaw` radians about z."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def _quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions: rotating by `b`, then by `a`."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )
