"""The training panel and the depth maps it draws."""

from __future__ import annotations

import torch

from geomim.training.panel import expected_depth, lidar_depth, training_panel


def test_expected_depth_of_a_one_hot_bin_is_its_centre():
    probabilities = torch.zeros(1, 59, 2, 2)
    probabilities[:, 10] = 1
    assert torch.allclose(
        expected_depth(probabilities, (1.0, 60.0, 1.0)), torch.full((1, 2, 2), 11.5)
    )


def test_lidar_depth_takes_the_nearest_point_per_block_and_zero_where_none():
    depth = torch.zeros(1, 4, 4)
    depth[0, 0, 0], depth[0, 1, 1] = 7.0, 5.0
    assert torch.equal(lidar_depth(depth, 2), torch.tensor([[[5.0, 0.0], [0.0, 0.0]]]))


def test_panel_has_a_row_per_view_kind_and_the_two_bev_maps():
    generator = torch.Generator().manual_seed(0)
    panel = training_panel(
        images=torch.randn(3, 3, 64, 176, generator=generator),
        depth_probabilities=torch.rand(3, 59, 4, 11, generator=generator).softmax(1),
        depth_maps=torch.rand(3, 64, 176, generator=generator) * 60,
        prediction=torch.randn(8, 32, 32, generator=generator),
        teacher=torch.randn(8, 32, 32, generator=generator),
        dbound=(1.0, 60.0, 1.0),
        stride=16,
        title="step 1",
    )
    assert panel.width == 3 * 352 + 2 * 4  # three 128-pixel-high camera tiles
    assert panel.height == 16 + 3 * (16 + 128 + 4) + 16 + 384  # and the 384-pixel BEV maps
