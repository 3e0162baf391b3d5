"""Depth supervision and reconstruction losses: official parity, brute force, failing loudly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from geomim.data.geometry import depth_maps
from geomim.pretrain.losses import (
    depth_loss,
    depth_target,
    normalize_patches,
    reconstruction_loss,
)
from tests.helpers import FIXTURES

DBOUND = (1.0, 60.0, 0.5)


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURES / "official-lss-tiny" / "io.safetensors")


@pytest.fixture(scope="module")
def official_depth_map(io):
    return io["depth_map"][0, :, 0]  # (N, H, W)


def test_depth_map_from_points_matches_the_official_one_exactly(io, official_depth_map):
    matrices = io["lidar_to_image"][0], io["img_aug_matrix"][0], io["lidar_aug_matrix"][0]
    ours = depth_maps(io["points"], *matrices, (64, 352))
    assert torch.equal(ours, official_depth_map)


def test_depth_target_from_our_depth_map_matches_the_official_one_exactly(io):
    matrices = io["lidar_to_image"][0], io["img_aug_matrix"][0], io["lidar_aug_matrix"][0]
    target = depth_target(depth_maps(io["points"], *matrices, (64, 352)), 16, DBOUND)
    assert torch.equal(target, io["depth_target"])


def test_depth_target_matches_the_official_one_exactly(io, official_depth_map):
    target = depth_target(official_depth_map, 16, DBOUND)
    assert target.shape == (6 * 4 * 22, 118)
    torch.testing.assert_close(target, io["depth_target"], atol=0, rtol=0)


def test_teacher_normalisation_matches_the_official_one(io):
    normalized = normalize_patches(io["teacher"], patch=16)
    torch.testing.assert_close(normalized, io["teacher_normalized"], atol=1e-4, rtol=0)


def brute_force_depth_target(maps: torch.Tensor, stride: int, dbound) -> torch.Tensor:
    start, stop, step = dbound
    bins = math.ceil((stop - start) / step)
    rows = []
    for image in maps:
        for row in range(image.shape[0] // stride):
            for col in range(image.shape[1] // stride):
                block = image[row * stride : (row + 1) * stride, col * stride : (col + 1) * stride]
                values = [float(v) for v in block.flatten() if v != 0]
                one_hot = torch.zeros(bins)
                if values:
                    # the same float32 arithmetic as the library, then floor
                    nearest = torch.tensor(min(values), dtype=torch.float32)
                    index = math.floor(float((nearest - (start - step)) / step))
                    if 1 <= index <= bins:
                        one_hot[index - 1] = 1
                rows.append(one_hot)
    return torch.stack(rows)


def random_sparse_depth(seed: int, shape=(3, 64, 96), density=0.05) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    depth = torch.rand(shape, generator=generator) * 70 - 5  # some below 1 m, some beyond 60 m
    edges = torch.arange(1.0, 60.0, 0.5)[torch.randint(0, 118, shape, generator=generator)]
    depth = torch.where(torch.rand(shape, generator=generator) < 0.3, edges, depth)  # on edges
    depth = depth.clamp(min=0.01)
    return torch.where(torch.rand(shape, generator=generator) < density, depth, 0.0)


@pytest.mark.parametrize("seed, stride", [(0, 16), (1, 8), (2, 4)])
def test_depth_target_equals_a_brute_force_loop_on_random_sparse_maps(seed, stride):
    maps = random_sparse_depth(seed)
    target = depth_target(maps, stride, DBOUND)
    expected = brute_force_depth_target(maps, stride, DBOUND)
    assert expected.sum() > 10 and (expected.sum(1) == 0).sum() > 10  # both kinds of cell
    torch.testing.assert_close(target, expected, atol=0, rtol=0)


def test_a_block_whose_nearest_point_is_too_close_is_background():
    maps = torch.zeros(1, 16, 32)
    maps[0, 3, 4], maps[0, 9, 9] = 0.81, 8.93  # block 0: nearest below the first bin
    maps[0, 2, 20] = 8.93  # block 1: bin (8.93 - 0.5) / 0.5 = 16.86 -> 16, column 15
    target = depth_target(maps, 16, DBOUND)
    assert target[0].sum() == 0
    assert target[1].nonzero().tolist() == [[15]]


def test_depth_loss_is_weighted_bce_over_foreground_cells_only():
    generator = torch.Generator().manual_seed(3)
    probabilities = torch.randn(2, 5, 2, 3, generator=generator).softmax(dim=1)
    target = torch.zeros(12, 5)
    target[0, 2] = target[7, 4] = 1  # two foreground cells (rows ordered image, row, col)
    rows = probabilities.permute(0, 2, 3, 1).reshape(12, 5)
    expected = 0
    for cell in (0, 7):
        for k in range(5):
            p = float(rows[cell, k])
            expected -= math.log(p) if target[cell, k] else math.log(1 - p)
    loss = depth_loss(probabilities, target, weight=0.01)
    torch.testing.assert_close(loss, torch.tensor(0.01 * expected / 2), atol=1e-6, rtol=1e-5)
    background = probabilities.clone()
    background[0, :, 0, 1] = background[0, :, 0, 1].flip(0)  # row 1: a background cell
    assert depth_loss(background, target) == loss


def test_depth_loss_without_foreground_is_zero():
    probabilities = torch.full((1, 4, 2, 2), 0.25)
    assert depth_loss(probabilities, torch.zeros(4, 4)) == 0


def test_normalised_patches_have_zero_mean_and_unit_unbiased_variance():
    generator = torch.Generator().manual_seed(4)
    teacher = torch.randn(2, 3, 8, 12, generator=generator) * 5 + 2
    normalized = normalize_patches(teacher, patch=4)
    patches = normalized.view(2, 3, 2, 4, 3, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 48)
    torch.testing.assert_close(patches.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(patches.var(-1), torch.ones(2, 6), atol=1e-4, rtol=0)


def test_reconstruction_loss_is_the_mean_squared_error():
    prediction, teacher = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    loss = reconstruction_loss(prediction, teacher)
    torch.testing.assert_close(loss, ((prediction - teacher) ** 2).mean())


def test_losses_raise_on_nan_naming_the_loss():
    probabilities = torch.full((1, 4, 2, 2), 0.25)
    probabilities[0, 1, 1, 0] = float("nan")
    target = torch.zeros(4, 4)
    target[2, 1] = 1
    with pytest.raises(FloatingPointError, match="depth loss"):
        depth_loss(probabilities, target)
    prediction = torch.zeros(1, 2, 4, 4)
    prediction[0, 1, 2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="reconstruction loss"):
        reconstruction_loss(prediction, torch.zeros(1, 2, 4, 4))
    with pytest.raises(FloatingPointError, match="reconstruction loss"):
        reconstruction_loss(torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), float("inf")))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="multiple of stride 16"):
        depth_target(torch.zeros(1, 20, 32), 16, DBOUND)
    with pytest.raises(ValueError, match="whole number of 16-patches"):
        normalize_patches(torch.zeros(1, 2, 40, 32), patch=16)
    with pytest.raises(ValueError, match="must have the same shape"):
        reconstruction_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
