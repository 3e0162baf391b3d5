"""A nuScenes-like camera rig and a random batch on it, made in memory (no dataset, no devkit).

Six cameras around the car, yawed and with the focal lengths of nuScenes' (the back one is the
wide one), 1.5 m above the LiDAR, images resized and cropped as the official test-time
augmentation does. `python -m geomim.check` and the benchmarks time the real models on it.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch.utils.data import Dataset

from geomim.data.batch import CameraGeometry, MultiViewBatch, collate_multiview
from geomim.data.geometry import ImageAug, depth_maps

CAMERA_YAWS = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)  # optical axes (degrees, LiDAR frame)
FOCALS = (1266.0, 1260.0, 1260.0, 809.0, 1260.0, 1260.0)  # in original pixels
ORIGINAL_SIZE = (1600, 900)  # (W, H)
OFFICIAL_IMAGE_SIZE = (256, 704)  # (H, W), the official crop
OFFICIAL_RESIZE = 0.48  # the official test-time resize for 704-wide crops
CAMERA_HEIGHT = 1.5  # camera above the LiDAR (m)
LIDAR_HEIGHT = 1.84  # LiDAR above the ego origin (m)


def rig_image_aug(image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE) -> ImageAug:
    """The official test-time augmentation scaled to an (H, W) crop: resize, bottom-centre crop."""
    height, width = image_size
    resize = OFFICIAL_RESIZE * width / OFFICIAL_IMAGE_SIZE[1]
    resized_width, resized_height = (round(side * resize) for side in ORIGINAL_SIZE)
    left, top = (resized_width - width) // 2, resized_height - height
    if left < 0 or top < 0:
        raise ValueError(f"image_size {image_size} is wider than the rig's resized images")
    return ImageAug(resize, (left, top, left + width, top + height), False, 0.0)


def rig_cameras(image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE) -> CameraGeometry:
    """The rig's (1, 6, 4, 4) camera geometry for images cropped to (H, W)."""
    width, height = ORIGINAL_SIZE
    intrinsics, to_lidar = [], []
    for yaw_degrees, focal in zip(CAMERA_YAWS, FOCALS, strict=True):
        yaw = math.radians(yaw_degrees)
        forward = [math.cos(yaw), math.sin(yaw), 0.0]  # camera z (optical axis)
        right = [math.sin(yaw), -math.cos(yaw), 0.0]  # camera x
        down = [0.0, 0.0, -1.0]  # camera y
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, :3] = torch.tensor([right, down, forward], dtype=torch.float64).T
        pose[2, 3] = CAMERA_HEIGHT
        to_lidar.append(pose)
        k = torch.eye(4, dtype=torch.float64)
        k[0, 0] = k[1, 1] = focal
        k[0, 2], k[1, 2] = width / 2, height / 2
        intrinsics.append(k)
    intrinsics, camera_to_lidar = torch.stack(intrinsics), torch.stack(to_lidar)
    camera_to_ego = camera_to_lidar.clone()
    camera_to_ego[:, 2, 3] += LIDAR_HEIGHT
    image_aug = torch.from_numpy(rig_image_aug(image_size).matrix()).expand(len(FOCALS), 4, 4)
    matrices = {
        "intrinsics": intrinsics,
        "camera_to_ego": camera_to_ego,
        "camera_to_lidar": camera_to_lidar,
        "lidar_to_image": intrinsics @ torch.linalg.inv(camera_to_lidar),
        "image_aug": image_aug,
    }
    return CameraGeometry(**{name: m.float().contiguous()[None] for name, m in matrices.items()})


def rig_sample(
    image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE,
    num_points: int = 200_000,
    seed: int = 0,
    token: str = "rig-0",
) -> dict:
    """One sample in `NuScenesMultiView`'s item format: random images and LiDAR points on the
    rig, the depth maps the points give."""
    generator = torch.Generator().manual_seed(seed)
    cameras = rig_cameras(image_size)
    matrices = {f.name: getattr(cameras, f.name)[0] for f in fields(cameras)}  # each (N, 4, 4)
    images = torch.randn(len(FOCALS), 3, *image_size, generator=generator)
    low = torch.tensor([-54.0, -54.0, -3.0, 0.0, 0.0])
    span = torch.tensor([108.0, 108.0, 5.0, 255.0, 0.0])
    points = low + span * torch.rand(num_points, 5, generator=generator)
    lidar_aug = torch.eye(4)
    depth = depth_maps(
        points, matrices["lidar_to_image"], matrices["image_aug"], lidar_aug, image_size
    )
    return {
        "token": token,
        "images": images,
        **matrices,
        "lidar_aug": lidar_aug,
        "points": points,
        "depth_maps": depth,
    }


def rig_batch(
    batch_size: int = 1,
    image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE,
    num_points: int = 200_000,
    seed: int = 0,
) -> MultiViewBatch:
    """`batch_size` rig samples (seeds seed, seed + 1, ...) as one batch."""
    samples = [
        rig_sample(image_size, num_points, seed + index, f"rig-{index}")
        for index in range(batch_size)
    ]
    return collate_multiview(samples)


class RigSamples(Dataset):
    """`length` rig samples, sample i drawn from (seed, i): training data that needs no files,
    for smoke runs and throughput measurements (`data.source: rig` in a training config)."""

    def __init__(
        self, length: int, image_size: tuple[int, int], num_points: int = 20_000, seed: int = 0
    ) -> None:
        if length < 1:
            raise ValueError(f"a rig dataset needs at least one sample, got length {length}")
        self.length, self.image_size = length, tuple(image_size)
        self.num_points, self.seed = num_points, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of a rig dataset of {self.length}")
        seed = self.seed * 1_000_003 + index
        return rig_sample(self.image_size, self.num_points, seed, f"rig-{index}")

    def set_epoch(self, epoch: int) -> None:
        """Samples are the same every epoch (the trainer's sampler reorders them)."""
