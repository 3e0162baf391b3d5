"""Synthetic nuScenes: the devkit loads it, its tables link up, its sensors agree on one world."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geomim.data.poses import pose_matrix, quaternion_to_matrix
from geomim.data.synthetic import (
    CAMERAS,
    LIDAR,
    Box,
    SyntheticConfig,
    SyntheticWorld,
    build_scene,
    generate,
    main,
    make_rig,
    visibility_fractions,
)

SMALL = {"scenes": 1, "samples_per_scene": 2, "sweeps_per_sample": 2, "width": 320, "height": 180}
FIELDS = {  # what a data layer reads from each table (nuScenes' schema)
    "attribute": {"token", "name", "description"},
    "calibrated_sensor": {"token", "sensor_token", "translation", "rotation", "camera_intrinsic"},
    "category": {"token", "name", "description"},
    "ego_pose": {"token", "timestamp", "rotation", "translation"},
    "instance": {
        "token",
        "category_token",
        "nbr_annotations",
        "first_annotation_token",
        "last_annotation_token",
    },
    "log": {"token", "logfile", "vehicle", "date_captured", "location"},
    "map": {"token", "category", "filename", "log_tokens"},
    "sample": {"token", "timestamp", "prev", "next", "scene_token"},
    "sample_annotation": {
        "token",
        "sample_token",
        "instance_token",
        "visibility_token",
        "attribute_tokens",
        "translation",
        "size",
        "rotation",
        "prev",
        "next",
        "num_lidar_pts",
        "num_radar_pts",
    },
    "sample_data": {
        "token",
        "sample_token",
        "ego_pose_token",
        "calibrated_sensor_token",
        "timestamp",
        "fileformat",
        "is_key_frame",
        "height",
        "width",
        "filename",
        "prev",
        "next",
    },
    "scene": {
        "token",
        "log_token",
        "nbr_samples",
        "first_sample_token",
        "last_sample_token",
        "name",
        "description",
    },
    "sensor": {"token", "channel", "modality"},
    "visibility": {"token", "level", "description"},
}


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic"), progress=False, **SMALL)


@pytest.fixture(scope="module")
def nusc(dataroot):
    devkit = pytest.importorskip("nuscenes")
    return devkit.NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)


def sensor_to_global(nusc, record: dict) -> np.ndarray:
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", record["ego_pose_token"])
    return pose_matrix(ego["rotation"], ego["translation"]) @ pose_matrix(
        calibration["rotation"], calibration["translation"]
    )


def lidar_points_in_global(nusc, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The LiDAR origin (3,) and its points (N, 3), in global coordinates."""
    points = np.fromfile(Path(nusc.dataroot) / record["filename"], dtype=np.float32)
    transform = sensor_to_global(nusc, record)
    xyz = points.reshape(-1, 5)[:, :3].astype(np.float64)
    return transform[:3, 3], xyz @ transform[:3, :3].T + transform[:3, 3]


def unproject(nusc, camera: dict, pixels: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Global points (M, 3) from a camera's pixels (3, M) (u, v, 1) and depths (M,)."""
    calibration = nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])
    in_camera = np.linalg.inv(calibration["camera_intrinsic"]) @ pixels * depths  # (3, M)
    transform = sensor_to_global(nusc, camera)
    return in_camera.T @ transform[:3, :3].T + transform[:3, 3]


def records_by_timestamp(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda record: record["timestamp"])


# --------------------------------------------------------------------------- devkit and tables


def test_devkit_loads_dataset_with_expected_counts(nusc, capsys):
    frames_per_sample = len(CAMERAS) + 1 + SMALL["sweeps_per_sample"]
    assert len(nusc.scene) == 1
    assert len(nusc.sample) == 2
    assert len(nusc.sample_data) == 2 * frames_per_sample
    assert len(nusc.ego_pose) == len(nusc.sample_data)
    assert len(nusc.sensor) == len(nusc.calibrated_sensor) == 7
    assert len(nusc.visibility) == 4
    nusc.list_scenes()
    assert "scene-0001" in capsys.readouterr().out


def test_every_table_has_the_fields_a_data_layer_reads(dataroot):
    for table, fields in FIELDS.items():
        records = json.loads((dataroot / "v1.0-mini" / f"{table}.json").read_text())
        assert records, table
        for record in records:
            assert set(record) == fields, table
            assert len(record["token"]) == 32 or table == "visibility"


