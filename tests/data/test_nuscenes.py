"""NuScenesMultiView on a synthetic nuScenes-format dataset, checked against the devkit."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from PIL import Image
from torch.utils.data import DataLoader

from geomim.data import CAMERAS, MultiViewBatch, NuScenesMultiView, collate_multiview
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
    assert (first[:, 4] == 0).all()
    assert len(first) % 10 == 0


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
