"""NuScenesMultiView on a synthetic nuScenes-format dataset, checked against the devkit."""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest
import torch
from nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from geomim.data import (
    CAMERAS,
    MultiViewBatch,
    NuScenesMultiView,
    PointConfig,
    collate_multiview,
)
from geomim.data.geometry import project_points
from geomim.data.synthetic import generate

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, scenes=1, samples_per_scene=3, sweeps_per_sample=2, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def nusc(dataroot):
    return NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)


def dataset(dataroot, **kwargs) -> NuScenesMultiView:
    kwargs.setdefault("cache_dir", None)
    return NuScenesMultiView(dataroot, version="v1.0-mini", split=None, **kwargs)


def test_items_have_the_documented_shapes(dataroot):
    item = dataset(dataroot)[1]
    assert item["images"].shape == (6, 3, 256, 704)
    for key in ("intrinsics", "camera_to_ego", "camera_to_lidar", "lidar_to_image", "image_aug"):
        assert item[key].shape == (6, 4, 4)
    assert item["lidar_aug"].shape == (4, 4)
    assert item["points"].ndim == 2 and item["points"].shape[1] == 5
    assert item["depth_maps"].shape == (6, 256, 704)
    assert (item["depth_maps"] > 0).sum() > 1000


def test_points_carry_sweeps_with_time_lags_inside_the_range(dataroot):
    data = dataset(dataroot)
    points = data[2]["points"]
    lags = points[:, 4].unique()
    assert lags[0] == 0 and len(lags) > 1  # the key frame, then sweeps with positive lags
    assert (
        (points[:, :2].abs() < 54).all() and (points[:, 2] > -5).all() and (points[:, 2] < 3).all()
    )
    data.index.sweep_paths[0] = ""  # no earlier sweep: the key frame 9 more times, lag 0 (official)
    first = data[0]["points"]
    assert (first[:, 4] == 0).all() and len(first) > 0  # the padding's rows: tests below


def hand_made_sample(data, folder, key: np.ndarray, sweeps=()) -> None:
    """Sample 0 of `data` reads the (P, 5) `key` frame and the `sweeps`, (points, sensor-to-
    LiDAR 4x4, lag in s) each, from files in `folder` (absolute paths: the images stay)."""
    index = data.index
    key.astype(np.float32).tofile(folder / "key.bin")
    index.lidar_paths[0] = str(folder / "key.bin")
    index.sweep_paths[0] = ""
    for k, (points, transform, lag) in enumerate(sweeps):
        points.astype(np.float32).tofile(folder / f"s{k}.bin")
        index.sweep_paths[0, k] = str(folder / f"s{k}.bin")
        index.sweep_to_lidar[0, k] = transform
        index.sweep_timestamps[0, k] = index.timestamps[0] - round(lag * 1e6)