def test_sample_holds_one_key_frame_per_channel(nusc):
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, LIDAR}
        for channel, token in sample["data"].items():
            record = nusc.get("sample_data", token)
            assert record["is_key_frame"] and record["timestamp"] == sample["timestamp"]
            assert record["filename"].startswith(f"samples/{channel}/")
            assert (Path(nusc.dataroot) / record["filename"]).is_file()
            camera = channel in CAMERAS
            expected_size = (SMALL["width"], SMALL["height"]) if camera else (0, 0)
            assert (record["width"], record["height"]) == expected_size
            assert record["fileformat"] == ("jpg" if camera else "pcd")


def test_camera_calibration_is_a_pinhole_matrix_and_lidar_has_none(nusc):
    for sample_data in nusc.sample_data:
        calibration = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
        assert len(calibration["translation"]) == 3 and len(calibration["rotation"]) == 4
        if sample_data["channel"] == LIDAR:
            assert calibration["camera_intrinsic"] == []
        else:
            intrinsic = np.array(calibration["camera_intrinsic"])
            assert intrinsic.shape == (3, 3) and intrinsic[2].tolist() == [0, 0, 1]


def test_sample_data_chains_link_each_channel_in_time_order(nusc):
    for channel in (*CAMERAS, LIDAR):
        records = records_by_timestamp([r for r in nusc.sample_data if r["channel"] == channel])
        assert records[0]["prev"] == "" and records[-1]["next"] == ""
        for earlier, later in itertools.pairwise(records):
            assert earlier["next"] == later["token"] and later["prev"] == earlier["token"]
            assert later["timestamp"] > earlier["timestamp"]


def test_samples_are_two_hz_and_linked_from_the_scene(nusc):
    scene = nusc.scene[0]
    first = nusc.get("sample", scene["first_sample_token"])
    last = nusc.get("sample", scene["last_sample_token"])
    assert first["prev"] == "" and last["next"] == "" and first["next"] == last["token"]
    assert last["prev"] == first["token"] and scene["nbr_samples"] == 2
    assert last["timestamp"] - first["timestamp"] == 500_000


def test_lidar_sweeps_are_reachable_by_prev_from_a_key_frame(nusc):
    for sample in nusc.sample:
        record = nusc.get("sample_data", sample["data"][LIDAR])
        for _ in range(SMALL["sweeps_per_sample"]):
            sweep = nusc.get("sample_data", record["prev"])
            assert not sweep["is_key_frame"] and sweep["filename"].startswith("sweeps/LIDAR_TOP/")
            assert sweep["sample_token"] == sample["token"]
            assert record["timestamp"] - sweep["timestamp"] == 50_000
            assert (Path(nusc.dataroot) / sweep["filename"]).is_file()
            record = sweep
        previous = nusc.get("sample", sample["prev"]) if sample["prev"] else None
        expected = "" if previous is None else previous["data"][LIDAR]
        assert record["prev"] == expected


