"""The fixed parts of the nuScenes tables: their names, the vocabulary, tokens and record chains."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

from geomim.data.synthetic.rig import Sensor

VERSION = "v1.0-mini"
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
VISIBILITY_LEVELS = (  # nuScenes' four levels: token, level, lower bound of the visible fraction
    ("1", "v0-40", 0.0),
    ("2", "v40-60", 0.4),
    ("3", "v60-80", 0.6),
    ("4", "v80-100", 0.8),
)
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


def vocabulary_tables(sensors: Sequence[Sensor]) -> dict[str, list[dict]]:
    """The category, attribute, visibility and sensor tables: the same for every dataset."""
    return {
        "category": [
            {"token": vocabulary_token("category", name), "name": name, "description": text}
            for name, text in CATEGORIES.items()
        ],
        "attribute": [
            {"token": vocabulary_token("attribute", name), "name": name, "description": text}
            for name, text in ATTRIBUTES.items()
        ],
        "visibility": [
            {"description": _visibility_description(level), "token": token, "level": level}
            for token, level, _ in VISIBILITY_LEVELS
        ],
        "sensor": [
            {
                "token": vocabulary_token("sensor", sensor.channel),
                "channel": sensor.channel,
                "modality": sensor.modality,
            }
            for sensor in sensors
        ],
    }


def record_token(*parts: object) -> str:
    """Deterministic 32-hex token naming a record by its identity (seed, table, indices...)."""
    key = "/".join(str(part) for part in parts).encode()
    return hashlib.md5(key, usedforsecurity=False).hexdigest()


def vocabulary_token(table: str, name: str) -> str:
    """Token of a category, attribute or sensor: the same for every seed, as in nuScenes."""
    return record_token("nuscenes", table, name)


def link(records: list[dict]) -> None:
    """Chain records in the given order through their `prev` and `next` tokens."""
    for earlier, later in itertools.pairwise(records):
        earlier["next"], later["prev"] = later["token"], earlier["token"]


def _visibility_description(level: str) -> str:
    """nuScenes' text for a visibility level, e.g. "v0-40"."""
    low, high = level[1:].split("-")
    return f"visibility of whole object is between {low} and {high}%"
