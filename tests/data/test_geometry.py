"""Camera geometry: the augmentation matrix follows the image operations; projection and depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geomim.data.geometry import (
    ImageAug,
    depth_maps,
    lidar_aug_matrix,
    project_points,
    sample_image_aug,
)
from geomim.data.nuscenes import _augment_image
from geomim.data.poses import pose_matrix, quaternion_to_matrix


def marker_position(image: Image.Image) -> np.ndarray:
    """Centre of the bright marker in an augmented image."""
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    ys, xs = np.nonzero(pixels > 128)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("angle", [0.0, 5.0, -4.2])
def test_matrix_maps_original_pixels_to_augmented_ones(flip, angle):
    image = Image.new("RGB", (1600, 900))
    marker = np.array([700.0, 640.0])  # a 9x9 block centred here (pixel centres at +0.5)
    image.paste((255, 255, 255), (696, 636, 705, 645))
    aug = ImageAug(resize=0.5, crop=(30, 194, 734, 450), flip=flip, rotate_degrees=angle)
    resized = image.resize((800, 450)).crop(aug.crop)
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    augmented = resized.rotate(angle)
    matrix = aug.matrix()
    predicted = matrix[:2, :2] @ (marker + 0.5) + matrix[:2, 3]  # continuous coordinates
    np.testing.assert_allclose(marker_position(augmented) + 0.5, predicted, atol=1.0)


def test_augmented_image_has_the_network_size_and_imagenet_normalisation():
    image = Image.new("RGB", (1600, 900), (124, 116, 104))  # ~ the ImageNet mean
    aug = sample_image_aug(np.random.default_rng(0), image.size, train=True)
    tensor = _augment_image(image, aug)
    assert tensor.shape == (3, 256, 704)
    assert tensor[:, 100:150, 300:400].abs().max() < 0.02  # away from rotated-in black corners


def test_test_time_augmentation_is_the_official_fixed_crop():
    aug = sample_image_aug(np.random.default_rng(0), (1600, 900), train=False)
    matrix = aug.matrix()
    np.testing.assert_allclose(matrix[:2, :2], 0.48 * np.eye(2))
    np.testing.assert_allclose(matrix[:2, 3], [-32, -176])


def test_other_sizes_keep_the_recipes_field_of_view():
    """1600-wide images into a 176-wide input are resized as 400-wide ones into the same input
    (the recipe's 704 / 1600 width ratio): whole views, not small bottom crops of them."""
    for train in (False, True):
        small = sample_image_aug(np.random.default_rng(2), (400, 225), (176, 64), train=train)
        large = sample_image_aug(np.random.default_rng(2), (1600, 900), (176, 64), train=train)
        assert small.resize == (0.48 if not train else small.resize)  # the recipe's own ratio
        assert large.resize == pytest.approx(small.resize / 4)
        assert large.crop[0] == pytest.approx(small.crop[0], abs=1)
    assert sample_image_aug(np.random.default_rng(0), (1600, 900), train=False).resize == 0.48


def test_training_augmentation_stays_in_the_official_ranges():
    rng = np.random.default_rng(1)
    augs = [sample_image_aug(rng, (1600, 900)) for _ in range(200)]
    assert all(0.38 <= a.resize <= 0.55 and -5.4 <= a.rotate_degrees <= 5.4 for a in augs)
    assert all(a.size == (704, 256) for a in augs)
    assert all(a.crop[3] == int(900 * a.resize) for a in augs)  # the bottom is kept
    assert 60 < sum(a.flip for a in augs) < 140


def test_quaternion_matches_a_yaw_rotation():
    yaw = np.deg2rad(30)
    matrix = quaternion_to_matrix([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
    np.testing.assert_allclose(
        matrix[:2, :2], [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    )
    pose = pose_matrix([1, 0, 0, 0], [1, 2, 3])
    np.testing.assert_allclose(pose[:3, 3], [1, 2, 3])


def test_projection_undoes_the_lidar_augmentation_and_keeps_the_nearest_point():
    # camera looking along LiDAR +x: camera x = -lidar y, camera y = -lidar z, camera z = lidar x
    lidar_to_camera = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    intrinsics = np.eye(4)
    intrinsics[:3, :3] = [[100, 0, 50], [0, 100, 20], [0, 0, 1]]
    lidar_to_image = torch.tensor(intrinsics @ lidar_to_camera, dtype=torch.float32)[None]
    image_aug = torch.eye(4)[None]
    flip = torch.tensor(lidar_aug_matrix(flip_x=False, flip_y=True), dtype=torch.float32)
    points = torch.tensor([[10.0, 0.0, 0.0, 0, 0], [20.0, 0.0, 0.0, 0, 0], [5.0, 1.0, 0.0, 0, 0]])
    points[:, :3] = points[:, :3] @ flip[:3, :3].T  # points given in the flipped frame
    pixels, depth = project_points(points, lidar_to_image, image_aug, flip)
    torch.testing.assert_close(pixels[0, 0], torch.tensor([50.0, 20.0]))
    torch.testing.assert_close(pixels[0, 2], torch.tensor([30.0, 20.0]))  # y = +1 m -> left
    torch.testing.assert_close(depth[0], torch.tensor([10.0, 20.0, 5.0]))
    maps = depth_maps(points, lidar_to_image, image_aug, flip, (40, 100))
    assert maps.shape == (1, 40, 100)
    assert maps[0, 20, 50] == 10.0  # two points on one pixel: the nearest wins
    assert maps[0, 20, 30] == 5.0
    assert (maps > 0).sum() == 2
