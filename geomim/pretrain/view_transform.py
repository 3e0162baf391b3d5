"""The view transform of GeoMIM pretraining: decoder maps -> depth distribution -> BEV map.

geometry, semantic (B, N, C, h, w) ──depth net──> depth logits (bins) + context (C_ctx)
──softmax(depth) x context──> frustum features (B, N, D, h, w, C_ctx)
──frustum points in the augmented LiDAR frame, truncated to cells──> sum-pooled (B, Z*C_ctx, X, Y)
──downsample (3 convs, stride 2 in the middle)──> bev (B, C_ctx, X', Y') ──1x1──> prediction

The official `DepthLSSTransformGT` (BEVFusion's LSS with the depth net on the geometry map);
parameter names are the official ones, so its state dict loads as is. The grid buffers, derived
from the config, are named for what they hold (the official `dx`, `bx`, `nx`: `cell_size`,
`first_cell_centre`, `grid_cells`); a state dict that carries the official ones (the official
checkpoints, ours before the rename) loads when they agree with the config. BEV maps are
(B, C, X, Y): x on dim -2, y on dim -1. The frustum geometry and the pooling run in float32 with
autocast off (the official decorates them `force_fp32`): bfloat16 coordinates near 50 m are 0.25 m
apart, most of a 0.3 m cell, and sums of hundreds of frustum features need float32 too.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geomim.data.batch import CameraGeometry
from geomim.kernels.splat import splat

Bound = tuple[float, float, float]  # (lower, upper, step)


@dataclass(frozen=True)
class ViewTransformConfig:
    """Defaults are the official recipe (image 256 x 704, 360 x 360 cells of 0.3 m, 118 bins)."""

    in_channels: int = 512  # per decoder branch; the depth net takes both, concatenated
    context_channels: int = 80
    prediction_channels: int = 256  # the teacher's BEV channels
    num_views: int = 6
    image_size: tuple[int, int] = (256, 704)  # (H, W)
    stride: int = 16
    xbound: Bound = (-54.0, 54.0, 0.3)
    ybound: Bound = (-54.0, 54.0, 0.3)
    zbound: Bound = (-10.0, 10.0, 20.0)
    dbound: Bound = (1.0, 60.0, 0.5)
    downsample: int = 2
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        height, width = self.image_size
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of the stride {self.stride}"
            )

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the decoder maps."""
        return self.image_size[0] // self.stride, self.image_size[1] // self.stride

    @property
    def depth_bins(self) -> int:
        """Number of depth bins, arange(*dbound) as the official counts them (118)."""
        return len(torch.arange(*self.dbound, dtype=torch.float32))

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """(X, Y, Z) cells before the downsample."""
        # whole steps, with slack for (54 - -54) / 0.3 = 360.00000000000006 and the like
        return tuple(math.floor((high - low) / step + 1e-6) for low, high, step in self.bounds)

    @property
    def bounds(self) -> tuple[Bound, Bound, Bound]:
        return self.xbound, self.ybound, self.zbound


@dataclass(frozen=True)
class ViewTransformOutput:
    bev: Tensor  # (B, Z * C_ctx, X', Y') after the downsample stack
    prediction: Tensor  # (B, C_out, X', Y') the 1x1 head's reconstruction of the teacher map
    depth: Tensor  # (B*N, bins, h, w) depth probabilities (softmax over bins)


def _conv_bn_relu(
    in_channels: int, out_channels: int, eps: float, stride: int = 1, bias: bool = False
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
        nn.BatchNorm2d(out_channels, eps=eps),
        nn.ReLU(inplace=True),
    ]


