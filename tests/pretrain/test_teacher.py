"""The teacher protocol (frozen, fp32, checked shapes) and the stand-in histogram teacher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomim.pretrain.teacher import HistogramTeacher, ModuleTeacher, teacher_meta


def test_maps_points_to_the_official_bev_grid():
    teacher = HistogramTeacher()
    maps = teacher([torch.zeros(10, 5), torch.zeros(3, 5)], teacher_meta(["a", "b"]))
    assert maps.shape == (2, 256, 180, 180)


def test_a_point_changes_only_its_own_cell():
    teacher = HistogramTeacher(channels=4, cells=10, bound=5.0)
    empty = teacher(
        [torch.tensor([[100.0, 100.0, 0.0, 0.0, 0.0]])], teacher_meta(["a"])
    )  # outside: dropped
    point = torch.tensor([[1.5, -3.5, 2.0, 0.0, 0.0]])  # x cell 6, y cell 1
    changed = (teacher([point], teacher_meta(["a"])) - empty).abs().sum(1)[0]
    assert changed.nonzero().tolist() == [[6, 1]]


def test_a_teacher_stays_frozen_in_eval_fp32_without_gradients():
    module = nn.Sequential(nn.Dropout(0.9))
    teacher = ModuleTeacher(module, fn=lambda m, points, meta: m(torch.stack(points))[..., None])
    parent = nn.Sequential(teacher).train()
    assert not module.training
    points = [torch.ones(4, 5, requires_grad=True)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bev = teacher(points, teacher_meta(["a"]))
    assert parent.training and bev.dtype == torch.float32 and not bev.requires_grad
    assert torch.equal(bev[0, ..., 0], torch.ones(4, 5))  # dropout off: eval mode


def test_a_teacher_returning_the_wrong_rank_is_an_error():
    teacher = ModuleTeacher(nn.Identity(), fn=lambda m, points, meta: torch.stack(points))
    with pytest.raises(ValueError, match=r"expected \(B=1, C, X, Y\)"):
        teacher([torch.ones(4, 5)], teacher_meta(["a"]))


def test_the_pretrainer_refuses_a_plain_module_as_teacher():
    from geomim.pretrain.model import GeoMIMPretrainer, PretrainConfig

    with pytest.raises(TypeError, match="ModuleTeacher"):
        GeoMIMPretrainer(PretrainConfig(encoder="geomim_test"), nn.Identity())
