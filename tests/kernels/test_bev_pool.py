"""bev_pool against the element-wise reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from geomim.kernels import bev_pool, reference_bev_pool


def random_points(seed: int, points: int = 2000, channels: int = 7, cells: int = 50):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(points, channels, generator=generator)
    index = torch.randint(0, cells, (points,), generator=generator)  # ~40 points per cell
    return features, index


def test_sums_equal_the_reference_with_repeated_cells():
    features, cells = random_points(0, cells=60)
    pooled = bev_pool(features, cells, 64)  # cells 60..63 stay empty
    assert pooled.shape == (64, 7)
    torch.testing.assert_close(pooled, reference_bev_pool(features, cells, 64), atol=1e-5, rtol=0)
    assert pooled[60:].abs().max() == 0


def test_gradients_equal_the_reference():
    features, cells = random_points(1)
    upstream = torch.randn(50, 7, generator=torch.Generator().manual_seed(2))
    grads = []
    for pool in (bev_pool, reference_bev_pool):
        leaf = features.clone().requires_grad_()
        (grad,) = torch.autograd.grad((pool(leaf, cells, 50) * upstream).sum(), leaf)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], upstream[cells], atol=0, rtol=0)  # the transpose


def test_one_point_lands_in_its_cell_alone():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    pooled = bev_pool(features, torch.tensor([4, 1, 4]), 6)
    expected = torch.zeros(6, 2)
    expected[1] = torch.tensor([3.0, 4.0])
    expected[4] = torch.tensor([6.0, 8.0])
    torch.testing.assert_close(pooled, expected, atol=0, rtol=0)


def test_mismatched_shapes_and_index_dtype_are_rejected():
    features, cells = random_points(3)
    with pytest.raises(ValueError, match=r"expected features \(P, C\) and cells \(P,\)"):
        bev_pool(features, cells[:-1], 50)
    with pytest.raises(TypeError, match="int64"):
        bev_pool(features, cells.int(), 50)
