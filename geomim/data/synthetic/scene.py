"""A scene: the ego's drive, the boxes placed beside its road, and when it starts.

`build_scene(seed, scene_index, samples_per_scene)` is a pure function, so tests and the writer
rebuild the same world from the same arguments.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from geomim.data.poses import pose_matrix
from geomim.data.synthetic.config import KEY_FRAME_US
from geomim.data.synthetic.rig import yaw_quaternion
from geomim.data.synthetic.world import Box, SyntheticWorld

# The scenes' logs: start times in microseconds (like nuScenes), Singapore's time zone, one car.
FIRST_TIMESTAMP_US = 1_532_402_927_612_460  # 2018-07-24, as in nuScenes' Singapore logs
SCENE_SPACING_US = 3_600_000_000
UTC_OFFSET = timezone(timedelta(hours=8))
VEHICLE = "n015"

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
        return pose_matrix(yaw_quaternion(yaw), translation)


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
