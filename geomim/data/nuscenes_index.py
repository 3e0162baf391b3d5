"""The nuScenes sample index: the devkit's tables read once into a `SampleIndex` (file paths,
calibrations, poses, previous LiDAR sweeps of every sample), cached beside the data."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from geomim.data.cameras import CAMERAS
from geomim.data.index import SampleIndex
from geomim.data.poses import pose_matrix

INDEX_FORMAT = 2


def load_index(
    dataroot: Path,
    version: str,
    scenes: list[str] | None,
    cache_dir: str | os.PathLike | None,
    stored_sweeps: int,
) -> SampleIndex:
    """The per-sample index of `scenes` (None: all) with up to `stored_sweeps` previous LiDAR
    sweeps per sample, from the cache when it is current."""
    if scenes is not None and not scenes:
        raise ValueError("scenes is empty: name at least one scene, or pass None for all")
    tables = dataroot / version
    if not tables.is_dir():
        raise FileNotFoundError(f"no nuScenes tables at {tables} (version {version!r})")
    cache = None if cache_dir is None else _cache_path(tables, scenes, stored_sweeps, cache_dir)
    if cache is not None and cache.is_file():
        try:
            return SampleIndex.load(cache)
        except ValueError as error:
            warnings.warn(f"{error}: rebuilding it from {tables}", RuntimeWarning, stacklevel=2)
    index = build_index(dataroot, version, scenes, stored_sweeps)
    if cache is not None:
        index.save(cache)
    return index


def build_index(
    dataroot: Path, version: str, scenes: list[str] | None, stored_sweeps: int
) -> SampleIndex:
    """Everything a sample needs, read once through the devkit."""
    try:
        from nuscenes import NuScenes
    except ImportError as error:
        raise ImportError(
            'reading nuScenes needs the devkit: pip install "geomim[nuscenes]"'
        ) from error
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    wanted = None if scenes is None else set(scenes)
    index = []
    for scene in nusc.scene:
        if wanted is not None and scene["name"] not in wanted:
            continue
        token = scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            index.append(_index_sample(nusc, sample, stored_sweeps))
            token = sample["next"]
    if not index:
        raise ValueError(
            f"none of the scenes {sorted(wanted or [])[:5]} is in {dataroot} {version}"
        )
    return SampleIndex.from_entries(index, CAMERAS, stored_sweeps)


def _index_sample(nusc, sample: dict, stored_sweeps: int) -> dict:
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    ego_to_lidar = np.linalg.inv(_sensor_to_global(nusc, lidar))
    sweeps, record = [], lidar
    while record["prev"] and len(sweeps) < stored_sweeps:
        record = nusc.get("sample_data", record["prev"])
        sweeps.append(
            {
                "path": record["filename"],
                "timestamp": record["timestamp"],
                "sensor_to_lidar": ego_to_lidar @ _sensor_to_global(nusc, record),
            }
        )
    cameras = {}
    for channel in CAMERAS:
        record = nusc.get("sample_data", sample["data"][channel])
        calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        cameras[channel] = {
            "path": record["filename"],
            "intrinsics": calibration["camera_intrinsic"],
            "camera_to_ego": pose_matrix(calibration["rotation"], calibration["translation"]),
            "camera_to_lidar": ego_to_lidar @ _sensor_to_global(nusc, record),
        }
    return {
        "token": sample["token"],
        "timestamp": lidar["timestamp"],
        "lidar_path": lidar["filename"],
        "sweeps": sweeps,
        "cameras": cameras,
    }


def _sensor_to_global(nusc, record: dict) -> np.ndarray:
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", record["ego_pose_token"])
    sensor_to_ego = pose_matrix(calibration["rotation"], calibration["translation"])
    return pose_matrix(ego["rotation"], ego["translation"]) @ sensor_to_ego


def _cache_path(
    tables: Path, scenes: list[str] | None, stored_sweeps: int, cache_dir: str | os.PathLike
) -> Path:
    """One cache file per dataset state, scene selection and sweep count: the tables' sizes and
    mtimes are in the key."""
    selection = f"{INDEX_FORMAT}|{sorted(scenes) if scenes else None}|{stored_sweeps}"
    key = hashlib.sha256(selection.encode())
    for table in sorted(tables.glob("*.json")):
        stat = table.stat()
        key.update(f"{table.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(cache_dir) / f"index-{tables.name}-{key.hexdigest()[:16]}.npz"


def split_scenes(split: str | None) -> list[str] | None:
    """The scene names of an official split ("train", "val", "mini_train", ...); None: all."""
    if split is None:
        return None
    try:
        from nuscenes.utils.splits import create_splits_scenes
    except ImportError as error:
        raise ImportError(
            'official splits need the devkit: pip install "geomim[nuscenes]"'
        ) from error
    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(splits)} or None")
    return splits[split]
