"""Synthetic nuScenes: small datasets in the exact `v1.0-mini` layout, rendered from a 3D world.

Each scene is a deterministic world (a ground plane z = 0 with a coloured checker texture, and
static boxes) that the six cameras and the LiDAR sample by casting rays into the same geometry, so
projected LiDAR points land on the image content they hit. The official devkit loads the result:

    python -m geomim.data.synthetic OUT_DIR --scenes 2 --samples-per-scene 4
    NuScenes(version="v1.0-mini", dataroot=OUT_DIR)

Frames follow nuScenes: global and ego z up, ego x forward and y left; camera x right, y down,
z forward; rotations are (w, x, y, z) quaternions from a sensor to its parent frame. Key frames
come at 2 Hz; each is preceded by `sweeps_per_sample` LiDAR sweeps at 20 Hz (the first one too,
so every key frame has the same history). Needs numpy, Pillow and tqdm, not the devkit.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import numbers
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from geomim.data.geometry import pose_matrix
from geomim.data.nuscenes import CAMERAS

__all__ = [
    "CAMERAS",
    "LIDAR",
    "Box",
    "EgoPath",
    "Sensor",
    "SyntheticConfig",
    "SyntheticScene",
    "SyntheticWorld",
    "build_scene",
    "generate",
    "main",
    "make_rig",
    "render_camera",
    "scan_lidar",
    "visibility_fractions",
]

VERSION = "v1.0-mini"
LIDAR = "LIDAR_TOP"
TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)

# Time: microseconds, like nuScenes.
KEY_FRAME_US = 500_000  # 2 Hz samples
SWEEP_US = 50_000  # 20 Hz LiDAR
MAX_SWEEPS = KEY_FRAME_US // SWEEP_US - 1  # sweeps that fit between two key frames
FIRST_TIMESTAMP_US = 1_532_402_927_612_460  # 2018-07-24, as in nuScenes' Singapore logs
SCENE_SPACING_US = 3_600_000_000
UTC_OFFSET = timezone(timedelta(hours=8))
VEHICLE = "n015"
LOCATION = "singapore-onenorth"

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

# Sensing.
LIDAR_ELEVATIONS = (-30.0, 10.0)  # degrees, lowest and highest beam
AZIMUTH_STEPS = 1000
LIDAR_RANGE = 70.0  # metres
ANNOTATION_RANGE = 50.0  # metres from the ego
VISIBILITY_LEVELS = (  # nuScenes' four levels: token, level, lower bound of the visible fraction
    ("1", "v0-40", 0.0),
    ("2", "v40-60", 0.4),
    ("3", "v60-80", 0.6),
    ("4", "v80-100", 0.8),
)
JPEG_QUALITY = 90
BUNDLE = 1024  # rays culled together in `SyntheticWorld.ray_cast`
TILE = 32  # camera rays are cast in tiles of TILE x TILE pixels, so bundles are compact

# Appearance.
SKY = np.array([172.0, 204.0, 238.0])
LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])  # towards the sun
LUMA = np.array([0.299, 0.587, 0.114])  # rgb -> LiDAR intensity (0..255)

# Placement: boxes lie beside the road, up to ~45 m from it, over the drive and a margin.
ROAD_HALF_WIDTH = 2.5
LATERAL_RANGE = (4.0, 45.0)
PLACEMENT_MARGIN = 20.0
BOX_COUNT = (15, 40)


@dataclass(frozen=True)
class ObjectKind:
    """A kind of object the generator places: its category, mean size, frequency, attribute."""

    category: str
    size: tuple[float, float, float]  # mean (width, length, height), metres
    weight: float
    attribute: str | None


OBJECT_KINDS = (
    ObjectKind("vehicle.car", (1.95, 4.62, 1.73), 0.4, "vehicle.parked"),
    ObjectKind("vehicle.truck", (2.52, 6.93, 2.84), 0.1, "vehicle.parked"),
    ObjectKind("human.pedestrian.adult", (0.67, 0.73, 1.77), 0.2, "pedestrian.standing"),
    ObjectKind("movable_object.barrier", (2.53, 0.50, 0.98), 0.2, None),
    ObjectKind("movable_object.trafficcone", (0.41, 0.41, 1.07), 0.1, None),
)
ATTRIBUTE_OF = {kind.category: kind.attribute for kind in OBJECT_KINDS}
CATEGORIES = {
    "animal": "All animals, e.g. cats, rats, dogs, deer, birds.",
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.construction_worker": "Construction worker.",
    "human.pedestrian.personal_mobility": "A small electric or self-propelled vehicle.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.stroller": "Strollers.",
    "human.pedestrian.wheelchair": "Wheelchairs.",
    "movable_object.barrier": "Temporary road barrier placed in the scene to redirect traffic.",
    "movable_object.debris": "Movable object that is left on the driveable surface.",
    "movable_object.pushable_pullable": "Objects that a pedestrian may push or pull.",
    "movable_object.trafficcone": "All types of traffic cone.",
    "static_object.bicycle_rack": "Area or device intended to park or secure bicycles.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle designed to travel at lower "
    "speeds either on road surface, sidewalks or bike paths.",
    "vehicle.bus.bendy": "Bendy bus subcategory.",
    "vehicle.bus.rigid": "Rigid bus subcategory.",
    "vehicle.car": "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, "
    "wagons, vans, mini-vans, SUVs and jeeps.",
    "vehicle.construction": "Vehicles primarily designed for construction.",
    "vehicle.emergency.ambulance": "All types of ambulances.",
    "vehicle.emergency.police": "All types of police vehicles.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle designed to move "
    "rapidly (at the speed of standard cars) on the road surface.",
    "vehicle.trailer": "Any vehicle trailer, both for trucks, cars and bikes.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
}
ATTRIBUTES = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate "
    "intent to move.",
    "cycle.with_rider": "There is someone on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}


# --------------------------------------------------------------------------- rotations


def _yaw_quaternion(yaw: float) -> np.ndarray:
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


def _rotate_z(vectors: np.ndarray, yaw: np.ndarray | float) -> np.ndarray:
    """Rotate (..., 3) vectors about z by `yaw` (broadcast against the leading dimensions)."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    x, y = vectors[..., 0], vectors[..., 1]
    return np.stack([cos * x - sin * y, sin * x + cos * y, vectors[..., 2]], axis=-1)