def test_close_points_are_dropped_from_sweeps_only_as_the_official_loader(dataroot, tmp_path):
    """mmdet3d's LoadPointsFromMultiSweeps(remove_close=True) filters the sweeps (each in its
    own frame) and the padding copies, never the key frame."""
    key = np.array([[0.5, 0.5, 0, 7, 3], [-0.9, 0.2, -1, 7, 3], [10, 0, 0, 7, 3]])
    shift = np.eye(4)
    shift[0, 3] = 5.0  # the sweep sensor sits 5 m ahead of the key-frame LiDAR
    sweep = np.array([[0.5, -0.5, 0, 1, 1], [-5.5, 0.3, 0, 1, 1]])  # close there; close here
    data = dataset(dataroot, train=False)
    hand_made_sample(data, tmp_path, key, [(sweep, shift, 0.05)])
    points = data.sample_points(0)[1]
    expected = [
        [0.5, 0.5, 0, 7, 0],
        [-0.9, 0.2, -1, 7, 0],
        [10, 0, 0, 7, 0],
        [-0.5, 0.3, 0, 1, 0.05],  # the sweep's far point, moved: close now, but kept
    ]
    torch.testing.assert_close(points, torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(data[0]["points"], points)  # the test-time item: no flips


@pytest.mark.parametrize("pad", [True, False])
def test_without_sweeps_padding_repeats_the_close_filtered_key_frame(dataroot, tmp_path, pad):
    key = np.array([[0.5, 0.5, 0, 7, 3], [10, 0, 0, 7, 3]])
    data = dataset(dataroot, points=PointConfig(pad_empty_sweeps=pad))
    hand_made_sample(data, tmp_path, key)
    points = data.sample_points(0)[1]
    padding = [[10, 0, 0, 7, 0]] * 9 if pad else []
    expected = torch.tensor([[0.5, 0.5, 0, 7, 0], [10, 0, 0, 7, 0], *padding])
    torch.testing.assert_close(points, expected)


def test_test_mode_draws_sweeps_at_random_as_the_official_configs(dataroot, tmp_path):
    """GeoMIM's configs never set mmdet3d's `test_mode` (the nearest 9 sweeps, in order): with
    10 stored sweeps, evaluation draws 9 at random too; seeded, so reproducible."""
    lags = [round(0.05 * (k + 1), 2) for k in range(10)]  # sweep k: one point, lag 0.05 (k + 1)
    sweeps = [(np.array([[20.0 + k, 0, 0, 1, 1]]), np.eye(4), lag) for k, lag in enumerate(lags)]
    data = dataset(dataroot, train=False)
    hand_made_sample(data, tmp_path, np.array([[10.0, 0, 0, 7, 3]]), sweeps)

    def chosen(points: Tensor) -> list[float]:
        return [round(lag, 2) for lag in points[1:, 4].tolist()]  # after the key frame's point

    draws = []
    for epoch in range(6):
        data.set_epoch(epoch)
        draws.append(chosen(data[0]["points"]))
        assert draws[-1] == chosen(data[0]["points"])  # reproducible
        assert len(set(draws[-1])) == 9 and set(draws[-1]) <= set(lags)
    assert any(lags[-1] in draw for draw in draws)  # not always the nearest nine
    assert any(draw != sorted(draw) for draw in draws)  # in random order
    assert chosen(data.sample_points(0)[1]) == chosen(data.sample_points(0)[1])


@pytest.mark.parametrize("train", [False, True])
def test_projection_matches_the_devkit_once_the_augmentation_is_undone(dataroot, nusc, train):
    data = dataset(dataroot, train=train, seed=3)
    item = data[1]
    sample = nusc.get("sample", item["token"])
    lidar_token = sample["data"]["LIDAR_TOP"]
    lidar_file = nusc.get_sample_data_path(lidar_token)
    raw = torch.from_numpy(LidarPointCloud.from_file(lidar_file).points.T.copy())
    identity = torch.eye(4)
    pixels, depth = project_points(raw, item["lidar_to_image"], item["image_aug"], identity)
    undo = torch.linalg.inv(item["image_aug"].double())
    original = pixels.double() @ undo[:, :2, :2].transpose(1, 2) + undo[:, None, :2, 3]
    for camera_index, channel in enumerate(CAMERAS):
        camera_token = sample["data"][channel]
        theirs, their_depth, image = nusc.explorer.map_pointcloud_to_image(
            lidar_token, camera_token
        )
        u, v = original[camera_index, :, 0], original[camera_index, :, 1]
        width, height = image.size
        kept = (depth[camera_index] > 1.0) & (u > 1) & (u < width - 1) & (v > 1) & (v < height - 1)
        assert kept.sum() == len(their_depth) > 0
        torch.testing.assert_close(
            depth[camera_index][kept].double(),
            torch.from_numpy(their_depth).double(),
            atol=1e-3,
            rtol=0,
        )
        ours = torch.stack([u[kept], v[kept]], 1)
        theirs = torch.from_numpy(theirs[:2].T).double()
        # The devkit moves float32 points through the global frame (hundreds of metres), which
        # costs it ~0.01 px; ours go straight from LiDAR to image.
        torch.testing.assert_close(ours, theirs, atol=5e-2, rtol=0)


def test_augmented_images_show_content_where_the_matrices_put_it(dataroot, nusc):
    """A LiDAR point's colour in the rendered image is its colour in the augmented image."""
    item = dataset(dataroot, train=True, seed=5)[1]
    sample = nusc.get("sample", item["token"])
    raw = LidarPointCloud.from_file(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    points = torch.from_numpy(raw.points.T.copy())
    augmented, depth = project_points(
        points, item["lidar_to_image"], item["image_aug"], torch.eye(4)
    )
    original, _ = project_points(
        points, item["lidar_to_image"], torch.eye(4).expand(6, 4, 4), torch.eye(4)
    )
    images = (item["images"] * STD + MEAN).clamp(0, 1) * 255  # (6, 3, 256, 704)
    agree, total = 0, 0
    for camera_index, channel in enumerate(CAMERAS):
        rendered = np.asarray(Image.open(nusc.get_sample_data_path(sample["data"][channel])))
        u, v = augmented[camera_index, :, 0], augmented[camera_index, :, 1]
        x, y = original[camera_index, :, 0], original[camera_index, :, 1]
        visible = (
            (depth[camera_index] > 1)
            & (u >= 2)
            & (u < 702)
            & (v >= 2)
            & (v < 254)
            & (x >= 0)
            & (x < rendered.shape[1])
            & (y >= 0)
            & (y < rendered.shape[0])
        )
        seen = images[camera_index][:, v[visible].long(), u[visible].long()].T
        truth = torch.from_numpy(rendered[y[visible].long(), x[visible].long()].astype(np.float32))
        agree += int(((seen - truth).abs().max(dim=1).values < 40).sum())
        total += int(visible.sum())
    assert total > 500
    assert agree / total > 0.8  # edges and resampling blur the rest


def test_test_mode_is_fixed_and_training_is_seeded_per_epoch(dataroot):
    test_set = dataset(dataroot, train=False)
    torch.testing.assert_close(
        test_set[0]["image_aug"][:, :2, 3], torch.tensor([[-32.0, -176.0]] * 6)
    )
    train_set = dataset(dataroot, train=True, seed=1)
    first = train_set[0]["image_aug"]
    torch.testing.assert_close(train_set[0]["image_aug"], first)
    train_set.set_epoch(1)
    assert not torch.allclose(train_set[0]["image_aug"], first)


def test_camera_subset_keeps_the_given_order(dataroot):
    item = dataset(dataroot, cameras=("CAM_BACK", "CAM_FRONT"))[0]
    full = dataset(dataroot, train=False)[0]
    assert item["images"].shape[0] == 2
    torch.testing.assert_close(item["intrinsics"], full["intrinsics"][[3, 0]])
    with pytest.raises(ValueError, match="non-empty subset"):
        dataset(dataroot, cameras=("CAM_TOP",))


def test_cached_index_needs_no_devkit_and_follows_table_changes(dataroot, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    built = dataset(dataroot, cache_dir=cache)
    assert len(list(cache.glob("index-*.npz"))) == 1

    def no_devkit(*args, **kwargs):
        raise AssertionError("the devkit was loaded although the index is cached")

    monkeypatch.setattr("nuscenes.NuScenes", no_devkit)
    cached = dataset(dataroot, cache_dir=cache)
    assert list(cached.index.tokens) == list(built.index.tokens)
    np.testing.assert_array_equal(cached.index.camera_to_lidar, built.index.camera_to_lidar)
    table = dataroot / "v1.0-mini" / "scene.json"
    table.write_text(table.read_text())  # a new mtime: the cache no longer matches
    with pytest.raises(AssertionError, match="devkit was loaded"):
        dataset(dataroot, cache_dir=cache)


def test_the_index_keeps_the_configured_sweep_count_and_caches_each_count_apart(dataroot, tmp_path):
    cache = tmp_path / "cache"
    one = dataset(dataroot, cache_dir=cache, points=PointConfig(sweeps=1, stored_sweeps=1))
    recipe = dataset(dataroot, cache_dir=cache)
    assert len(list(cache.glob("index-*.npz"))) == 2
    last = len(recipe) - 1  # the dataset's sweeps before it: more than one
    assert len(one.index.entry(last)["sweeps"]) == 1
    assert len(recipe.index.entry(last)["sweeps"]) > 1
    nearest, same = one.index.entry(last)["sweeps"][0], recipe.index.entry(last)["sweeps"][0]
    assert (nearest["path"], nearest["timestamp"]) == (same["path"], same["timestamp"])
    np.testing.assert_array_equal(nearest["sensor_to_lidar"], same["sensor_to_lidar"])


def test_loader_batches_with_workers(dataroot):
    loader = DataLoader(
        dataset(dataroot), batch_size=2, num_workers=2, collate_fn=collate_multiview
    )
    batch = next(iter(loader))
    assert isinstance(batch, MultiViewBatch)
    assert batch.images.shape == (2, 6, 3, 256, 704)
    assert batch.cameras.lidar_to_image.shape == (2, 6, 4, 4)
    assert batch.depth_maps.shape == (2, 6, 256, 704)
    assert len(batch.points) == 2 and len(batch.tokens) == 2


@pytest.fixture
def broken_copy(dataroot, tmp_path):
    """A copy of the dataset (links to the files) where tests may damage files."""
    copy = tmp_path / "copy"
    for path in dataroot.rglob("*"):
        target = copy / path.relative_to(dataroot)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not path.name.startswith("index-"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return copy


def test_missing_image_names_file_and_sample(broken_copy, caplog):
    data = dataset(broken_copy)
    entry = data.index.entry(1)
    victim = broken_copy / entry["cameras"]["CAM_BACK"]["path"]
    victim.unlink()
    with pytest.raises(OSError, match=rf"{re.escape(victim.name)}.*{entry['token']}"):
        data[1]
    with caplog.at_level(logging.WARNING):
        skipping = dataset(broken_copy, skip_bad=True)
    assert len(skipping) == len(data) - 1
    assert skipping.skipped == {entry["token"]}
    assert "skipping bad samples" in caplog.text


def test_unreadable_image_is_skipped_and_counted_never_zeros(broken_copy, caplog):
    data = dataset(broken_copy, skip_bad=True)
    entry = data.index.entry(0)
    (broken_copy / entry["cameras"]["CAM_FRONT"]["path"]).write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        item = data[0]
    assert item["token"] != entry["token"]  # the next good sample instead
    assert data.skipped == {entry["token"]}
    assert caplog.text.count("skipping bad samples") == 1
    with pytest.raises(OSError, match=rf"cannot read image .*{entry['token']}"):
        dataset(broken_copy)[0]


def test_truncated_points_file_names_file_and_sample(broken_copy):
    data = dataset(broken_copy)
    entry = data.index.entry(1)
    lidar = broken_copy / entry["lidar_path"]
    lidar.write_bytes(lidar.read_bytes()[:-4])
    with pytest.raises(
        ValueError, match=rf"{re.escape(lidar.name)} of sample {entry['token']}.*multiple of 5"
    ):
        data[1]


def test_unknown_split_and_scenes_are_errors(dataroot):
    with pytest.raises(ValueError, match="unknown split 'everything'"):
        NuScenesMultiView(dataroot, version="v1.0-mini", split="everything")
    with pytest.raises(ValueError, match="none of the scenes"):
        NuScenesMultiView(dataroot, version="v1.0-mini", scenes=["scene-9999"], cache_dir=None)
    with pytest.raises(FileNotFoundError, match="no nuScenes tables"):
        NuScenesMultiView(dataroot, version="v1.0-trainval", split=None)


def test_scene_selection_by_name(dataroot, nusc):
    name = nusc.scene[0]["name"]
    assert len(NuScenesMultiView(dataroot, "v1.0-mini", scenes=[name], cache_dir=None)) == 3


def test_an_empty_scene_selection_is_an_error_with_or_without_an_index_cache(dataroot, tmp_path):
    dataset(dataroot, cache_dir=tmp_path)  # caches the index of every scene
    for cache_dir in (tmp_path, None):
        with pytest.raises(ValueError, match="scenes is empty"):
            NuScenesMultiView(dataroot, "v1.0-mini", scenes=[], cache_dir=cache_dir)


def test_a_truncated_index_cache_is_rebuilt_with_a_warning(dataroot, tmp_path):
    built = dataset(dataroot, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("index-*.npz")
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.warns(
        RuntimeWarning, match=rf"{re.escape(cache.name)} is not a readable .*rebuild"
    ):
        rebuilt = dataset(dataroot, cache_dir=tmp_path)
    assert list(rebuilt.index.tokens) == list(built.index.tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset(dataroot, cache_dir=tmp_path)  # the rewritten cache reads


def test_images_smaller_than_the_input_warn_once_with_their_sizes(tmp_path):
    root = generate(
        tmp_path, scenes=1, samples_per_scene=2, sweeps_per_sample=0, width=400, height=225,
        progress=False,
    )  # fmt: skip
    data = dataset(root, train=False)  # a 704 x 256 input from 400 x 225 images
    with pytest.warns(UserWarning, match=r"is 400x225: the 704x256 .* upscaled by 1.92") as seen:
        data[0]
        data[1]
    assert len([w for w in seen if "upscaled" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset(root, train=False, image_size=(176, 64))[0]  # the recipe's field of view
    with pytest.warns(UserWarning, match=r"is 400x225: .* 192x108, smaller than the 176x128"):
        dataset(root, train=False, image_size=(176, 128))[0]  # taller than 16:9: padded


def test_non_finite_points_in_a_file_name_the_file_and_sample(dataroot, tmp_path):
    data = dataset(dataroot, train=False)
    token = data.index.entry(0)["token"]
    key = np.full((4, 5), np.nan)  # the range filter would drop them all: an empty teacher map
    hand_made_sample(data, tmp_path, key)
    with pytest.raises(ValueError, match=rf"key.bin of sample {token} hold 4 of 4 rows with NaN"):
        data.sample_points(0)


@pytest.mark.parametrize(
    ("table", "camera", "value", "problem"),
    [
        ("intrinsics", 2, 0.0, "is singular"),  # fx = fy = 0
        ("camera_to_lidar", 4, 0.0, "is singular"),
        ("camera_to_ego", 5, float("nan"), "holds NaN"),
    ],
)
def test_bad_calibration_names_sample_and_camera(dataroot, table, camera, value, problem):
    data = dataset(dataroot, train=False)
    token = data.index.entry(1)["token"]
    matrices = getattr(data.index, table)
    matrices[1, camera, :2, :2] = value
    with pytest.raises(ValueError, match=rf"{table} of sample {token}, camera {camera} "
                       rf"\({CAMERAS[camera]}\) {problem}"):  # fmt: skip
        data[1]
    data.skip_bad = True
    assert data[1]["token"] != token and data.skipped == {token}
