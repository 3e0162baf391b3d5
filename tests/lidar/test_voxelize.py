"""Hard voxelisation: the official voxeliser's outputs exactly, and a point-by-point reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geomim.lidar.voxelize import VoxelConfig, hard_voxelize, voxelize
from tests.helpers import FIXTURES

# The fixture's end-to-end voxeliser: 40 x 40 x 40 cells, eval-mode cap of 200 voxels.
E2E_VOXELS = VoxelConfig((0.15, 0.15, 0.2), (-3.0, -3.0, -5.0, 3.0, 3.0, 3.0), 10, 200)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "official-teacher-tiny" / "io.safetensors")


def brute_force_voxelize(points: torch.Tensor, config: VoxelConfig):
    """The official loop, one point at a time in float32: (voxels, coords, num_points)."""
    lower = np.float32(config.point_range[:3])
    size = np.float32(config.voxel_size)
    grid = config.grid_size
    voxel_of_cell: dict[tuple[int, ...], int] = {}
    kept: list[list[np.ndarray]] = []
    coords: list[tuple[int, ...]] = []
    for point in points.numpy():
        cell = tuple(int(np.floor((point[a] - lower[a]) / size[a])) for a in range(3))
        if not all(0 <= c < g for c, g in zip(cell, grid, strict=True)):
            continue
        if cell not in voxel_of_cell:
            if len(kept) == config.max_voxels:
                continue
            voxel_of_cell[cell] = len(kept)
            kept.append([])
            coords.append(cell)
        voxel = kept[voxel_of_cell[cell]]
        if len(voxel) < config.max_points:
            voxel.append(point)
    voxels = torch.zeros(len(kept), config.max_points, points.shape[1])
    for index, voxel_points in enumerate(kept):
        voxels[index, : len(voxel_points)] = torch.from_numpy(np.stack(voxel_points))
    num_points = torch.tensor([len(v) for v in kept], dtype=torch.int32)
    return voxels, torch.tensor(coords, dtype=torch.int32).view(-1, 3), num_points


def test_voxels_equal_the_official_voxeliser_exactly(io):
    for sample in range(2):
        voxels = hard_voxelize(io[f"e2e_points_{sample}"], E2E_VOXELS)
        assert torch.equal(voxels.points, io[f"e2e_voxels_{sample}"])  # incl. zero padding rows
        assert torch.equal(voxels.coords, io[f"e2e_voxel_coords_{sample}"])
        assert torch.equal(voxels.num_points, io[f"e2e_num_points_{sample}"])


def test_batched_mean_features_and_coords_equal_the_official_ones_exactly(io):
    batch = voxelize([io["e2e_points_0"], io["e2e_points_1"]], E2E_VOXELS)
    assert batch.batch_size == 2
    assert batch.coords.dtype == torch.int32
    assert torch.equal(batch.coords, io["e2e_coords"])
    assert torch.equal(batch.features, io["e2e_voxel_features"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxels_equal_a_point_by_point_reference_with_both_caps_hit(seed):
    config = VoxelConfig((0.5, 0.5, 0.5), (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), 5, 40)  # 64 cells
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(600, 5, generator=generator) * 2.4 - 1.2  # some outside on every side
    axis = torch.randint(3, (40,), generator=generator)
    bound = torch.tensor([-1.0, 1.0])[torch.randint(2, (40,), generator=generator)]
    points[torch.arange(40), axis] = bound  # exactly on a bound: the lower kept, the upper dropped
    voxels = hard_voxelize(points, config)
    expected_voxels, expected_coords, expected_counts = brute_force_voxelize(points, config)
    assert len(expected_coords) == config.max_voxels and expected_counts.max() == config.max_points
    assert torch.equal(voxels.points, expected_voxels)
    assert torch.equal(voxels.coords, expected_coords)
    assert torch.equal(voxels.num_points, expected_counts)


def test_voxels_equal_the_reference_for_a_fine_grid_below_the_caps():
    config = VoxelConfig((0.075, 0.075, 0.2), (-2.0, -2.0, -1.0, 2.0, 2.0, 1.0), 10, 160_000)
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(3000, 5, generator=generator)
    voxels = hard_voxelize(points, config)
    expected_voxels, expected_coords, expected_counts = brute_force_voxelize(points, config)
    assert torch.equal(voxels.points, expected_voxels)
    assert torch.equal(voxels.coords, expected_coords)
    assert torch.equal(voxels.num_points, expected_counts)


def test_the_default_grid_is_the_teachers_1440_by_1440_by_40():
    assert VoxelConfig().grid_size == (1440, 1440, 40)
    assert E2E_VOXELS.grid_size == (40, 40, 40)


def test_an_empty_or_fully_outside_cloud_gives_no_voxels_and_keeps_its_batch_slot():
    outside = torch.full((4, 5), 100.0)
    point = torch.tensor([[0.1, 0.1, 0.1, 7.0, 0.5]])
    batch = voxelize([torch.zeros(0, 5), outside, point], E2E_VOXELS)
    assert batch.batch_size == 3
    assert torch.equal(batch.features, point)
    assert batch.coords.tolist() == [[2, 20, 20, 25]]  # (3.1, 3.1, 5.1) m from the minima


def test_wrong_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"\(P, C >= 3\).*got \(10,\)"):
        hard_voxelize(torch.zeros(10))
    with pytest.raises(ValueError, match=r"got \(10, 2\)"):
        hard_voxelize(torch.zeros(10, 2))
    with pytest.raises(TypeError, match=r"floating point, got torch\.int64"):
        hard_voxelize(torch.zeros(10, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one point cloud"):
        voxelize([])
    with pytest.raises(ValueError, match="voxel_size must be 3 positive sizes"):
        VoxelConfig(voxel_size=(0.1, 0.0, 0.2))
    with pytest.raises(ValueError, match="maxima must exceed the minima"):
        VoxelConfig(point_range=(0, 0, 0, 1, -1, 1))
    with pytest.raises(ValueError, match="max_points must be >= 1, got 0"):
        VoxelConfig(max_points=0)