# --------------------------------------------------------------------------- the rig


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
        rotation = _quaternion_product(_yaw_quaternion(math.radians(yaw)), CAMERA_AXES)
        intrinsic = (
            (focal * scale_x, 0.0, cx * scale_x),
            (0.0, focal * scale_y, cy * scale_y),
            (0.0, 0.0, 1.0),
        )
        sensors.append(Sensor(channel, translation, tuple(rotation.tolist()), intrinsic))
    lidar_rotation = _yaw_quaternion(math.radians(LIDAR_YAW))
    sensors.append(Sensor(LIDAR, LIDAR_TRANSLATION, tuple(lidar_rotation.tolist())))
    return tuple(sensors)


# --------------------------------------------------------------------------- the world


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
        directions = directions / np.sqrt(_row_dot(directions, directions))[:, None]
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
        spread = np.sqrt(np.maximum.reduceat(_row_dot(offsets, offsets), starts))
        axis = np.add.reduceat(directions, starts)
        length = np.linalg.norm(axis, axis=1, keepdims=True)
        axis = np.where(length > 1e-9, axis / np.maximum(length, 1e-9), [1.0, 0.0, 0.0])
        cos_cone = np.minimum.reduceat(
            _row_dot(directions, np.repeat(axis, counts, axis=0)), starts
        )
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


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class EgoPath:
    """The ego's drive: constant speed and yaw rate from a start pose (a line or a gentle arc)."""

    start: tuple[float, float]  # global xy, metres
    heading: float  # radians
    speed: float  # m/s
    yaw_rate: float  # rad/s

    def at(self, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 3) on the ground and yaws (N,) at times (N,) from the start."""
        seconds = np.asarray(seconds, dtype=np.float64)
        turn = self.yaw_rate * seconds
        chord = self.speed * seconds * np.sinc(turn / (2 * np.pi))  # exact on an arc, or a line
        direction = self.heading + turn / 2
        positions = np.stack(
            [
                self.start[0] + chord * np.cos(direction),
                self.start[1] + chord * np.sin(direction),
                np.zeros_like(chord),
            ],
            axis=-1,
        )
        return positions, self.heading + turn


@dataclass(frozen=True)
class SyntheticScene:
    """One scene: its world, the ego's path through it, and when its first key frame is."""

    index: int
    world: SyntheticWorld
    path: EgoPath
    start_us: int

    @property
    def logfile(self) -> str:
        """nuScenes-style log name, e.g. "n015-2018-07-24-11-22-45+0800"."""
        start = datetime.fromtimestamp(self.start_us / 1e6, UTC_OFFSET)
        return f"{VEHICLE}-{start:%Y-%m-%d-%H-%M-%S}+0800"

    def ego_pose(self, timestamp_us: int) -> tuple[np.ndarray, float]:
        """Ego translation (3,) and yaw at a timestamp."""
        positions, yaws = self.path.at(np.array([(timestamp_us - self.start_us) / 1e6]))
        return positions[0], float(yaws[0])

    def ego_to_global(self, timestamp_us: int) -> np.ndarray:
        """4x4 ego -> global transform at a timestamp."""
        translation, yaw = self.ego_pose(timestamp_us)
        return pose_matrix(_yaw_quaternion(yaw), translation)


