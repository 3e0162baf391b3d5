"""Hard voxelisation of LiDAR points, as the official teacher's voxeliser does it, in plain torch.

A point falls in cell floor((p - min) / size) per axis (float32); points outside the grid are
dropped. Points are visited in order: a voxel is created by its first point, voxels are numbered
by first appearance (not sorted), each keeps its first `max_points` points, and once
`max_voxels` voxels exist later new voxels are dropped whole. Cells are (x, y, z).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class VoxelConfig:
    """The teacher's voxeliser: 0.075 x 0.075 x 0.2 m cells over x, y in +-54 m, z in -5..3 m."""

    voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2)
    point_range: tuple[float, ...] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)  # min xyz, max xyz
    max_points: int = 10  # kept per voxel
    max_voxels: int = 160_000  # per sample (the official eval-mode cap; the teacher is in eval)

    def __post_init__(self) -> None:
        if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
            raise ValueError(
                f"voxel_size must be 3 positive sizes (x, y, z), got {self.voxel_size}"
            )
        if len(self.point_range) != 6:
            raise ValueError(
                f"point_range must be (x_min, y_min, z_min, x_max, y_max, z_max), "
                f"got {self.point_range}"
            )
        if any(hi <= lo for lo, hi in zip(self.point_range[:3], self.point_range[3:], strict=True)):
            raise ValueError(f"point_range maxima must exceed the minima, got {self.point_range}")
        for name in ("max_points", "max_voxels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "voxel_size", tuple(float(s) for s in self.voxel_size))
        object.__setattr__(self, "point_range", tuple(float(r) for r in self.point_range))

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Cells per axis (X, Y, Z), rounded from float32 like the official op."""
        extent = torch.tensor(self.point_range[3:]) - torch.tensor(self.point_range[:3])
        return tuple(int(n) for n in torch.round(extent / torch.tensor(self.voxel_size)))


@dataclass(frozen=True)
class Voxels:
    """One point cloud's voxels, numbered by first appearance."""

    points: Tensor  # (V, max_points, C): the kept points, zero rows after num_points
    coords: Tensor  # (V, 3) int32 cells (x, y, z)
    num_points: Tensor  # (V,) int32

    def mean(self) -> Tensor:
        """(V, C) mean of each voxel's kept points over every channel."""
        return self.points.sum(dim=1) / self.num_points.type_as(self.points).view(-1, 1)


@dataclass(frozen=True)
class VoxelBatch:
    """B samples' voxels, concatenated in sample order: the sparse encoder's input."""

    features: Tensor  # (V, C) mean of the kept points
    coords: Tensor  # (V, 4) int32 (batch, x, y, z)
    batch_size: int


def hard_voxelize(points: Tensor, config: VoxelConfig | None = None) -> Voxels:
    """(P, C >= 3) points (x, y, z first) -> their voxels, exactly as the official voxeliser."""
    config = config or VoxelConfig()
    _check_cloud(points)
    device = points.device
    lower = torch.tensor(config.point_range[:3], dtype=torch.float32, device=device)
    size = torch.tensor(config.voxel_size, dtype=torch.float32, device=device)
    grid = torch.tensor(config.grid_size, device=device)
    cells = torch.floor((points[:, :3].float() - lower) / size)  # float32, as the official op
    inside = ((cells >= 0) & (cells < grid)).all(dim=1)  # NaN cells compare False: dropped
    points, cells = points[inside], cells[inside].long()  # (P', C), (P', 3)

    cell_ids = (cells[:, 0] * grid[1] + cells[:, 1]) * grid[2] + cells[:, 2]
    unique_ids, voxel_of_point = torch.unique(cell_ids, return_inverse=True)
    order = torch.arange(len(points), device=device)
    first_point = torch.full_like(unique_ids, len(points))
    first_point.scatter_reduce_(0, voxel_of_point, order, reduce="amin")
    by_appearance = torch.argsort(first_point)  # voxels in order of their first point
    number = torch.empty_like(by_appearance)
    number[by_appearance] = torch.arange(len(by_appearance), device=device)
    voxel = number[voxel_of_point]  # (P',) voxel number of each point

    # A point's slot in its voxel = earlier points of that voxel; a stable sort keeps point order.
    counts = torch.bincount(voxel, minlength=len(unique_ids))
    starts = counts.cumsum(0) - counts
    sorted_voxel, by_voxel = torch.sort(voxel, stable=True)
    slot = torch.empty_like(voxel)
    slot[by_voxel] = order - starts[sorted_voxel]

    num_voxels = min(len(unique_ids), config.max_voxels)
    kept = (voxel < num_voxels) & (slot < config.max_points)
    voxels = points.new_zeros(num_voxels, config.max_points, points.shape[1])
    voxels[voxel[kept], slot[kept]] = points[kept]
    first_points = first_point[by_appearance[:num_voxels]]
    return Voxels(
        points=voxels,
        coords=cells[first_points].int(),
        num_points=counts[:num_voxels].clamp(max=config.max_points).int(),
    )


def voxelize(points: Sequence[Tensor], config: VoxelConfig | None = None) -> VoxelBatch:
    """B point clouds -> mean voxel features and (batch, x, y, z) coords, samples in order."""
    if len(points) == 0:
        raise ValueError("voxelize needs at least one point cloud, got an empty sequence")
    features, coords = [], []
    for index, cloud in enumerate(points):
        voxels = hard_voxelize(cloud, config)
        features.append(voxels.mean())
        coords.append(F.pad(voxels.coords, (1, 0), value=index))
    return VoxelBatch(torch.cat(features), torch.cat(coords), batch_size=len(points))


def _check_cloud(points: Tensor) -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"points must be a tensor, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(
            f"points must be (P, C >= 3) with x, y, z first, got {tuple(points.shape)}"
        )
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
