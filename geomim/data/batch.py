"""The typed batch every GeoMIM model takes: images, camera geometry, LiDAR points, depth maps.

Checked where they are made: shapes and dtypes whenever a `CameraGeometry` or `MultiViewBatch` is
built (metadata only, nothing is read from the tensors), and values (finite numbers, invertible
matrices) by `validate`, which `collate_multiview` runs on every batch it builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

# Above this condition number a float32 inverse may keep no correct digit (eps 1.2e-7); real
# intrinsics are near their focal length in pixels (~2e3 for nuScenes), rotations 1.
MAX_CONDITION = 1e6
# The matrices the pipeline inverts, by their 3x3 part: the intrinsics and the image augmentation
# (view transform), camera_to_lidar (lidar_to_image; its 4x4 is singular iff its 3x3 part is),
# the LiDAR augmentation (depth maps).
INVERTED = ("intrinsics", "camera_to_lidar", "image_aug", "lidar_aug")


@dataclass(frozen=True)
class CameraGeometry:
    """Per-camera 4x4 matrices, each (B, N, 4, 4)."""

    intrinsics: Tensor  # camera -> pixel (3x3 in the top-left)
    camera_to_ego: Tensor
    camera_to_lidar: Tensor  # camera -> the key frame's LiDAR frame (ego motion included)
    lidar_to_image: Tensor  # intrinsics @ inverse(camera_to_lidar)
    image_aug: Tensor  # original -> augmented pixel coordinates

    def __post_init__(self) -> None:
        check_camera_shapes({f.name: getattr(self, f.name) for f in fields(self)}, batched=True)

    def to(self, device: torch.device | str) -> CameraGeometry:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def validate(self, tokens: Sequence[str], camera_names: Sequence[str] | None = None) -> None:
        """Raise ValueError naming the sample and camera of any non-finite matrix, or singular
        one where the pipeline inverts it (`tokens` names the B samples)."""
        matrices = {f.name: getattr(self, f.name) for f in fields(self)}
        check_camera_values(matrices, tokens, camera_names)


@dataclass(frozen=True)
class MultiViewBatch:
    """B samples of N cameras; images normalised, points in the augmented LiDAR frame."""

    tokens: list[str]
    images: Tensor  # (B, N, 3, H, W) float32, ImageNet-normalised
    cameras: CameraGeometry
    lidar_aug: Tensor  # (B, 4, 4)
    points: list[Tensor]  # B x (P_b, 5): x, y, z, intensity, time lag in seconds
    depth_maps: Tensor  # (B, N, H, W), 0 where no point lands

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32:
            raise TypeError(
                f"images must be float32, normalised with the ImageNet mean and std (as "
                f"NuScenesMultiView gives them), got {self.images.dtype}"
            )
        batch, views = self.cameras.intrinsics.shape[:2]
        height, width = self.images.shape[-2:]
        expected = {
            "images": ((batch, views, 3, height, width), self.images.shape),
            "lidar_aug": ((batch, 4, 4), self.lidar_aug.shape),
            "depth_maps": ((batch, views, height, width), self.depth_maps.shape),
        }
        for name, (shape, got) in expected.items():
            if tuple(got) != shape:
                raise ValueError(
                    f"{name} must be {shape} for {batch} samples of {views} cameras (as the "
                    f"camera matrices), got {tuple(got)}"
                )
        if len(self.tokens) != batch or len(self.points) != batch:
            raise ValueError(
                f"expected {batch} tokens and {batch} point clouds, got {len(self.tokens)} and "
                f"{len(self.points)}"
            )
        for token, points in zip(self.tokens, self.points, strict=True):
            if points.ndim != 2 or points.shape[1] != 5 or not points.is_floating_point():
                raise ValueError(
                    f"points of sample {token} must be (P, 5) floats (x, y, z, intensity, time "
                    f"lag), got {tuple(points.shape)} {points.dtype}"
                )

    def to(self, device: torch.device | str) -> MultiViewBatch:
        return replace(
            self,
            images=self.images.to(device),
            cameras=self.cameras.to(device),
            lidar_aug=self.lidar_aug.to(device),
            points=[p.to(device) for p in self.points],
            depth_maps=self.depth_maps.to(device),
        )

    def validate(self, camera_names: Sequence[str] | None = None) -> None:
        """Raise ValueError naming the sample (and camera) of non-finite or singular camera
        matrices, a non-finite or singular LiDAR augmentation, or non-finite points."""
        self.cameras.validate(self.tokens, camera_names)
        check_camera_values({"lidar_aug": self.lidar_aug[:, None]}, self.tokens)
        for token, points in zip(self.tokens, self.points, strict=True):
            check_points(points, f"sample {token}")


def collate_multiview(samples: list[dict]) -> MultiViewBatch:
    """Batch `NuScenesMultiView` items (tensors stacked, points kept as a list), then validate
    the batch (`MultiViewBatch.validate`)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")

    def stack(key: str) -> Tensor:
        shapes = {tuple(sample[key].shape) for sample in samples}
        if len(shapes) > 1:
            found = {sample["token"]: tuple(sample[key].shape) for sample in samples}
            raise ValueError(f"{key} must have one shape in a batch, got {found}")
        return torch.stack([sample[key] for sample in samples])

    geometry = {f.name: stack(f.name) for f in fields(CameraGeometry)}
    batch = MultiViewBatch(
        tokens=[sample["token"] for sample in samples],
        images=stack("images"),
        cameras=CameraGeometry(**geometry),
        lidar_aug=stack("lidar_aug"),
        points=[sample["points"] for sample in samples],
        depth_maps=stack("depth_maps"),
    )
    batch.validate(samples[0].get("camera_names"))
    return batch