class DepthLSS(nn.Module):
    """Lift the decoder's maps into a depth-weighted frustum, splat it into the BEV grid."""

    def __init__(self, config: ViewTransformConfig | None = None) -> None:
        super().__init__()
        config = ViewTransformConfig() if config is None else config
        self.config = config
        width, context, eps = config.in_channels, config.context_channels, config.norm_eps
        steps = [step for _, _, step in config.bounds]
        centres = [low + step / 2 for low, _, step in config.bounds]
        grid = {
            "cell_size": torch.tensor(steps, dtype=torch.float32),  # (x, y, z) metres
            "first_cell_centre": torch.tensor(centres, dtype=torch.float32),
            "grid_cells": torch.tensor(config.grid_size, dtype=torch.int64),  # (X, Y, Z)
        }
        for name, value in grid.items():
            self.register_buffer(name, value, persistent=False)  # the config defines them
        self.register_load_state_dict_pre_hook(_accept_official_grid_buffers)
        self.register_buffer("frustum", self._create_frustum())
        self.depthnet = nn.Sequential(
            *_conv_bn_relu(2 * width, width, eps, bias=True),
            *_conv_bn_relu(width, width, eps, bias=True),
            nn.Conv2d(width, config.depth_bins + context, 1),
        )
        pooled = context * config.grid_size[2]  # Z folded into channels
        if config.downsample > 1:
            self.downsample = nn.Sequential(
                *_conv_bn_relu(pooled, context, eps),
                *_conv_bn_relu(context, context, eps, stride=config.downsample),
                *_conv_bn_relu(context, context, eps),
            )
        else:
            self.downsample = nn.Identity()
        out_channels = context if config.downsample > 1 else pooled
        self.prediction_head = nn.Conv2d(out_channels, config.prediction_channels, 1)

    def _create_frustum(self) -> Tensor:
        """(D, h, w, 3): (pixel x, pixel y, depth) of every frustum point, in augmented pixels."""
        (height, width), (rows, cols) = self.config.image_size, self.config.feature_size
        depths = torch.arange(*self.config.dbound, dtype=torch.float32)
        xs = torch.linspace(0, width - 1, cols, dtype=torch.float32)
        ys = torch.linspace(0, height - 1, rows, dtype=torch.float32)
        grid = torch.meshgrid(depths, ys, xs, indexing="ij")
        return torch.stack((grid[2], grid[1], grid[0]), dim=-1)

    def frustum_points(self, cameras: CameraGeometry, lidar_aug: Tensor) -> Tensor:
        """(B, N, D, h, w, 3) frustum points in the augmented LiDAR frame."""
        with torch.autocast(self.frustum.device.type, enabled=False):
            image_aug = cameras.image_aug.float()[:, :, None, None, None]  # (B, N, 1, 1, 1, 4, 4)
            points = self.frustum - image_aug[..., :3, 3]  # undo the image augmentation
            points = (torch.inverse(image_aug[..., :3, :3]) @ points[..., None]).squeeze(-1)
            points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), dim=-1)
            camera_to_lidar = cameras.camera_to_lidar.float()
            intrinsics = cameras.intrinsics.float()
            combine = camera_to_lidar[..., :3, :3] @ torch.inverse(intrinsics[..., :3, :3])
            points = (combine[:, :, None, None, None] @ points[..., None]).squeeze(-1)
            points = points + camera_to_lidar[:, :, None, None, None, :3, 3]
            lidar_aug = lidar_aug.float()[:, None, None, None, None]  # (B, 1, 1, 1, 1, 4, 4)
            points = (lidar_aug[..., :3, :3] @ points[..., None]).squeeze(-1)
            return points + lidar_aug[..., :3, 3]

    def cells(self, points: Tensor) -> tuple[Tensor, int]:
        """(B, N, D, h, w, 3) points -> their flat BEV cells (B*N, D, h, w) and the cell count.

        Cell = (p - lower bound) / step converted with `.long()`, truncating toward zero as the
        official does (so up to one cell below a lower bound still lands in cell 0); points with
        any cell index outside the grid get the spare index `num_cells` (dropped).
        """
        batch = points.shape[0]
        size_x, size_y, size_z = self.grid_cells.tolist()
        lower = self.first_cell_centre - self.cell_size / 2.0
        cells = ((points - lower) / self.cell_size).long()
        kept = ((cells >= 0) & (cells < self.grid_cells)).all(dim=-1)  # (B, N, D, h, w)
        sample = torch.arange(batch, device=cells.device).view(batch, 1, 1, 1, 1)
        flat = ((sample * size_z + cells[..., 2]) * size_x + cells[..., 0]) * size_y + cells[..., 1]
        num_cells = batch * size_z * size_x * size_y
        return torch.where(kept, flat, num_cells).flatten(0, 1), num_cells

    def to_bev(self, pooled: Tensor, batch: int) -> Tensor:
        """(B * Z * X * Y, C) cell sums -> the (B, Z * C, X, Y) map."""
        size_x, size_y, size_z = self.grid_cells.tolist()
        pooled = pooled.view(batch, size_z, size_x, size_y, -1)
        return pooled.permute(0, 1, 4, 2, 3).reshape(batch, -1, size_x, size_y)

    def forward(
        self, semantic: Tensor, geometry: Tensor, cameras: CameraGeometry, lidar_aug: Tensor
    ) -> ViewTransformOutput:
        """Decoder maps (B, N, C, h, w) of one mask group, their cameras and (B, 4, 4) LiDAR
        augmentation -> BEV map, teacher prediction and depth probabilities."""
        self._check_inputs(semantic, geometry, cameras, lidar_aug)
        batch = semantic.shape[0]
        bins = self.config.depth_bins
        maps = torch.cat([geometry, semantic], dim=2).flatten(0, 1)  # (B*N, 2C, h, w)
        logits = self.depthnet(maps)  # (B*N, bins + C_ctx, h, w)
        with torch.autocast(maps.device.type, enabled=False):
            depth = logits[:, :bins].float().softmax(dim=1)  # (B*N, D, h, w)
            context = logits[:, bins:].float().permute(0, 2, 3, 1)  # (B*N, h, w, C)
            cells, num_cells = self.cells(self.frustum_points(cameras, lidar_aug))
            key = (self.config, geometry_key(cameras, lidar_aug))  # same geometry: same plan
            bev = self.to_bev(splat(depth, context, cells, num_cells, key), batch)
        bev = self.downsample(bev)
        return ViewTransformOutput(bev=bev, prediction=self.prediction_head(bev), depth=depth)

    def _check_inputs(
        self, semantic: Tensor, geometry: Tensor, cameras: CameraGeometry, lidar_aug: Tensor
    ) -> None:
        config = self.config
        expected = (config.num_views, config.in_channels, *config.feature_size)
        for name, maps in (("semantic", semantic), ("geometry", geometry)):
            if maps.ndim != 5 or tuple(maps.shape[1:]) != expected:
                raise ValueError(
                    f"expected {name} maps (B, {', '.join(map(str, expected))}), "
                    f"got {tuple(maps.shape)}"
                )
        batch = semantic.shape[0]
        if tuple(cameras.camera_to_lidar.shape) != (batch, config.num_views, 4, 4):
            raise ValueError(
                f"expected camera matrices ({batch}, {config.num_views}, 4, 4), "
                f"got {tuple(cameras.camera_to_lidar.shape)}"
            )
        if tuple(lidar_aug.shape) != (batch, 4, 4):
            raise ValueError(f"expected lidar_aug ({batch}, 4, 4), got {tuple(lidar_aug.shape)}")


