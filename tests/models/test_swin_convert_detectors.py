"""Detector checkpoints (BEVDet, BEVDepth, BEVFusion, geomim's adapter): the camera backbone is
taken out, converted key for key, and what was dropped is reported."""

from __future__ import annotations

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim import hub
from geomim.checkpoints import CheckpointError
from geomim.models import swin_checkpoint_filter_fn
from geomim.models.swin_convert import split_backbone
from tests.helpers import official_state_dict


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


# The parts of each detector around its camera backbone (a few keys each, real names).
BEVDET_REST = {
    "img_neck.conv.0.weight": zeros(8, 8, 1, 1),
    "img_neck.lateral.weight": zeros(8, 8, 1, 1),
    "img_view_transformer.depth_net.weight": zeros(8, 8, 1, 1),
    "img_bev_encoder_backbone.layers.0.0.conv1.weight": zeros(8, 8, 3, 3),
    "img_bev_encoder_neck.conv.weight": zeros(8, 8, 1, 1),
    "pts_bbox_head.shared_conv.conv.weight": zeros(8, 8, 3, 3),
    "pts_bbox_head.task_heads.0.heatmap.1.bias": zeros(10),
    "ema_img_backbone_patch_embed_projection_weight": zeros(1),  # mmdet EMA hook buffers
}
BEVDEPTH_REST = {
    "model.backbone.img_neck.deblocks.0.0.weight": zeros(8, 8, 1, 1),
    "model.backbone.depth_net.reduce_conv.0.weight": zeros(8, 8, 3, 3),
    "model.head.trunk.conv1.weight": zeros(8, 8, 3, 3),
    "model.head.task_heads.0.heatmap.1.bias": zeros(1),
}
BEVFUSION_REST = {
    "encoders.camera.neck.lateral_convs.0.conv.weight": zeros(8, 8, 1, 1),
    "encoders.camera.vtransform.depthnet.0.weight": zeros(8, 8, 3, 3),
    "encoders.lidar.backbone.conv_input.0.weight": zeros(3, 3, 3, 5, 16),
    "fuser.0.weight": zeros(8, 8, 3, 3),
    "decoder.backbone.blocks.0.0.weight": zeros(8, 8, 3, 3),
    "heads.object.heatmap_head.1.bias": zeros(10),
}
DETECTORS = {
    "bevdet": ("img_backbone.", BEVDET_REST),
    "bevdepth": ("model.backbone.img_backbone.", BEVDEPTH_REST),
    "bevfusion": ("encoders.camera.backbone.", BEVFUSION_REST),
}


def detector_checkpoint(official: dict, detector: str) -> dict:
    prefix, rest = DETECTORS[detector]
    return {**{prefix + k: v for k, v in official.items()}, **rest}


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_detector_checkpoints_give_the_released_backbones_weights(swin_fixture, detector):
    official = swin_fixture["state_dict"]
    model = timm.create_model("geomim_test")
    reference = swin_checkpoint_filter_fn(dict(official), model)
    converted = swin_checkpoint_filter_fn(detector_checkpoint(official, detector), model)
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_what_was_dropped_is_reported_by_group(swin_fixture, detector):
    prefix, rest = DETECTORS[detector]
    split = split_backbone(detector_checkpoint(swin_fixture["state_dict"], detector))
    assert split.prefix == prefix
    assert len(split.tensors) == len(swin_fixture["state_dict"])
    assert sum(split.left_aside.values()) == len(rest)
    expected = {
        "bevdet": {"img_neck": 2, "img_view_transformer": 1, "pts_bbox_head": 2},
        "bevdepth": {"model.backbone.img_neck": 1, "model.head.trunk": 1},
        "bevfusion": {"encoders.lidar.backbone": 1, "fuser": 1, "decoder.backbone.blocks": 1},
    }[detector]
    assert expected.items() <= split.left_aside.items()
    summary = split.summary()
    assert f"under {prefix!r}" in summary
    assert f"dropped: {len(rest)} tensors" in summary


def test_pretraining_decoder_is_reported_as_dropped():
    camera = official_state_dict("official-keys-pretrain-base.txt", "encoders.camera.backbone.")
    split = split_backbone(camera)
    decoder = split.left_aside["encoders.camera.backbone.(pretraining decoder)"]
    assert 0 < decoder < len(camera)


def test_a_detector_fine_tuned_with_geomims_adapter_converts(swin_fixture):
    model = timm.create_model("geomim_test")
    ours = swin_checkpoint_filter_fn(dict(swin_fixture["state_dict"]), model)
    checkpoint = {f"img_backbone.model.{k}": v for k, v in ours.items()} | BEVDET_REST
    converted = swin_checkpoint_filter_fn(checkpoint, timm.create_model("geomim_test"))
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def test_a_detector_with_another_camera_backbone_is_named():
    # BEVFusion's own camera backbone is a Swin-T (embed dim 96), not GeoMIM
    large = official_state_dict("official-keys-geomim_large.txt", "encoders.camera.backbone.")
    with pytest.raises(CheckpointError, match=r"embed dim 192 \(geomim_large\)"):
        hub.convert_official(large | BEVFUSION_REST, "geomim_base")


def test_convert_cli_takes_a_detector_checkpoint_and_reports(tmp_path, swin_fixture, capsys):
    source = tmp_path / "bevdepth-geomim.pth"
    checkpoint = detector_checkpoint(swin_fixture["state_dict"], "bevdepth")
    torch.save({"state_dict": checkpoint, "epoch": 24}, source)
    out = tmp_path / "folder"
    hub.main(["convert", str(source), str(out), "--variant", "geomim_test"])
    printed = capsys.readouterr().out
    assert "camera backbone: 122 tensors under 'model.backbone.img_backbone.'" in printed
    assert "dropped: 4 tensors in 4 groups" in printed
    assert "wrote 122 tensors for geomim_test" in printed
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
    )
    torch.testing.assert_close(
        model.stage_norms["3"].weight, swin_fixture["state_dict"]["norm3.weight"]
    )
