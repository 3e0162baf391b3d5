"""The world of a scene: a checkered ground plane, static boxes on it, sky beyond; and ray casting.

Cameras and LiDAR both sample it through `SyntheticWorld.ray_cast`, so they agree on what is where.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

BUNDLE = 1024  # rays culled together in `SyntheticWorld.ray_cast`
SKY = np.array([172.0, 204.0, 238.0])
LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])  # towards the sun


@dataclass(frozen=True)
class Box:
    """A static box standing on the ground, in global coordinates."""

    category: str
    centre: tuple[float, float, float]  # metres
    size: tuple[float, float, float]  # (width, length, height), nuScenes' order
    yaw: float  # radians from global x to the box's length axis
    colour: tuple[int, int, int]  # rgb of its faces before shading

    @property
    def half_extents(self) -> np.ndarray:
        """(3,) half extents along the box's own x (length), y (width) and z."""
        width, length, height = self.size
        return np.array([length, width, height]) / 2

    @property
    def footprint_radius(self) -> float:
        """Radius of the circle around its ground footprint."""
        return math.hypot(self.size[0], self.size[1]) / 2


@dataclass(eq=False)
class SyntheticWorld:
    """Ground plane z = 0 with a checker of coloured cells, static boxes on it, sky beyond."""

    boxes: tuple[Box, ...]
    ground_colours: np.ndarray = field(repr=False)  # (P, 3) palette of the ground cells
    cell_size: float = 2.0  # metres per ground cell
    horizon: float = 300.0  # ground farther than this reads as sky
    centres: np.ndarray = field(init=False, repr=False)  # (B, 3)
    half_extents: np.ndarray = field(init=False, repr=False)  # (B, 3) along each box's x, y, z
    yaws: np.ndarray = field(init=False, repr=False)  # (B,)
    colours: np.ndarray = field(init=False, repr=False)  # (B, 3)

    def __post_init__(self) -> None:
        self.centres = np.array([box.centre for box in self.boxes], dtype=np.float64).reshape(-1, 3)
        self.half_extents = np.array([box.half_extents for box in self.boxes]).reshape(-1, 3)
        self.yaws = np.array([box.yaw for box in self.boxes], dtype=np.float64)
        self.colours = np.array([box.colour for box in self.boxes], dtype=np.float64).reshape(-1, 3)

    def ray_cast(
        self, origins: np.ndarray, directions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest hit of each ray (origins, directions: (R, 3), directions of any length):
        distance (R,) in metres (inf for sky), rgb (R, 3) uint8, box index (R,) (-1: ground, sky).

        Rays are culled in bundles of BUNDLE consecutive rays: results never depend on the order,
        but spatially coherent rays (image tiles, LiDAR columns) are much faster.
        """
        directions = directions / np.sqrt(row_dot(directions, directions))[:, None]
        distance = self._ground_distance(origins, directions)  # (R,)
        box_index = np.full(len(origins), -1)
        for index, rays in self._candidate_rays(origins, directions):
            hit = self._box_distance(
                index, np.take(origins, rays, axis=0), np.take(directions, rays, axis=0)
            )
            closer = hit < distance[rays]
            distance[rays[closer]] = hit[closer]
            box_index[rays[closer]] = index
        hit_anything = np.isfinite(distance)
        points = origins + np.where(hit_anything, distance, 0.0)[:, None] * directions  # (R, 3)
        return distance, self._surface_colours(points, box_index, hit_anything), box_index

    def surface_samples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points on the five exposed faces of the given boxes and their outward normals:
        each (len(indices), S, 3), global coordinates."""
        points, normals = _unit_face_samples()  # (S, 3) on the faces of [-1, 1]^3
        yaws = self.yaws[indices, None]
        local = points * self.half_extents[indices, None]  # (n, S, 3)
        points = _rotate_z(local, yaws) + self.centres[indices, None]
        return points, _rotate_z(np.broadcast_to(normals, local.shape), yaws)

    def _ground_distance(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = -origins[:, 2] / directions[:, 2]
        valid = (directions[:, 2] < 0) & (origins[:, 2] > 0) & (distance <= self.horizon)
        return np.where(valid, distance, np.inf)

    def _candidate_rays(
        self, origins: np.ndarray, directions: np.ndarray
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(box index, ray indices) for each box: the rays of every bundle whose cone of rays
        can reach the box's bounding sphere. Conservative, so no hit is ever missed."""
        starts = np.arange(0, len(origins), BUNDLE)
        counts = np.diff(np.append(starts, len(origins)))
        centre = np.add.reduceat(origins, starts) / counts[:, None]  # (T, 3)
        offsets = origins - np.repeat(centre, counts, axis=0)
        spread = np.sqrt(np.maximum.reduceat(row_dot(offsets, offsets), starts))
        axis = np.add.reduceat(directions, starts)
        length = np.linalg.norm(axis, axis=1, keepdims=True)
        axis = np.where(length > 1e-9, axis / np.maximum(length, 1e-9), [1.0, 0.0, 0.0])
        cos_cone = np.minimum.reduceat(row_dot(directions, np.repeat(axis, counts, axis=0)), starts)
        cone = np.arccos(np.clip(cos_cone, -1.0, 1.0))  # (T,) half-angle of each bundle
        to_box = self.centres[None] - centre[:, None]  # (T, B, 3)
        distance = np.maximum(np.linalg.norm(to_box, axis=2), 1e-9)
        reach = np.linalg.norm(self.half_extents, axis=1)[None] + spread[:, None]  # (T, B)
        angle = np.arccos(np.clip(np.sum(to_box * axis[:, None], axis=2) / distance, -1.0, 1.0))
        sphere = np.arcsin(np.clip(reach / distance, 0.0, 1.0))
        candidate = (distance <= reach) | (angle <= cone[:, None] + sphere + 1e-6)  # (T, B)
        for index in np.flatnonzero(candidate.any(axis=0)):
            rays = starts[candidate[:, index], None] + np.arange(BUNDLE)  # (t, BUNDLE)
            yield int(index), rays[rays < len(origins)]

    def _box_distance(self, index: int, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Slab test in the box's own frame: entry distance of each ray, inf for a miss."""
        local_origins = _rotate_z(origins - self.centres[index], -self.yaws[index])
        local_directions = _rotate_z(directions, -self.yaws[index])
        half = self.half_extents[index]
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / local_directions
            near = (-half - local_origins) * inverse  # (n, 3) per slab
            far = (half - local_origins) * inverse
        entering, leaving = np.fmin(near, far), np.fmax(near, far)
        entry = np.fmax(np.fmax(entering[:, 0], entering[:, 1]), entering[:, 2])
        exit_ = np.fmin(np.fmin(leaving[:, 0], leaving[:, 1]), leaving[:, 2])
        return np.where((entry <= exit_) & (entry > 0), entry, np.inf)

    def _surface_colours(
        self, points: np.ndarray, box_index: np.ndarray, hit_anything: np.ndarray
    ) -> np.ndarray:
        rgb = np.broadcast_to(SKY, points.shape).copy()
        ground = hit_anything & (box_index < 0)
        rgb[ground] = self._ground_colours(points[ground])
        on_box = box_index >= 0
        shading = self._box_shading(points[on_box], box_index[on_box])
        rgb[on_box] = self.colours[box_index[on_box]] * shading[:, None]
        return np.round(rgb).astype(np.uint8)

    def _ground_colours(self, points: np.ndarray) -> np.ndarray:
        """Each cell's palette colour (hashed from its indices), darker on odd checker cells."""
        cells = np.floor(points[:, :2] / self.cell_size).astype(np.int64)  # (n, 2)
        palette = ((cells[:, 0] * 73856093) ^ (cells[:, 1] * 19349663)) % len(self.ground_colours)
        checker = 1.0 - 0.2 * ((cells[:, 0] + cells[:, 1]) & 1)
        return np.take(self.ground_colours, palette, axis=0) * checker[:, None]

    def _box_shading(self, points: np.ndarray, box_index: np.ndarray) -> np.ndarray:
        """Lambert factor of the face each point lies on: view-independent, so the cameras and
        the LiDAR see one colour per face."""
        local = _rotate_z(points - self.centres[box_index], -self.yaws[box_index])
        local /= self.half_extents[box_index]  # faces at |coordinate| = 1
        rows = np.arange(len(local))
        axis = np.argmax(np.abs(local), axis=1)
        normals = np.zeros_like(local)
        normals[rows, axis] = np.sign(local[rows, axis])
        normals = _rotate_z(normals, self.yaws[box_index])
        return 0.45 + 0.55 * np.clip(normals @ LIGHT, 0.0, 1.0)


def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of (N, 3) arrays: (N,)."""
    return np.einsum("ij,ij->i", a, b)


def _unit_face_samples(per_side: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Grid points on the faces of the cube [-1, 1]^3 but the bottom one, and their normals."""
    grid = (np.arange(per_side) + 0.5) / per_side * 2 - 1
    u, v = (values.ravel() for values in np.meshgrid(grid, grid))
    points, normals = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            if axis == 2 and sign < 0:
                continue  # the bottom face rests on the ground
            face = np.zeros((u.size, 3))
            face[:, axis] = sign
            face[:, [a for a in range(3) if a != axis]] = np.stack([u, v], axis=1)
            normal = np.zeros((u.size, 3))
            normal[:, axis] = sign
            points.append(face)
            normals.append(normal)
    return np.concatenate(points), np.concatenate(normals)


def _rotate_z(vectors: np.ndarray, yaw: np.ndarray | float) -> np.ndarray:
    """Rotate (..., 3) vectors about z by `yaw` (broadcast against the leading dimensions)."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([cos * x - sin * y, sin * x + cos * y, vectors[..., 2]], axis=-1)