OFFICIAL_GRID_BUFFERS = {"dx": "cell_size", "bx": "first_cell_centre", "nx": "grid_cells"}


def _accept_official_grid_buffers(
    module: DepthLSS, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Drop the official `dx`/`bx`/`nx` from a state dict being loaded once they match the
    config's grid; a checkpoint made for another grid is refused, naming both values."""
    for official, ours in OFFICIAL_GRID_BUFFERS.items():
        value = state_dict.pop(prefix + official, None)
        if value is None:
            continue
        expected = getattr(module, ours)
        if value.shape != expected.shape or not torch.allclose(
            value.to(expected), expected, rtol=1e-6, atol=1e-6
        ):
            raise ValueError(
                f"{prefix}{official} ({ours}) in the checkpoint is {value.tolist()}, but the "
                f"view transform's config gives {expected.tolist()} (xbound, ybound, zbound "
                f"{module.config.bounds}): build the model with the checkpoint's grid"
            )


def geometry_key(cameras: CameraGeometry, lidar_aug: Tensor) -> str:
    """A digest of the matrices that place the frustum points (for caching pooling plans)."""
    digest = hashlib.blake2b(digest_size=16)
    for matrix in (cameras.camera_to_lidar, cameras.intrinsics, cameras.image_aug, lidar_aug):
        digest.update(matrix.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
