"""GeoMIMBackbone: timm's outputs, official weights in every form, frozen stages, checkpointing."""

from __future__ import annotations

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim.adapters import GeoMIMBackbone
from geomim.checkpoint_layouts import ADAPTER_PREFIX


def test_outputs_equal_timm_features_only_with_the_same_weights(official_pth):
    torch.manual_seed(0)
    backbone = GeoMIMBackbone("geomim_test", checkpoint=official_pth).eval()
    reference = timm.create_model(
        "geomim_test",
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(official_pth)),
    ).eval()
    images = torch.randn(2, 3, 64, 176)
    with torch.no_grad():
        ours, theirs = backbone(images), reference(images)
    assert isinstance(ours, tuple) and len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert backbone.out_channels == [64, 128]
    assert [info["reduction"] for info in backbone.feature_info] == [16, 32]


def test_official_and_detector_checkpoints_reproduce_the_official_outputs(
    official_pth, bevdet_pth, swin_fixture
):
    io = swin_fixture["io"]
    for source in (
        dict(checkpoint=official_pth),
        dict(init_cfg=dict(type="Pretrained", checkpoint=str(bevdet_pth))),  # as BEVDet writes it
    ):
        backbone = GeoMIMBackbone("geomim_test", **source).eval()
        with torch.no_grad():
            c4, c5 = backbone(io["input_a"])
        torch.testing.assert_close(c4, io["output_a_stage2"], atol=1e-5, rtol=0)
        torch.testing.assert_close(c5, io["output_a_stage3"], atol=1e-5, rtol=0)


def test_init_weights_keeps_the_loaded_weights(official_pth, swin_fixture):
    backbone = GeoMIMBackbone("geomim_test", checkpoint=official_pth)
    backbone.init_weights()  # BEVDepth and mmcv-style detectors call it after building
    weight = swin_fixture["state_dict"]["norm3.weight"]
    assert torch.equal(backbone.model.stage_norms["3"].weight, weight)


def test_multi_view_input_keeps_the_view_axis():
    backbone = GeoMIMBackbone("geomim_test", out_indices=(0, 3)).eval()
    c1, c5 = backbone(torch.randn(1, 6, 3, 64, 176))
    assert c1.shape == (1, 6, 16, 16, 44)
    assert c5.shape == (1, 6, 128, 2, 6)


def test_default_outputs_are_the_stride_16_and_32_maps():
    assert GeoMIMBackbone("geomim_test").out_indices == (2, 3)
    vit = GeoMIMBackbone("geomim_vit_small", num_views=1)
    assert vit.out_indices == (1, 2)
    assert [info["reduction"] for info in vit.feature_info] == [16, 32]


def test_unused_stages_are_pruned():
    backbone = GeoMIMBackbone("geomim_test", out_indices=(0, 1))
    assert len(backbone.model.stages) == 2
    assert backbone.out_channels == [16, 32]


@pytest.mark.parametrize("frozen_stages", [0, 2, 4])
def test_frozen_stages_get_no_gradients_and_stay_in_eval_mode(frozen_stages):
    torch.manual_seed(0)
    backbone = GeoMIMBackbone(
        "geomim_test", frozen_stages=frozen_stages, drop_path_rate=0.1, out_indices=(1, 2, 3)
    )
    backbone.eval().train()  # a detector's .train() after building, as runners do
    model = backbone.model
    frozen = [model.patch_embed, *model.stages[:frozen_stages]]
    norms = model.stage_norms
    frozen += [norms[str(i)] for i in range(frozen_stages) if str(i) in norms]
    trained = [*model.stages[frozen_stages:], model.stage_norms["3"]] if frozen_stages < 4 else []
    assert all(not module.training for part in frozen for module in part.modules())
    assert all(module.training for part in trained for module in part.modules())

    outputs = backbone(torch.randn(2, 3, 64, 176))
    if frozen_stages == 4:  # everything frozen: nothing to differentiate
        assert not any(f.requires_grad for f in outputs)
        return
    sum(f.square().mean() for f in outputs).backward()
    frozen_parameters = [p for part in frozen for p in part.parameters()]
    frozen_parameters.append(model.absolute_pos_embed)
    assert all(not p.requires_grad and p.grad is None for p in frozen_parameters)
    trained_parameters = [p for part in trained for p in part.parameters()]
    assert all(p.requires_grad and p.grad is not None for p in trained_parameters)


def test_frozen_stage_outputs_do_not_change_in_training():
    torch.manual_seed(0)
    backbone = GeoMIMBackbone(
        "geomim_test", frozen_stages=2, drop_path_rate=0.5, out_indices=(1, 3)
    ).train()
    images = torch.randn(1, 3, 64, 176)
    first, second = backbone(images)[0], backbone(images)[0]  # stage 1: frozen, no drop path
    assert torch.equal(first, second)


def test_gradient_checkpointing_gives_the_same_gradients():
    gradients = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        backbone = GeoMIMBackbone("geomim_test", with_cp=with_cp)
        assert all(stage.grad_checkpointing == with_cp for stage in backbone.model.stages)
        torch.manual_seed(1)
        sum(f.sum() for f in backbone(torch.randn(1, 3, 32, 64))).backward()
        gradients.append(backbone.model.stages[2].blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(gradients[0], gradients[1])


def test_drop_path_rate_reaches_the_blocks():
    backbone = GeoMIMBackbone("geomim_test", drop_path_rate=0.2)
    last_block = backbone.model.stages[3].blocks[-1]
    assert any(getattr(m, "drop_prob", 0) == pytest.approx(0.2) for m in last_block.modules())


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match=r"frozen_stages must be in -1\.\.4 .* got 5"):
        GeoMIMBackbone("geomim_test", frozen_stages=5)
    with pytest.raises(ValueError, match=r"geomim_vit_small .* expected frozen_stages=-1, got 1"):
        GeoMIMBackbone("geomim_vit_small", frozen_stages=1)
    with pytest.raises(ValueError, match=r"expected init_cfg=dict\(type='Pretrained'"):
        GeoMIMBackbone("geomim_test", init_cfg=dict(type="Kaiming", layer="Conv2d"))
    with pytest.raises(ValueError, match="disagree"):
        GeoMIMBackbone(
            "geomim_test", checkpoint="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")
        )
    with pytest.raises(TypeError, match="pass a weight file as checkpoint=PATH"):
        GeoMIMBackbone("geomim_test", pretrained="geomim_base.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        GeoMIMBackbone("geomim_test", checkpoint="missing.pth")


def test_the_adapter_keeps_the_timm_model_under_the_prefix_the_conversion_strips():
    keys = GeoMIMBackbone("geomim_test").state_dict().keys()
    assert keys and all(key.startswith(ADAPTER_PREFIX) for key in keys)
