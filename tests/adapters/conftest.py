"""Weight files in the official and detector formats, made from the official Swin fixture."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def official_pth(tmp_path, swin_fixture):
    """The official release format: `state_dict` with mmcv `meta`, official key names."""
    path = tmp_path / "geomim_test.pth"
    torch.save({"state_dict": swin_fixture["state_dict"], "meta": {"epoch": 50}}, path)
    return path


@pytest.fixture
def bevdet_pth(tmp_path, swin_fixture):
    """A BEVDet detector checkpoint: the backbone under `img_backbone.`, beside the rest."""
    state_dict = {f"img_backbone.{k}": v for k, v in swin_fixture["state_dict"].items()}
    state_dict["img_neck.conv.weight"] = torch.zeros(8, 192, 1, 1)
    state_dict["pts_bbox_head.heatmap.bias"] = torch.zeros(10)
    path = tmp_path / "bevdet-geomim.pth"
    torch.save({"state_dict": state_dict, "meta": {"epoch": 20}}, path)
    return path