def test_lidar_sweeps_aggregate_with_the_devkit(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud

    cloud, times = LidarPointCloud.from_file_multisweep(nusc, nusc.sample[1], LIDAR, LIDAR, 10)
    assert cloud.points.shape[0] == 4 and cloud.points.shape[1] == times.shape[1]
    assert sorted(set(np.round(times.ravel(), 3))) == [0.0, 0.05, 0.1, 0.5, 0.55, 0.6]


def test_annotations_and_instances_link_up(nusc):
    assert nusc.sample_annotation
    for instance in nusc.instance:
        chain = [nusc.get("sample_annotation", instance["first_annotation_token"])]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample_annotation", chain[-1]["next"]))
        assert chain[-1]["token"] == instance["last_annotation_token"]
        assert len(chain) == instance["nbr_annotations"]
        assert {a["instance_token"] for a in chain} == {instance["token"]}
    visibility_tokens = {v["token"] for v in nusc.visibility}
    for annotation in nusc.sample_annotation:
        assert annotation["visibility_token"] in visibility_tokens
        assert annotation["num_radar_pts"] == 0


def test_annotations_are_the_boxes_near_the_ego_with_their_lidar_hits(nusc):
    world = build_scene(0, 0, SMALL["samples_per_scene"]).world
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"][LIDAR])
        origin, points = lidar_points_in_global(nusc, lidar)
        _, _, hit_box = world.ray_cast(np.broadcast_to(origin, points.shape), points - origin)
        ego = np.array(nusc.get("ego_pose", lidar["ego_pose_token"])["translation"])
        near = {i for i, box in enumerate(world.boxes) if math.dist(box.centre[:2], ego[:2]) <= 50}
        annotations = [nusc.get("sample_annotation", token) for token in sample["anns"]]
        centres = {tuple(box.centre): i for i, box in enumerate(world.boxes)}
        annotated = {centres[tuple(a["translation"])]: a for a in annotations}
        assert set(annotated) == near
        for index, annotation in annotated.items():
            box = world.boxes[index]
            assert annotation["size"] == list(box.size)
            assert annotation["category_name"] == box.category
            # float32 points may graze an edge the other way when re-cast
            assert abs(annotation["num_lidar_pts"] - np.sum(hit_box == index)) <= 1


def test_get_sample_data_moves_annotations_into_the_sensor_frame(nusc):
    sample = nusc.sample[0]
    path, boxes, intrinsic = nusc.get_sample_data(sample["data"][LIDAR])
    assert Path(path).is_file() and intrinsic is None and len(boxes) == len(sample["anns"])
    path, boxes, intrinsic = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
    assert Image.open(path).size == (SMALL["width"], SMALL["height"])
    assert intrinsic.shape == (3, 3)
    assert all(box.center[2] > 0 for box in boxes)  # in front of the camera


def test_ego_drives_between_timestamps(nusc):
    poses = records_by_timestamp(nusc.ego_pose)
    positions = np.array([pose["translation"] for pose in poses])
    step = np.linalg.norm(positions[-1] - positions[0])
    assert 2.9 * 0.6 <= step <= 8.0 * 0.6  # 3-8 m/s over the 0.6 s from first to last frame
    assert np.all(positions[:, 2] == 0)


# --------------------------------------------------------------------------- sensors agree


def test_lidar_file_reads_with_the_devkit_as_five_channels(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud

    record = nusc.get("sample_data", nusc.sample[0]["data"][LIDAR])
    path = Path(nusc.dataroot) / record["filename"]
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    cloud = LidarPointCloud.from_file(str(path))
    assert cloud.points.shape == (4, len(raw)) and len(raw) > 1000
    np.testing.assert_array_equal(cloud.points.T, raw[:, :4])
    rings = raw[:, 4]
    assert np.all(rings == np.round(rings)) and set(np.unique(rings)) <= set(range(32))
    assert np.all(np.linalg.norm(raw[:, :3], axis=1) <= 70 + 1e-3)
    assert raw[:, 3].min() >= 0 and raw[:, 3].max() <= 255


def test_projected_lidar_points_land_on_pixels_of_their_surface_colour(nusc):
    """Every camera: the devkit's projection of the key-frame LiDAR, re-cast to find the surface
    each point lies on; points on boxes must see the box's colour in the JPEG."""
    world = build_scene(0, 0, SMALL["samples_per_scene"]).world
    sample = nusc.sample[0]
    lidar = nusc.get("sample_data", sample["data"][LIDAR])
    origin = sensor_to_global(nusc, lidar)[:3, 3]
    matches = []
    for channel in CAMERAS:
        camera = nusc.get("sample_data", sample["data"][channel])
        pixels, depths, image = nusc.explorer.map_pointcloud_to_image(
            lidar["token"], camera["token"]
        )
        points = unproject(nusc, camera, pixels, depths)
        _, rgb, box_index = world.ray_cast(np.broadcast_to(origin, points.shape), points - origin)
        on_box = box_index >= 0
        columns, rows = np.floor(pixels[:2, on_box]).astype(int)
        seen = np.asarray(image)[rows, columns].astype(int)
        matches.append(np.abs(seen - rgb[on_box]).max(axis=1) <= 40)
    matches = np.concatenate(matches)
    assert len(matches) > 200
    assert matches.mean() > 0.9


def test_visibility_is_high_for_an_open_box_and_zero_behind_it():
    ahead = Box("vehicle.car", (12.0, 0.0, 1.0), (4.0, 2.0, 2.0), 0.0, (255, 0, 0))
    hidden = Box("movable_object.trafficcone", (20.0, 0.0, 0.5), (0.4, 0.4, 1.0), 0.0, (0, 255, 0))
    world = SyntheticWorld((ahead, hidden), np.full((1, 3), 100, dtype=np.uint8))
    rig = make_rig(320, 180)
    views = [(camera, camera.to_global(np.eye(4))) for camera in rig[: len(CAMERAS)]]
    fractions = visibility_fractions(world, np.array([0, 1]), views, 320, 180)
    assert fractions[0] > 0.8 and fractions[1] == 0


# --------------------------------------------------------------------------- the world


def brute_force_distance(world: SyntheticWorld, origins: np.ndarray, directions: np.ndarray):
    """Nearest box (or ground) per ray, testing every box: the reference for culled ray casting."""
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(directions[:, 2] < 0, -origins[:, 2] / directions[:, 2], np.inf)
    best, index = np.where(ground <= world.horizon, ground, np.inf), np.full(len(origins), -1)
    for i, box in enumerate(world.boxes):
        cos, sin = math.cos(box.yaw), math.sin(box.yaw)
        to_local = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])
        o = (origins - box.centre) @ to_local.T
        d = directions @ to_local.T
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-box.half_extents - o) / d, (box.half_extents - o) / d
        entry = np.nanmax(np.minimum(t1, t2), axis=1)
        leaving = np.nanmin(np.maximum(t1, t2), axis=1)
        t = np.where((entry <= leaving) & (entry > 0), entry, np.inf)
        closer = t < best
        best[closer], index[closer] = t[closer], i
    return best, index