def build_scene(seed: int, scene_index: int, samples_per_scene: int) -> SyntheticScene:
    """Scene `scene_index` of a dataset generated with `seed`: a pure function of its arguments
    (the world spans the drive, whose length depends on `samples_per_scene`)."""
    rng = np.random.default_rng([seed, scene_index])
    path = EgoPath(
        start=(float(rng.uniform(300, 1500)), float(rng.uniform(300, 1500))),
        heading=float(rng.uniform(-math.pi, math.pi)),
        speed=float(rng.uniform(3.0, 8.0)),
        yaw_rate=float(rng.uniform(-0.05, 0.05)),
    )
    drive = path.speed * (samples_per_scene - 1) * KEY_FRAME_US / 1e6  # metres
    boxes = _place_boxes(rng, path, drive, int(rng.integers(BOX_COUNT[0], BOX_COUNT[1] + 1)))
    ground = _hsv_colours(rng.uniform(0, 1, 8), rng.uniform(0.1, 0.35, 8), rng.uniform(0.3, 0.6, 8))
    start_us = FIRST_TIMESTAMP_US + scene_index * SCENE_SPACING_US + int(rng.integers(0, 10**6))
    return SyntheticScene(scene_index, SyntheticWorld(tuple(boxes), ground), path, start_us)


def _place_boxes(rng: np.random.Generator, path: EgoPath, drive: float, count: int) -> list[Box]:
    """Up to `count` non-overlapping boxes beside the road, each a distinct bright colour."""
    along = np.arange(-PLACEMENT_MARGIN, drive + PLACEMENT_MARGIN + 1.0, 1.0)
    road, _ = path.at(along / path.speed)  # (N, 3) centreline samples every metre
    offset = rng.uniform()
    boxes: list[Box] = []
    for _ in range(20 * count):
        if len(boxes) == count:
            break
        hue = (offset + 0.618034 * len(boxes)) % 1.0  # golden-ratio steps: distinct hues
        colour = _hsv_colours([hue], [rng.uniform(0.6, 0.95)], [rng.uniform(0.75, 1.0)])[0]
        box = _random_box(rng, path, drive, tuple(int(c) for c in colour))
        if _is_free(box, boxes, road):
            boxes.append(box)
    return boxes


def _random_box(
    rng: np.random.Generator, path: EgoPath, drive: float, colour: tuple[int, int, int]
) -> Box:
    """A box of a random kind, size and yaw, to the left or right of a random point of the road."""
    kind = OBJECT_KINDS[rng.choice(len(OBJECT_KINDS), p=[k.weight for k in OBJECT_KINDS])]
    along = rng.uniform(-PLACEMENT_MARGIN, drive + PLACEMENT_MARGIN)
    side = rng.choice([-1.0, 1.0]) * rng.uniform(*LATERAL_RANGE)
    positions, headings = path.at(np.array([along / path.speed]))
    left = np.array([-math.sin(headings[0]), math.cos(headings[0])])
    x, y = positions[0, :2] + side * left
    width, length, height = (np.array(kind.size) * rng.uniform(0.85, 1.15, 3)).tolist()
    yaw = float(rng.uniform(-math.pi, math.pi))
    return Box(
        kind.category, (float(x), float(y), height / 2), (width, length, height), yaw, colour
    )


