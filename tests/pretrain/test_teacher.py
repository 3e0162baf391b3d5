"""The stand-in histogram teacher: the official grid, points in the cells they lie in."""

from __future__ import annotations

import torch

from geomim.pretrain.teacher import HistogramTeacher


def test_maps_points_to_the_official_bev_grid():
    teacher = HistogramTeacher()
    maps = teacher([torch.zeros(10, 5), torch.zeros(3, 5)])
    assert maps.shape == (2, 256, 180, 180)


def test_a_point_changes_only_its_own_cell():
    teacher = HistogramTeacher(channels=4, cells=10, bound=5.0)
    empty = teacher([torch.tensor([[100.0, 100.0, 0.0, 0.0, 0.0]])])  # outside: dropped
    point = torch.tensor([[1.5, -3.5, 2.0, 0.0, 0.0]])  # x cell 6, y cell 1
    changed = (teacher([point]) - empty).abs().sum(1)[0]
    assert changed.nonzero().tolist() == [[6, 1]]