def test_ray_cast_matches_testing_every_box():
    world = build_scene(3, 0, 4).world
    rng = np.random.default_rng(0)
    centre = world.centres[:, :2].mean(axis=0)
    origins = np.column_stack([centre + rng.uniform(-30, 30, (5000, 2)), rng.uniform(0.5, 3, 5000)])
    directions = rng.normal(size=(5000, 3))
    distance, _, box_index = world.ray_cast(origins, directions)
    expected_distance, expected_index = brute_force_distance(world, origins, directions)
    np.testing.assert_array_equal(box_index, expected_index)
    np.testing.assert_allclose(distance, expected_distance, rtol=1e-9)
    assert (box_index >= 0).sum() > 100


def test_ray_cast_results_do_not_depend_on_ray_order():
    scene = build_scene(0, 1, 2)
    world, rig = scene.world, make_rig(320, 180)
    camera_to_global = rig[0].to_global(scene.ego_to_global(scene.start_us))
    rows, columns = np.mgrid[0:180, 0:320].reshape(2, -1)
    pixels = np.stack([columns + 0.5, rows + 0.5, np.ones(len(rows))], axis=1)
    directions = pixels @ (camera_to_global[:3, :3] @ np.linalg.inv(rig[0].intrinsic)).T
    origins = np.broadcast_to(camera_to_global[:3, 3], directions.shape)
    order = np.random.default_rng(0).permutation(len(directions))
    in_order = world.ray_cast(origins, directions)
    shuffled = world.ray_cast(origins[order], directions[order])
    for a, b in zip(in_order, shuffled, strict=True):
        np.testing.assert_array_equal(a[order], b)


def test_ray_cast_reports_box_ground_and_sky():
    box = Box("vehicle.car", (10.0, 0.0, 1.0), (2.0, 2.0, 2.0), 0.0, (200, 40, 40))
    world = SyntheticWorld((box,), np.full((1, 3), 100, dtype=np.uint8))
    origins = np.array([[0.0, 0.0, 1.0]] * 3)
    directions = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    distance, rgb, box_index = world.ray_cast(origins, directions)
    np.testing.assert_allclose(distance[:2], [9.0, math.sqrt(2)])
    assert distance[2] == np.inf and box_index.tolist() == [0, -1, -1]
    assert rgb[0, 0] > rgb[0, 1] and np.all(rgb[1] <= 100) and rgb[2, 2] > rgb[2, 0]


def test_rebuilt_world_matches_the_written_dataset(nusc):
    scene = build_scene(0, 0, SMALL["samples_per_scene"])
    first = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    assert first["timestamp"] == scene.start_us
    lidar = nusc.get("sample_data", first["data"][LIDAR])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    translation, yaw = scene.ego_pose(scene.start_us)
    np.testing.assert_allclose(pose["translation"], translation)
    np.testing.assert_allclose(pose["rotation"], [math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])
    assert 15 <= len(scene.world.boxes) <= 40


