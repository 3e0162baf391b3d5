"""Writing a dataset: each scene's sensor files and its records in the 13 nuScenes tables."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from geomim.data.cameras import CAMERAS
from geomim.data.synthetic.config import KEY_FRAME_US, SWEEP_US, SyntheticConfig
from geomim.data.synthetic.rig import LIDAR, Sensor, make_rig, yaw_quaternion
from geomim.data.synthetic.scene import (
    OBJECT_KINDS,
    UTC_OFFSET,
    VEHICLE,
    SyntheticScene,
    build_scene,
)
from geomim.data.synthetic.sensors import render_camera, scan_lidar, visibility_fractions
from geomim.data.synthetic.tables import (
    TABLES,
    VERSION,
    VISIBILITY_LEVELS,
    link,
    record_token,
    vocabulary_tables,
    vocabulary_token,
)

LOCATION = "singapore-onenorth"
ANNOTATION_RANGE = 50.0  # metres from the ego
ATTRIBUTE_OF = {kind.category: kind.attribute for kind in OBJECT_KINDS}
JPEG_QUALITY = 90


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


class _DatasetWriter:
    """Writes the sensor files of each scene while filling the 13 tables, then the tables."""

    def __init__(self, out_dir: Path, config: SyntheticConfig, progress: tqdm) -> None:
        self.out_dir, self.config, self.progress = out_dir, config, progress
        self.rig = make_rig(config.width, config.height)
        self.cameras = self.rig[: len(CAMERAS)]
        self.lidar = self.rig[-1]
        self.tables: dict[str, list[dict]] = {name: [] for name in TABLES}
        self.tables.update(vocabulary_tables(self.rig))
        for sensor in self.rig:
            for folder in ("samples", "sweeps") if sensor is self.lidar else ("samples",):
                (out_dir / folder / sensor.channel).mkdir(parents=True, exist_ok=True)

    def token(self, *parts: object) -> str:
        """A record token of this dataset (it depends on the seed)."""
        return record_token(self.config.seed, *parts)

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
            link(chain)
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
                    "sensor_token": vocabulary_token("sensor", sensor.channel),
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
                "rotation": _floats(yaw_quaternion(yaw)),
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
            attributes = [] if attribute is None else [vocabulary_token("attribute", attribute)]
            level = VISIBILITY_LEVELS[int(np.digitize(fraction, thresholds))]
            records[box_index] = {
                "token": self.token("sample_annotation", sample["token"], box_index),
                "sample_token": sample["token"],
                "instance_token": self.token("instance", scene.index, box_index),
                "visibility_token": level[0],
                "attribute_tokens": attributes,
                "translation": list(box.centre),
                "size": list(box.size),
                "rotation": _floats(yaw_quaternion(box.yaw)),
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
                    "category_token": vocabulary_token(
                        "category", scene.world.boxes[box_index].category
                    ),
                    "nbr_annotations": len(chain),
                    "first_annotation_token": chain[0]["token"],
                    "last_annotation_token": chain[-1]["token"],
                }
            )


def _floats(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(value) for value in values]


def _describe(scene: SyntheticScene) -> str:
    turn = "left" if scene.path.yaw_rate > 0 else "right"
    return (
        f"Synthetic drive at {scene.path.speed:.1f} m/s, gentle {turn} curve, "
        f"{len(scene.world.boxes)} static objects"
    )