def _is_free(box: Box, placed: list[Box], road: np.ndarray) -> bool:
    """Whether `box` keeps clear of the road and of the boxes already placed."""
    centre = np.array(box.centre[:2])
    to_road = np.min(np.linalg.norm(road[:, :2] - centre, axis=1))
    if to_road < box.footprint_radius + ROAD_HALF_WIDTH:
        return False
    return all(
        np.linalg.norm(centre - other.centre[:2]) > box.footprint_radius + other.footprint_radius
        for other in placed
    )


def _hsv_colours(
    hues: Sequence[float], saturations: Sequence[float], values: Sequence[float]
) -> np.ndarray:
    """(N, 3) uint8 rgb colours from HSV components in [0, 1]."""
    rgb = [colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, saturations, values, strict=True)]
    return np.round(np.array(rgb) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- sensing


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
        toward = (_row_dot(normals, offsets) < 0) & _in_image(
            points, camera, camera_to_global, width, height
        )
        distance, _, box_index = world.ray_cast(
            np.broadcast_to(camera_to_global[:3, 3], offsets.shape), offsets
        )
        reached = distance > np.sqrt(_row_dot(offsets, offsets)) - 0.01
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


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class SyntheticConfig:
    """What `generate` writes: how many scenes and frames, the seed, the sensor resolutions."""

    scenes: int = 2
    samples_per_scene: int = 4
    sweeps_per_sample: int = 2
    seed: int = 0
    width: int = 1600
    height: int = 900
    beams: int = 32

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{spec.name} must be an int, got {type(value).__name__}")
            lowest = 0 if spec.name in ("sweeps_per_sample", "seed") else 1
            if value < lowest:
                raise ValueError(f"{spec.name} must be >= {lowest}, got {value}")
            object.__setattr__(self, spec.name, int(value))  # numpy integers -> JSON-able ints
        if self.sweeps_per_sample > MAX_SWEEPS:
            raise ValueError(
                f"sweeps_per_sample must be <= {MAX_SWEEPS} (20 Hz sweeps between 2 Hz key "
                f"frames), got {self.sweeps_per_sample}"
            )

    @property
    def frames_per_sample(self) -> int:
        """Sensor files written per sample: the cameras, the key-frame LiDAR and its sweeps."""
        return len(CAMERAS) + 1 + self.sweeps_per_sample


def _token(*parts: object) -> str:
    """Deterministic 32-hex token naming a record by its identity (seed, table, indices...)."""
    key = "/".join(str(part) for part in parts).encode()
    return hashlib.md5(key, usedforsecurity=False).hexdigest()


def _vocabulary_token(table: str, name: str) -> str:
    """Token of a category, attribute or sensor: the same for every seed, as in nuScenes."""
    return _token("nuscenes", table, name)


def _floats(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(value) for value in values]


def _link(records: list[dict]) -> None:
    """Chain records in the given order through their `prev` and `next` tokens."""
    for earlier, later in itertools.pairwise(records):
        earlier["next"], later["prev"] = later["token"], earlier["token"]


class _DatasetWriter:
    """Writes the sensor files of each scene while filling the 13 tables, then the tables."""

    def __init__(self, out_dir: Path, config: SyntheticConfig, progress: tqdm) -> None:
        self.out_dir, self.config, self.progress = out_dir, config, progress
        self.rig = make_rig(config.width, config.height)
        self.cameras = self.rig[: len(CAMERAS)]
        self.lidar = self.rig[-1]
        self.tables: dict[str, list[dict]] = {name: [] for name in TABLES}
        self._add_vocabulary()
        for sensor in self.rig:
            for folder in ("samples", "sweeps") if sensor is self.lidar else ("samples",):
                (out_dir / folder / sensor.channel).mkdir(parents=True, exist_ok=True)

    def token(self, *parts: object) -> str:
        """A record token of this dataset (it depends on the seed)."""
        return _token(self.config.seed, *parts)

    def write_scene(self, scene_index: int) -> None:
        """Render, scan and annotate one scene; add its records to the tables."""
        scene = build_scene(self.config.seed, scene_index, self.config.samples_per_scene)
        log_token = self._add_log(scene)
        self._add_calibrations(scene)
        scene_token = self.token("scene", scene_index)
        chains = defaultdict(list)  # channel -> its sample_data records in time order
        annotations = defaultdict(list)  # box index -> its annotations in time order
        samples = [
            self._write_sample(scene, sample_index, scene_token, chains, annotations)
            for sample_index in range(self.config.samples_per_scene)
        ]
        for chain in (samples, *chains.values(), *annotations.values()):
            _link(chain)
        self.tables["sample"] += samples
        self._add_instances(scene, annotations)
        self.tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": len(samples),
                "first_sample_token": samples[0]["token"],
                "last_sample_token": samples[-1]["token"],
                "name": f"scene-{scene_index + 1:04d}",
                "description": _describe(scene),
            }
        )

    def _write_sample(
        self,
        scene: SyntheticScene,
        sample_index: int,
        scene_token: str,
        chains: dict[str, list[dict]],
        annotations: dict[int, list[dict]],
    ) -> dict:
        """One key frame: the LiDAR sweeps before it, its LiDAR spin and camera images, and its
        annotations, appended to `chains` and `annotations`. Returns the sample record."""
        timestamp = scene.start_us + sample_index * KEY_FRAME_US
        sample = {
            "token": self.token("sample", scene.index, sample_index),
            "timestamp": timestamp,
            "prev": "",
            "next": "",
            "scene_token": scene_token,
        }
        for sweep in range(self.config.sweeps_per_sample, 0, -1):
            record, _ = self._capture_lidar(scene, timestamp - sweep * SWEEP_US, sample)
            chains[LIDAR].append(record)
        record, lidar_hits = self._capture_lidar(scene, timestamp, sample, key_frame=True)
        chains[LIDAR].append(record)
        ego_to_global = scene.ego_to_global(timestamp)
        views = [(camera, camera.to_global(ego_to_global)) for camera in self.cameras]
        for camera, camera_to_global in views:
            record = self._capture_camera(scene, camera, camera_to_global, timestamp, sample)
            chains[camera.channel].append(record)
        for box_index, record in self._annotate(scene, sample, lidar_hits, views).items():
            annotations[box_index].append(record)
        return sample

    def save(self) -> None:
        """Write the placeholder map, then the tables as `OUT_DIR/v1.0-mini/<table>.json`."""
        map_token = self.token("map", LOCATION)
        filename = f"maps/{map_token}.png"
        (self.out_dir / "maps").mkdir(parents=True, exist_ok=True)
        Image.new("L", (100, 100)).save(self.out_dir / filename)  # nothing drivable: a stub
        log_tokens = [log["token"] for log in self.tables["log"]]
        self.tables["map"] = [
            {
                "category": "semantic_prior",
                "token": map_token,
                "filename": filename,
                "log_tokens": log_tokens,
            }
        ]
        folder = self.out_dir / VERSION
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            (folder / f"{name}.json").write_text(json.dumps(records, indent=0))

    def _add_vocabulary(self) -> None:
        self.tables["category"] = [
            {"token": _vocabulary_token("category", name), "name": name, "description": text}
            for name, text in CATEGORIES.items()
        ]
        self.tables["attribute"] = [
            {"token": _vocabulary_token("attribute", name), "name": name, "description": text}
            for name, text in ATTRIBUTES.items()
        ]
        self.tables["visibility"] = [
            {"description": _visibility_description(level), "token": token, "level": level}
            for token, level, _ in VISIBILITY_LEVELS
        ]
        self.tables["sensor"] = [
            {
                "token": _vocabulary_token("sensor", sensor.channel),
                "channel": sensor.channel,
                "modality": sensor.modality,
            }
            for sensor in self.rig
        ]

    def _add_log(self, scene: SyntheticScene) -> str:
        token = self.token("log", scene.index)
        start = datetime.fromtimestamp(scene.start_us / 1e6, UTC_OFFSET)
        self.tables["log"].append(
            {
                "token": token,
                "logfile": scene.logfile,
                "vehicle": VEHICLE,
                "date_captured": f"{start:%Y-%m-%d}",
                "location": LOCATION,
            }
        )
        return token

    def _add_calibrations(self, scene: SyntheticScene) -> None:
        for sensor in self.rig:
            intrinsic = [] if sensor.intrinsic is None else [list(row) for row in sensor.intrinsic]
            self.tables["calibrated_sensor"].append(
                {
                    "token": self.token("calibrated_sensor", scene.index, sensor.channel),
                    "sensor_token": _vocabulary_token("sensor", sensor.channel),
                    "translation": list(sensor.translation),
                    "rotation": list(sensor.rotation),
                    "camera_intrinsic": intrinsic,
                }
            )

    def _add_sample_data(
        self, scene: SyntheticScene, sensor: Sensor, timestamp: int, sample: dict, key_frame: bool
    ) -> dict:
        """The sample_data record of one capture and its ego pose (which shares its token, as in
        nuScenes). Its file is written by the caller."""
        token = self.token("sample_data", scene.index, sensor.channel, timestamp)
        translation, yaw = scene.ego_pose(timestamp)
        self.tables["ego_pose"].append(
            {
                "token": token,
                "timestamp": timestamp,
                "rotation": _floats(_yaw_quaternion(yaw)),
                "translation": _floats(translation),
            }
        )
        camera = sensor.modality == "camera"
        folder = "samples" if key_frame else "sweeps"
        extension = ".jpg" if camera else ".pcd.bin"
        record = {
            "token": token,
            "sample_token": sample["token"],
            "ego_pose_token": token,
            "calibrated_sensor_token": self.token("calibrated_sensor", scene.index, sensor.channel),
            "timestamp": timestamp,
            "fileformat": "jpg" if camera else "pcd",
            "is_key_frame": key_frame,
            "height": self.config.height if camera else 0,
            "width": self.config.width if camera else 0,
            "filename": f"{folder}/{sensor.channel}/"
            f"{scene.logfile}__{sensor.channel}__{timestamp}{extension}",
            "prev": "",
            "next": "",
        }
        self.tables["sample_data"].append(record)
        return record

    def _capture_camera(
        self,
        scene: SyntheticScene,
        camera: Sensor,
        camera_to_global: np.ndarray,
        timestamp: int,
        sample: dict,
    ) -> dict:
        record = self._add_sample_data(scene, camera, timestamp, sample, key_frame=True)
        config = self.config
        image = render_camera(scene.world, camera, camera_to_global, config.width, config.height)
        Image.fromarray(image).save(self.out_dir / record["filename"], quality=JPEG_QUALITY)
        self.progress.update()
        return record

    def _capture_lidar(
        self, scene: SyntheticScene, timestamp: int, sample: dict, key_frame: bool = False
    ) -> tuple[dict, np.ndarray]:
        """A LiDAR sample_data record and its file; also the box each point hit (N,)."""
        record = self._add_sample_data(scene, self.lidar, timestamp, sample, key_frame)
        lidar_to_global = self.lidar.to_global(scene.ego_to_global(timestamp))
        points, box_index = scan_lidar(scene.world, lidar_to_global, self.config.beams)
        points.tofile(self.out_dir / record["filename"])
        self.progress.update()
        return record, box_index

    def _annotate(
        self,
        scene: SyntheticScene,
        sample: dict,
        lidar_hits: np.ndarray,
        views: list[tuple[Sensor, np.ndarray]],
    ) -> dict[int, dict]:
        """sample_annotation records of the boxes within ANNOTATION_RANGE, by box index."""
        world = scene.world
        ego_translation, _ = scene.ego_pose(sample["timestamp"])
        distance = np.linalg.norm(world.centres[:, :2] - ego_translation[:2], axis=1)
        nearby = np.flatnonzero(distance <= ANNOTATION_RANGE)
        lidar_points = np.bincount(lidar_hits[lidar_hits >= 0], minlength=len(world.boxes))
        config = self.config
        fractions = visibility_fractions(world, nearby, views, config.width, config.height)
        thresholds = [lower for _, _, lower in VISIBILITY_LEVELS[1:]]
        records = {}
        for box_index, fraction in zip(nearby.tolist(), fractions, strict=True):
            box = world.boxes[box_index]
            attribute = ATTRIBUTE_OF[box.category]
            attributes = [] if attribute is None else [_vocabulary_token("attribute", attribute)]
            level = VISIBILITY_LEVELS[int(np.digitize(fraction, thresholds))]
            records[box_index] = {
                "token": self.token("sample_annotation", sample["token"], box_index),
                "sample_token": sample["token"],
                "instance_token": self.token("instance", scene.index, box_index),
                "visibility_token": level[0],
                "attribute_tokens": attributes,
                "translation": list(box.centre),
                "size": list(box.size),
                "rotation": _floats(_yaw_quaternion(box.yaw)),
                "prev": "",
                "next": "",
                "num_lidar_pts": int(lidar_points[box_index]),
                "num_radar_pts": 0,
            }
        self.tables["sample_annotation"] += records.values()
        return records

    def _add_instances(self, scene: SyntheticScene, annotations: dict[int, list[dict]]) -> None:
        for box_index in sorted(annotations):
            chain = annotations[box_index]
            self.tables["instance"].append(
                {
                    "token": chain[0]["instance_token"],
                    "category_token": _vocabulary_token(
                        "category", scene.world.boxes[box_index].category
                    ),
                    "nbr_annotations": len(chain),
                    "first_annotation_token": chain[0]["token"],
                    "last_annotation_token": chain[-1]["token"],
                }
            )


