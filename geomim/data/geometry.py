"""Camera geometry of a multi-view sample: augmentation matrices, projection, sparse depth maps.

Conventions (those of BEVFusion, which the official pretraining uses): 4x4 homogeneous matrices;
`lidar_to_image = intrinsics @ lidar_to_camera`; the image-augmentation matrix maps original pixel
coordinates to augmented ones; the LiDAR-augmentation matrix maps the LiDAR frame to the augmented
one the points are given in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# BEVFusion's ImageAug3D in the official recipe: resize range in training, fixed test resize.
RESIZE_RANGE = (0.38, 0.55)
TEST_RESIZE = 0.48
RECIPE_WIDTH_RATIO = 704 / 1600  # the recipe's crop width over nuScenes' image width


@dataclass(frozen=True)
class ImageAug:
    """One camera's image augmentation, in the order applied: resize, crop, flip, rotate."""

    resize: float
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in resized pixels
    flip: bool
    rotate_degrees: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the augmented image."""
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    def matrix(self) -> np.ndarray:
        """4x4 map from original to augmented pixel coordinates (2x2 part and translation)."""
        width, height = self.size
        linear = np.eye(2) * self.resize
        shift = -np.array(self.crop[:2], dtype=np.float64)
        if self.flip:  # x -> width - x
            flip = np.array([[-1.0, 0.0], [0.0, 1.0]])
            linear, shift = flip @ linear, flip @ shift + np.array([width, 0.0])
        angle = math.radians(self.rotate_degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, sin], [-sin, cos]])
        centre = np.array([width / 2, height / 2])
        linear, shift = rotation @ linear, rotation @ (shift - centre) + centre
        matrix = np.eye(4)
        matrix[:2, :2] = linear
        matrix[:2, 3] = shift
        return matrix


def sample_image_aug(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    final_size: tuple[int, int] = (704, 256),
    train: bool = True,
    resize_range: tuple[float, float] = RESIZE_RANGE,
    test_resize: float = TEST_RESIZE,
    rotate_range: tuple[float, float] = (-5.4, 5.4),
    flip_probability: float = 0.5,
) -> ImageAug:
    """BEVFusion's `ImageAug3D` (bottom crop, bot_pct 0): random in training, fixed in test.

    The resize factors are the recipe's for 1600-wide images into 704-wide crops; other widths
    scale them by `resize_scale`, so the crop covers the recipe's field of view whatever the two
    sizes (nuScenes into 704 x 256, or 400-wide synthetic images into 176 x 64: unchanged).
    """
    width, height = image_size
    final_w, final_h = final_size
    scale = resize_scale(image_size, final_size)
    resize = scale * (float(rng.uniform(*resize_range)) if train else test_resize)
    new_w, new_h = int(width * resize), int(height * resize)
    top = new_h - final_h
    slack = max(0, new_w - final_w)
    left = int(rng.uniform(0, slack)) if train else int(slack / 2)
    flip = bool(train and rng.uniform() < flip_probability)
    angle = float(rng.uniform(*rotate_range)) if train else 0.0
    return ImageAug(resize, (left, top, left + final_w, top + final_h), flip, angle)


def resize_scale(image_size: tuple[int, int], final_size: tuple[int, int]) -> float:
    """How much the recipe's resize factors scale for (W, H) images into (W, H) crops: 1 at the
    recipe's width ratio (704 / 1600)."""
    ratio = final_size[0] / image_size[0]
    return 1.0 if ratio == RECIPE_WIDTH_RATIO else ratio / RECIPE_WIDTH_RATIO


def lidar_aug_matrix(flip_x: bool = False, flip_y: bool = False) -> np.ndarray:
    """4x4 LiDAR augmentation of the official recipe: random flips (rotation and scale are off)."""
    return np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])


def project_points(
    points: Tensor, lidar_to_image: Tensor, image_aug: Tensor, lidar_aug: Tensor
) -> tuple[Tensor, Tensor]:
    """Augmented-frame LiDAR points (P, >=3) -> augmented pixels (N, P, 2) and camera depths (N, P).

    The official steps: undo the LiDAR augmentation, apply lidar_to_image, divide by the camera
    depth (clamped to [1e-5, 1e5]), then apply the image augmentation. One camera per row of the
    (N, 4, 4) matrices. The 3x3 products are written out as ordered sums, so the result is the
    same on every machine and bit for bit the official one (a BLAS matmul may sum differently).
    """
    xyz = points[:, :3].to(lidar_aug.dtype) - lidar_aug[:3, 3]
    xyz = _rotate(torch.linalg.inv(lidar_aug[:3, :3]), xyz)  # (P, 3) in the sensor's LiDAR frame
    camera = _rotate(lidar_to_image[:, None, :3, :3], xyz) + lidar_to_image[:, None, :3, 3]
    depth = camera[..., 2].clamp(1e-5, 1e5)  # (N, P)
    scaled = torch.cat([camera[..., :2] / depth[..., None], depth[..., None]], dim=-1)
    pixels = _rotate(image_aug[:, None, :3, :3], scaled) + image_aug[:, None, :3, 3]
    return pixels[..., :2], depth


def _rotate(matrix: Tensor, xyz: Tensor) -> Tensor:
    """(..., 3, 3) matrix applied to (..., 3) vectors as m[i, 0] x + m[i, 1] y + m[i, 2] z."""
    x, y, z = xyz.unbind(-1)
    rows = [
        (matrix[..., i, 0] * x + matrix[..., i, 1] * y) + matrix[..., i, 2] * z for i in range(3)
    ]
    return torch.stack(rows, dim=-1)


def depth_maps(
    points: Tensor,
    lidar_to_image: Tensor,
    image_aug: Tensor,
    lidar_aug: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """(N, H, W) sparse depth per camera: the camera depth of the nearest point in each pixel, 0
    where no point lands. Pixels are the truncated augmented coordinates, 0 <= u < W, 0 <= v < H.
    """
    height, width = size
    pixels, depth = project_points(points, lidar_to_image, image_aug, lidar_aug)
    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    camera_index = torch.arange(depth.shape[0])[:, None].expand_as(depth)[inside]
    flat = (camera_index * height + v[inside].long()) * width + u[inside].long()
    maps = torch.full((depth.shape[0] * height * width,), float("inf"), dtype=depth.dtype)
    maps.scatter_reduce_(0, flat, depth[inside], reduce="amin")
    maps[maps.isinf()] = 0
    return maps.view(-1, height, width)
