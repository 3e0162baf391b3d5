"""The typed batch: shapes and dtypes checked when built, values when collated."""

from __future__ import annotations

import pytest
import torch

from geomim.data import CameraGeometry, MultiViewBatch, collate_multiview
from geomim.data.batch import check_camera_values

VIEWS, HEIGHT, WIDTH = 3, 16, 32
NAMES = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT")


def item(token: str, seed: int = 0) -> dict:
    """A valid hand-made `NuScenesMultiView`-style item of 3 cameras."""
    generator = torch.Generator().manual_seed(seed)
    intrinsics = torch.eye(4).repeat(VIEWS, 1, 1)
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = 20.0
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = WIDTH / 2, HEIGHT / 2
    image_aug = torch.eye(4).repeat(VIEWS, 1, 1)
    image_aug[:, :2, :2] *= 0.5
    return {
        "token": token,
        "camera_names": NAMES,
        "images": torch.randn(VIEWS, 3, HEIGHT, WIDTH, generator=generator),
        "intrinsics": intrinsics,
        "camera_to_ego": torch.eye(4).repeat(VIEWS, 1, 1),
        "camera_to_lidar": torch.eye(4).repeat(VIEWS, 1, 1),
        "lidar_to_image": intrinsics.clone(),
        "image_aug": image_aug,
        "lidar_aug": torch.eye(4),
        "points": torch.randn(20, 5, generator=generator),
        "depth_maps": torch.zeros(VIEWS, HEIGHT, WIDTH),
    }


def test_valid_items_collate_into_a_batch():
    batch = collate_multiview([item("a"), item("b", seed=1)])
    assert batch.tokens == ["a", "b"]
    assert batch.images.shape == (2, VIEWS, 3, HEIGHT, WIDTH)
    assert batch.cameras.image_aug.shape == (2, VIEWS, 4, 4)
    assert [len(p) for p in batch.points] == [20, 20]


@pytest.mark.parametrize("name", ["intrinsics", "camera_to_ego", "camera_to_lidar", "image_aug"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_camera_matrix_names_sample_and_camera(name, value):
    items = [item("a"), item("b")]
    items[1][name][2, 0, 3] = value
    with pytest.raises(
        ValueError, match=rf"{name} of sample b, camera 2 \(CAM_FRONT_LEFT\) holds NaN or inf"
    ):
        collate_multiview(items)


@pytest.mark.parametrize("name", ["intrinsics", "image_aug", "camera_to_lidar"])
def test_a_singular_matrix_that_is_inverted_is_a_clear_error(name):
    items = [item("a"), item("b")]
    items[0][name][1, 0, 0] = 0.0  # intrinsics: fx = 0; the others: a zero row
    items[0][name][1, 0, :3] = 0.0
    with pytest.raises(ValueError, match=rf"{name} of sample a, camera 1 .* is singular"):
        collate_multiview(items)


def test_a_singular_lidar_augmentation_names_the_sample():
    items = [item("a"), item("b")]
    items[1]["lidar_aug"][2, 2] = 0.0
    with pytest.raises(ValueError, match=r"lidar_aug of sample b is singular"):
        collate_multiview(items)


def test_nan_points_are_an_error_naming_the_sample():
    items = [item("a"), item("b")]
    items[1]["points"][:] = float("nan")  # would give an empty teacher map
    with pytest.raises(ValueError, match=r"points of sample b hold 20 of 20 rows with NaN"):
        collate_multiview(items)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64, torch.float16])
def test_images_other_than_float32_are_refused_naming_the_expected_dtype(dtype):
    items = [item("a")]
    items[0]["images"] = items[0]["images"].to(dtype)
    with pytest.raises(TypeError, match=rf"images must be float32, .* got {dtype}"):
        collate_multiview(items)


def test_image_aug_for_fewer_cameras_names_the_expected_count():
    items = [item("a")]
    items[0]["image_aug"] = items[0]["image_aug"][:2]
    with pytest.raises(ValueError, match=r"image_aug is \(1, 2, 4, 4\) \(2 cameras, expected 3\)"):
        collate_multiview(items)
    matrices = {key: items[0][key][None] for key in ("intrinsics", "camera_to_ego")}
    with pytest.raises(ValueError, match=r"image_aug is .* \(2 cameras, expected 3\)"):
        CameraGeometry(
            **matrices,
            camera_to_lidar=matrices["camera_to_ego"],
            lidar_to_image=matrices["intrinsics"],
            image_aug=items[0]["image_aug"][None],
        )


def test_batch_parts_must_agree_with_the_camera_matrices():
    batch = collate_multiview([item("a")])
    with pytest.raises(ValueError, match=r"depth_maps must be \(1, 3, 16, 32\)"):
        MultiViewBatch(
            batch.tokens, batch.images, batch.cameras, batch.lidar_aug, batch.points,
            batch.depth_maps[:, :2],
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"points of sample a must be \(P, 5\)"):
        MultiViewBatch(
            batch.tokens, batch.images, batch.cameras, batch.lidar_aug, [batch.points[0][:, :4]],
            batch.depth_maps,
        )  # fmt: skip


def test_items_of_different_shapes_name_each_sample():
    items = [item("a"), item("b")]
    items[1]["depth_maps"] = items[1]["depth_maps"][:, :8]
    with pytest.raises(ValueError, match=r"depth_maps must have one shape .*'b': \(3, 8, 32\)"):
        collate_multiview(items)


def test_real_calibrations_pass_and_camera_names_are_optional():
    intrinsics = torch.eye(4, dtype=torch.float64)[None, None].repeat(1, 2, 1, 1)
    intrinsics[..., :3, :3] = torch.tensor([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    check_camera_values({"intrinsics": intrinsics}, ["t"])  # condition number ~2e3
    intrinsics[0, 1, 1, 1] = 1e-9
    with pytest.raises(ValueError, match=r"intrinsics of sample t, camera 1 is singular or nearly"):
        check_camera_values({"intrinsics": intrinsics}, ["t"])