def test_rig_follows_nuscenes_conventions():
    rig = {sensor.channel: sensor for sensor in make_rig()}
    yaws = {
        "CAM_FRONT": 0,
        "CAM_FRONT_RIGHT": -55,
        "CAM_FRONT_LEFT": 55,
        "CAM_BACK": 180,
        "CAM_BACK_LEFT": 110,
        "CAM_BACK_RIGHT": -110,
    }
    assert tuple(rig)[: len(CAMERAS)] == CAMERAS
    for channel, yaw in yaws.items():
        camera = rig[channel]
        rotation = quaternion_to_matrix(camera.rotation)  # camera -> ego
        forward, down = rotation[:, 2], rotation[:, 1]
        heading = [math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0]
        np.testing.assert_allclose(forward, heading, atol=1e-12)
        np.testing.assert_allclose(down, [0, 0, -1], atol=1e-12)
        assert 1.4 < camera.translation[2] < 1.7
        intrinsic = np.array(camera.intrinsic)
        expected_focal = 800 if channel == "CAM_BACK" else 1260
        assert intrinsic[0, 0] == pytest.approx(expected_focal, rel=0.02)
        assert abs(intrinsic[0, 2] - 800) < 40 and abs(intrinsic[1, 2] - 450) < 60
    lidar_x = quaternion_to_matrix(rig[LIDAR].rotation)[:, 0]
    np.testing.assert_allclose(lidar_x, [0, -1, 0], atol=1e-12)  # the ego's right
    assert rig[LIDAR].translation == pytest.approx((0.94, 0.0, 1.84))


# --------------------------------------------------------------------------- determinism, API


def dataset_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_generation_is_deterministic(dataroot, tmp_path):
    again = generate(tmp_path, progress=False, **SMALL)
    assert dataset_files(again) == dataset_files(dataroot)


def test_different_seeds_give_different_datasets(dataroot, tmp_path):
    other = generate(tmp_path, seed=1, progress=False, **SMALL)
    ours, theirs = dataset_files(dataroot), dataset_files(other)
    for table in ("sample_annotation", "sample_data", "ego_pose"):
        assert ours[f"v1.0-mini/{table}.json"] != theirs[f"v1.0-mini/{table}.json"]

    def lidar_files(files: dict[str, bytes]) -> set[bytes]:
        return {data for name, data in files.items() if name.startswith("samples/LIDAR_TOP/")}

    assert lidar_files(ours) and not lidar_files(ours) & lidar_files(theirs)


@pytest.mark.parametrize(
    "bad",
    [
        {"scenes": 0},
        {"samples_per_scene": 0},
        {"sweeps_per_sample": -1},
        {"sweeps_per_sample": 10},
        {"seed": -1},
        {"width": 0},
        {"height": -5},
        {"beams": 0},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        generate(tmp_path / "out", progress=False, **{**SMALL, **bad})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [{"scenes": 1.5}, {"width": "320"}, {"seed": True}])
def test_arguments_of_the_wrong_type_raise_type_error(tmp_path, bad):
    with pytest.raises(TypeError, match=next(iter(bad))):
        generate(tmp_path, progress=False, **{**SMALL, **bad})


def test_generate_defaults_are_the_config_defaults():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(generate).parameters.items()
        if name not in ("out_dir", "progress")
    }
    assert defaults == dataclasses.asdict(SyntheticConfig())


def test_cli_writes_a_loadable_dataset(tmp_path, capsys):
    main(
        [
            str(tmp_path),
            "--scenes",
            "2",
            "--samples-per-scene",
            "1",
            "--sweeps-per-sample",
            "0",
            "--width",
            "64",
            "--height",
            "36",
            "--beams",
            "4",
            "--quiet",
        ]
    )
    assert capsys.readouterr().out == ""
    scenes = json.loads((tmp_path / "v1.0-mini" / "scene.json").read_text())
    assert [scene["name"] for scene in scenes] == ["scene-0001", "scene-0002"]
    images = sorted((tmp_path / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert len(images) == 2 and Image.open(images[0]).size == (64, 36)


def test_cli_rejects_bad_arguments_with_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--scenes", "0", "--quiet"])
    assert exit_info.value.code == 2
    assert "scenes must be >= 1, got 0" in capsys.readouterr().err


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "geomim.data.synthetic", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m geomim.data.synthetic")
    assert "--samples-per-scene" in result.stdout and "--quiet" in result.stdout
    assert "found in sys.modules" not in result.stderr  # runpy: __main__ imported twice
