"""The typed batch every GeoMIM model takes: images, camera geometry, LiDAR points, depth maps."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class CameraGeometry:
    """Per-camera 4x4 matrices, each (B, N, 4, 4)."""

    intrinsics: Tensor  # camera -> pixel (3x3 in the top-left)
    camera_to_ego: Tensor
    camera_to_lidar: Tensor  # camera -> the key frame's LiDAR frame (ego motion included)
    lidar_to_image: Tensor  # intrinsics @ inverse(camera_to_lidar)
    image_aug: Tensor  # original -> augmented pixel coordinates

    def to(self, device: torch.device | str) -> CameraGeometry:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class MultiViewBatch:
    """B samples of N cameras; images normalised, points in the augmented LiDAR frame."""

    tokens: list[str]
    images: Tensor  # (B, N, 3, H, W)
    cameras: CameraGeometry
    lidar_aug: Tensor  # (B, 4, 4)
    points: list[Tensor]  # B x (P_b, 5): x, y, z, intensity, time lag in seconds
    depth_maps: Tensor  # (B, N, H, W), 0 where no point lands

    def to(self, device: torch.device | str) -> MultiViewBatch:
        return replace(
            self,
            images=self.images.to(device),
            cameras=self.cameras.to(device),
            lidar_aug=self.lidar_aug.to(device),
            points=[p.to(device) for p in self.points],
            depth_maps=self.depth_maps.to(device),
        )


def collate_multiview(samples: list[dict]) -> MultiViewBatch:
    """Batch `NuScenesMultiView` items: tensors stacked, points kept as a list."""

    def stack(key: str) -> Tensor:
        return torch.stack([sample[key] for sample in samples])

    geometry = {f.name: stack(f.name) for f in fields(CameraGeometry)}
    return MultiViewBatch(
        tokens=[sample["token"] for sample in samples],
        images=stack("images"),
        cameras=CameraGeometry(**geometry),
        lidar_aug=stack("lidar_aug"),
        points=[sample["points"] for sample in samples],
        depth_maps=stack("depth_maps"),
    )