def check_camera_shapes(matrices: Mapping[str, Tensor], batched: bool = False) -> None:
    """Raise unless the matrices are floating (..., 4, 4) stacks of one shape (one matrix per
    camera each; (B, N, 4, 4) when `batched`), naming the first that differs."""
    first, reference = next(iter(matrices.items()))
    for name, matrix in matrices.items():
        if not matrix.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {matrix.dtype}")
        if tuple(matrix.shape[-2:]) != (4, 4) or (batched and matrix.ndim != 4):
            layout = "(B, N, 4, 4)" if batched else "(..., 4, 4)"
            raise ValueError(f"{name} must be {layout} matrices, got {tuple(matrix.shape)}")
        if matrix.shape != reference.shape:
            cameras = (
                f" ({matrix.shape[-3]} cameras, expected {reference.shape[-3]})"
                if matrix.ndim >= 3 and reference.ndim >= 3
                else ""
            )
            raise ValueError(
                f"{name} is {tuple(matrix.shape)}{cameras}; it needs one 4x4 matrix per camera, "
                f"as {first} {tuple(reference.shape)}"
            )


def check_camera_values(
    matrices: Mapping[str, Tensor],
    tokens: Sequence[str],
    camera_names: Sequence[str] | None = None,
) -> None:
    """Raise ValueError naming the sample and camera unless every (B, N, 4, 4) matrix is finite
    and those the pipeline inverts (`INVERTED`) are well conditioned."""
    for name, matrix in matrices.items():
        matrix = matrix.detach().to("cpu", torch.float64)
        finite = torch.isfinite(matrix).flatten(2).all(-1)  # (B, N)
        condition = torch.ones(finite.shape, dtype=torch.float64)
        if name in INVERTED and finite.any():
            condition[finite] = torch.linalg.cond(matrix[finite][:, :3, :3])  # inf if singular
        bad = ~finite | ~(condition <= MAX_CONDITION)
        if not bad.any():
            continue
        sample, camera = bad.nonzero()[0].tolist()
        where = f"sample {tokens[sample]}"
        if name != "lidar_aug":  # the one matrix per sample
            where += f", camera {camera}"
            if camera_names is not None and camera < len(camera_names):
                where += f" ({camera_names[camera]})"
        problem = (
            "holds NaN or infinite values"
            if not finite[sample, camera]
            else "is singular or nearly so: its 3x3 part, which the pipeline inverts, has "
            f"condition number {condition[sample, camera]:.3g} (at most {MAX_CONDITION:g})"
        )
        raise ValueError(f"{name} of {where} {problem}: {matrix[sample, camera].tolist()}")


def check_points(points: Tensor, where: str) -> None:
    """Raise ValueError naming `where` if `points` hold NaN or infinite values."""
    finite = torch.isfinite(points).all(dim=-1)
    if not finite.all():
        raise ValueError(
            f"points of {where} hold {int((~finite).sum())} of {len(points)} rows with NaN or "
            f"infinite values (first: {points[~finite][0].tolist()})"
        )
