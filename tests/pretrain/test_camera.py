"""The camera vector of the camera-aware modulation: its inputs must describe the same cameras."""

from __future__ import annotations

import pytest
import torch

from geomim.pretrain.camera import CAMERA_VECTOR_SIZE, camera_vector


def test_camera_vector_has_22_values_per_camera():
    matrices = torch.eye(4).repeat(2, 6, 1, 1)
    assert camera_vector(matrices, matrices, matrices).shape == (2, 6, CAMERA_VECTOR_SIZE)


def test_image_aug_for_5_of_6_cameras_names_the_expected_count():
    six, five = torch.eye(4).repeat(2, 6, 1, 1), torch.eye(4).repeat(2, 5, 1, 1)
    with pytest.raises(ValueError, match=r"image_aug is \(2, 5, 4, 4\) \(5 cameras, expected 6\)"):
        camera_vector(six, five, six)
    with pytest.raises(ValueError, match=r"camera_to_ego must be \(\.\.\., 4, 4\) matrices"):
        camera_vector(six, six, six[..., :3, :])
