"""What the sensors see of a world: camera images, LiDAR spins, and how visible each box is."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from geomim.data.synthetic.rig import Sensor
from geomim.data.synthetic.world import SyntheticWorld, row_dot

TILE = 32  # camera rays are cast in tiles of TILE x TILE pixels, so bundles are compact
LIDAR_ELEVATIONS = (-30.0, 10.0)  # degrees, lowest and highest beam
AZIMUTH_STEPS = 1000
LIDAR_RANGE = 70.0  # metres
LUMA = np.array([0.299, 0.587, 0.114])  # rgb -> LiDAR intensity (0..255)


def render_camera(
    world: SyntheticWorld, camera: Sensor, camera_to_global: np.ndarray, width: int, height: int
) -> np.ndarray:
    """(H, W, 3) uint8 image: one ray through each pixel centre, cast a band of tiles at a time."""
    image = np.empty((height * width, 3), dtype=np.uint8)
    pixel_to_global = camera_to_global[:3, :3] @ np.linalg.inv(np.array(camera.intrinsic))
    order = _tile_order(width, height)
    for start in range(0, len(order), TILE * width):
        pixel_index = order[start : start + TILE * width]  # (R,) flat indices, tile by tile
        rows, columns = np.divmod(pixel_index, width)
        pixels = np.stack([columns + 0.5, rows + 0.5, np.ones(len(rows))], axis=1)  # (R, 3)
        directions = pixels @ pixel_to_global.T
        origins = np.broadcast_to(camera_to_global[:3, 3], directions.shape)
        image[pixel_index] = world.ray_cast(origins, directions)[1]
    return image.reshape(height, width, 3)


@functools.lru_cache(maxsize=4)
def _tile_order(width: int, height: int) -> np.ndarray:
    """Flat pixel indices (H * W,) band by band, tile by tile (TILE x TILE), row-major within."""
    rows, columns = np.divmod(np.arange(width * height), width)
    tile = (rows // TILE) * (width // TILE + 1) + columns // TILE
    order = np.argsort(tile, kind="stable")
    order.flags.writeable = False
    return order


def scan_lidar(
    world: SyntheticWorld, lidar_to_global: np.ndarray, beams: int
) -> tuple[np.ndarray, np.ndarray]:
    """One spin: points (N, 5) float32 in the LiDAR frame (x, y, z, intensity, ring index) and
    the box each point hit (N,) (-1: ground). Returns within LIDAR_RANGE only."""
    elevation = np.radians(np.linspace(*LIDAR_ELEVATIONS, beams))
    azimuth = np.linspace(-math.pi, math.pi, AZIMUTH_STEPS, endpoint=False)
    azimuth, elevation = np.meshgrid(azimuth, elevation, indexing="ij")  # (A, beams): firings
    directions = np.stack(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ],
        axis=-1,
    ).reshape(-1, 3)  # (A * beams, 3) in the LiDAR frame
    ring = np.broadcast_to(np.arange(beams), azimuth.shape).ravel()
    origins = np.broadcast_to(lidar_to_global[:3, 3], directions.shape)
    distance, rgb, box_index = world.ray_cast(origins, directions @ lidar_to_global[:3, :3].T)
    keep = distance <= LIDAR_RANGE
    xyz = directions[keep] * distance[keep, None]
    points = np.column_stack([xyz, rgb[keep] @ LUMA, ring[keep]]).astype(np.float32)
    return points, box_index[keep]


def visibility_fractions(
    world: SyntheticWorld,
    indices: np.ndarray,
    cameras: Sequence[tuple[Sensor, np.ndarray]],
    width: int,
    height: int,
) -> np.ndarray:
    """(n,) nuScenes-style visibility of the given boxes: the fraction of their surface points
    that face a camera and fall in its image which some camera actually sees (not occluded)."""
    points, normals = world.surface_samples(indices)  # (n, S, 3) each
    owner = np.broadcast_to(np.asarray(indices)[:, None], points.shape[:2]).ravel()
    points, normals = points.reshape(-1, 3), normals.reshape(-1, 3)
    facing = np.zeros(len(points), dtype=bool)
    seen = np.zeros(len(points), dtype=bool)
    for camera, camera_to_global in cameras:
        offsets = points - camera_to_global[:3, 3]
        toward = (row_dot(normals, offsets) < 0) & _in_image(
            points, camera, camera_to_global, width, height
        )
        distance, _, box_index = world.ray_cast(
            np.broadcast_to(camera_to_global[:3, 3], offsets.shape), offsets
        )
        reached = distance > np.sqrt(row_dot(offsets, offsets)) - 0.01
        unoccluded = (box_index == owner) & reached
        facing |= toward
        seen |= toward & unoccluded
    shape = (len(indices), -1)
    return seen.reshape(shape).sum(axis=1) / np.maximum(facing.reshape(shape).sum(axis=1), 1)


def _in_image(
    points: np.ndarray, camera: Sensor, camera_to_global: np.ndarray, width: int, height: int
) -> np.ndarray:
    """(N,) whether global points (N, 3) project inside the camera's image, in front of it."""
    in_camera = (points - camera_to_global[:3, 3]) @ camera_to_global[:3, :3]  # (N, 3)
    depth = in_camera[:, 2]
    pixels = in_camera @ np.array(camera.intrinsic).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = pixels[:, 0] / depth, pixels[:, 1] / depth
    return (depth > 0.1) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