def _visibility_description(level: str) -> str:
    """nuScenes' text for a visibility level, e.g. "v0-40"."""
    low, high = level[1:].split("-")
    return f"visibility of whole object is between {low} and {high}%"


def _describe(scene: SyntheticScene) -> str:
    turn = "left" if scene.path.yaw_rate > 0 else "right"
    return (
        f"Synthetic drive at {scene.path.speed:.1f} m/s, gentle {turn} curve, "
        f"{len(scene.world.boxes)} static objects"
    )


def generate(
    out_dir: str | Path,
    scenes: int = 2,
    samples_per_scene: int = 4,
    sweeps_per_sample: int = 2,
    seed: int = 0,
    width: int = 1600,
    height: int = 900,
    beams: int = 32,
    progress: bool = True,
) -> Path:
    """Write a synthetic nuScenes dataset (`v1.0-mini` layout) to `out_dir` and return it."""
    config = SyntheticConfig(
        scenes, samples_per_scene, sweeps_per_sample, seed, width, height, beams
    )
    out_dir = Path(out_dir)
    total = config.scenes * config.samples_per_scene * config.frames_per_sample
    with tqdm(total=total, disable=not progress, desc="synthetic nuScenes", unit="frame") as bar:
        writer = _DatasetWriter(out_dir, config, bar)
        for scene_index in range(config.scenes):
            writer.write_scene(scene_index)
    writer.save()
    return out_dir


OPTION_HELP = {
    "scenes": "number of scenes",
    "samples_per_scene": "key frames (2 Hz) per scene",
    "sweeps_per_sample": "LiDAR sweeps (20 Hz) before each key frame",
    "seed": "seed of the worlds, the drives and the tokens",
    "width": "camera image width, pixels",
    "height": "camera image height, pixels",
    "beams": "LiDAR beams (rings)",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m geomim.data.synthetic OUT_DIR [--scenes S ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.data.synthetic",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="dataset root (the devkit's dataroot)")
    for spec in dataclasses.fields(SyntheticConfig):
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=int,
            default=spec.default,
            help=OPTION_HELP[spec.name],
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = vars(parser.parse_args(argv))
    out_dir, quiet = args.pop("out_dir"), args.pop("quiet")
    try:
        SyntheticConfig(**args)
    except ValueError as error:
        parser.error(str(error))  # a usage error, before anything is written
    generate(out_dir, progress=not quiet, **args)
    if not quiet:
        print(f"{out_dir}: {args['scenes']} scenes x {args['samples_per_scene']} samples")


if __name__ == "__main__":
    main()
