"""Layer-wise learning-rate decay: the official layer ids, and the groups over a detector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geomim.adapters import GeoMIMBackbone, layer_decay_param_groups, swin_layer_id

BASE_DEPTHS = (2, 2, 18, 2)


@pytest.mark.parametrize(
    "name, layer",
    [
        ("absolute_pos_embed", 0),
        ("patch_embed.proj.weight", 0),
        ("stages.0.blocks.0.attn.qkv.weight", 1),
        ("stages.0.blocks.1.mlp.fc2.bias", 2),
        ("stages.0.downsample.reduction.weight", 3),  # with the next stage's first block
        ("stages.1.blocks.0.norm1.weight", 3),
        ("stages.2.blocks.17.attn.proj.weight", 22),
        ("stages.2.downsample.norm.weight", 23),
        ("stages.3.blocks.1.mlp.fc1.weight", 24),
        ("stages.2.cva.5.attn.qkv.weight", 10),  # a cross-view block counts with its block
        ("stage_norms.3.weight", None),
        ("head.fc.weight", None),
    ],
)
def test_layer_ids_are_the_official_ones(name, layer):
    assert swin_layer_id(name, BASE_DEPTHS) == layer


class Detector(nn.Module):
    def __init__(self, frozen_stages: int = -1) -> None:
        super().__init__()
        self.img_backbone = GeoMIMBackbone("geomim_test", frozen_stages=frozen_stages)
        self.img_neck = nn.Conv2d(192, 8, 1)


def group_of(groups: list[dict], parameter: torch.Tensor) -> dict:
    (group,) = [g for g in groups if any(p is parameter for p in g["params"])]
    return group


def test_groups_scale_the_learning_rate_by_depth():
    detector = Detector()
    groups = layer_decay_param_groups(detector, lr=1.0, weight_decay=0.05, decay_rate=0.5)
    swin = detector.img_backbone.model  # geomim_test: 8 blocks, so layers 0..9
    expected = {
        swin.patch_embed.proj.weight: 0.5**9,
        swin.stages[0].blocks[0].attn.qkv.weight: 0.5**8,
        swin.stages[3].blocks[1].mlp.fc1.weight: 0.5**1,
        swin.stage_norms["3"].weight: 1.0,
        detector.img_neck.weight: 1.0,
    }
    for parameter, lr in expected.items():
        assert group_of(groups, parameter)["lr"] == pytest.approx(lr)
    assert group_of(groups, swin.stages[1].blocks[0].attn.qkv.bias)["weight_decay"] == 0.0
    assert group_of(groups, swin.stages[1].blocks[0].norm1.weight)["weight_decay"] == 0.0
    assert group_of(groups, swin.absolute_pos_embed)["weight_decay"] == 0.05  # 4-D, as official
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(detector.parameters()))
    torch.optim.AdamW(groups)  # a valid optimizer


def test_frozen_parameters_are_left_out():
    detector = Detector(frozen_stages=2)
    groups = layer_decay_param_groups(detector, lr=1.0, weight_decay=0.05, decay_rate=0.8)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert id(detector.img_backbone.model.stages[0].blocks[0].attn.qkv.weight) not in grouped
    assert len(grouped) == sum(p.requires_grad for p in detector.parameters())


def test_bad_setups_are_named():
    with pytest.raises(ValueError, match="expected a GeoMIMBackbone inside the model, got Conv2d"):
        layer_decay_param_groups(nn.Conv2d(3, 3, 1), 1.0, 0.0, 0.8)
    with pytest.raises(ValueError, match=r"at least the 8 blocks .* got 4"):
        layer_decay_param_groups(Detector(), 1.0, 0.0, 0.8, num_layers=4)
