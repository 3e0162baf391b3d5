"""Official checkpoint conversion: every official form, key for key, with errors that list keys."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim.checkpoints import CheckpointError
from geomim.models import official_swin_to_geomim, swin_checkpoint_filter_fn
from tests.helpers import official_state_dict


def meta_model(variant: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(variant, **kwargs)


@pytest.mark.parametrize("variant", ["geomim_base", "geomim_large"])
def test_released_checkpoint_converts_key_for_key(variant):
    official = official_state_dict(f"official-keys-{variant}.txt")
    model = meta_model(variant, out_indices=(2, 3))  # the official outputs
    converted = swin_checkpoint_filter_fn(official, model)
    expected = model.state_dict()
    assert converted.keys() == expected.keys()  # zero missing, zero unexpected
    assert all(converted[k].shape == expected[k].shape for k in expected)
    dropped = {k for k in official if k.endswith("relative_position_index")}
    assert len(converted) == len(official) - len(dropped)


@pytest.mark.parametrize("variant, size", [("geomim_base", "base"), ("geomim_large", "large")])
def test_pretraining_checkpoint_drops_decoder_and_other_branches(variant, size):
    camera = official_state_dict(
        f"official-keys-pretrain-{size}.txt", prefix="encoders.camera.backbone."
    )
    checkpoint = {
        **camera,
        "encoders.lidar.backbone.conv_input.0.weight": torch.zeros(3, 3, 3, 5, 16),
        "heads.object.shared_conv.weight": torch.zeros(8, 8, 3, 3),
    }
    converted = swin_checkpoint_filter_fn(checkpoint, meta_model(variant, out_indices=(2, 3)))
    released = official_state_dict(f"official-keys-{variant}.txt", seed=0)
    assert converted.keys() == official_swin_to_geomim(released).keys()
    # the encoder tensors are carried over unchanged
    torch.testing.assert_close(
        converted["stage_norms.3.weight"], camera["encoders.camera.backbone.norm3.weight"]
    )


@pytest.mark.parametrize("prefix", ["img_backbone.", "backbone.", "module.", "module.backbone."])
def test_detector_and_wrapper_prefixes_are_handled(swin_fixture, prefix):
    official = swin_fixture["state_dict"]
    checkpoint = {prefix + k: v for k, v in official.items()}
    if "backbone" in prefix:  # the rest of a detector is left aside
        checkpoint["img_neck.lateral_convs.0.conv.weight"] = torch.zeros(4, 4, 1, 1)
    converted = swin_checkpoint_filter_fn(checkpoint, timm.create_model("geomim_test"))
    reference = swin_checkpoint_filter_fn(dict(official), timm.create_model("geomim_test"))
    assert converted.keys() == reference.keys()
    for key in converted:
        torch.testing.assert_close(converted[key], reference[key])


def test_official_names_map_to_ours(swin_fixture):
    converted = official_swin_to_geomim(swin_fixture["state_dict"])
    official = swin_fixture["state_dict"]
    pairs = {
        "patch_embed.projection.weight": "patch_embed.proj.weight",
        "stages.1.blocks.0.attn.w_msa.qkv.weight": "stages.1.blocks.0.attn.qkv.weight",
        "stages.1.blocks.0.ffn.layers.0.0.bias": "stages.1.blocks.0.mlp.fc1.bias",
        "stages.1.blocks.0.ffn.layers.1.weight": "stages.1.blocks.0.mlp.fc2.weight",
        "stages.0.downsample.reduction.weight": "stages.0.downsample.reduction.weight",
        "norm2.weight": "stage_norms.2.weight",
    }
    for theirs, ours in pairs.items():
        assert converted[ours] is official[theirs]
    assert official_swin_to_geomim(converted).keys() == converted.keys()  # idempotent


def test_position_embedding_stored_as_tokens_is_accepted(swin_fixture):
    official = dict(swin_fixture["state_dict"])
    grid = official["absolute_pos_embed"]  # (1, C, 56, 56)
    official["absolute_pos_embed"] = grid.flatten(2).transpose(1, 2)  # (1, 3136, C)
    converted = official_swin_to_geomim(official)
    torch.testing.assert_close(converted["absolute_pos_embed"], grid, atol=0, rtol=0)

    official["absolute_pos_embed"] = torch.zeros(1, 3000, 16)
    with pytest.raises(
        CheckpointError, match=r"absolute_pos_embed: expected .* got \(1, 3000, 16\)"
    ):
        official_swin_to_geomim(official)


def test_relative_tables_of_another_window_are_resized(swin_fixture):
    official = dict(swin_fixture["state_dict"])
    key = "stages.0.blocks.0.attn.w_msa.relative_position_bias_table"
    official[key] = torch.randn(13 * 13, 1)  # made for window 7, the model has window 16
    model = timm.create_model("geomim_test")
    converted = swin_checkpoint_filter_fn(official, model)
    resized = converted["stages.0.blocks.0.attn.relative_position_bias_table"]
    assert resized.shape == (31 * 31, 1)
    # the centre offset (0, 0) keeps its value
    assert resized[15 * 31 + 15, 0] == pytest.approx(official[key][6 * 13 + 6, 0].item(), abs=1e-6)
    model.load_state_dict(converted)


def test_missing_and_unexpected_keys_are_listed(swin_fixture):
    official = dict(swin_fixture["state_dict"])
    del official["stages.2.blocks.1.norm2.bias"]
    official["stages.9.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        swin_checkpoint_filter_fn(official, timm.create_model("geomim_test"))
    message = str(error.value)
    assert "1 missing keys [stages.2.blocks.1.norm2.bias]" in message
    assert "1 unexpected keys [stages.9.blocks.0.extra.weight]" in message


def test_checkpoint_of_the_other_variant_is_named(swin_fixture):
    large = official_state_dict("official-keys-geomim_large.txt")
    with pytest.raises(CheckpointError, match=r"embed dim 192 \(geomim_large\).*geomim_base"):
        swin_checkpoint_filter_fn(large, meta_model("geomim_base"))
    with pytest.raises(CheckpointError, match="embed dim 16 \\(geomim_test\\)"):
        swin_checkpoint_filter_fn(swin_fixture["state_dict"], meta_model("geomim_base"))


def test_classifier_head_is_kept_when_loading_a_backbone(swin_fixture):
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        num_classes=5,
        pretrained_cfg_overlay=dict(state_dict=swin_fixture["state_dict"]),
    )
    assert model.get_classifier().out_features == 5
    torch.testing.assert_close(
        model.stage_norms["3"].weight, swin_fixture["state_dict"]["norm3.weight"]
    )


def test_output_norms_the_model_does_not_build_are_dropped_and_logged(swin_fixture, caplog):
    classifier = timm.create_model("geomim_test", num_classes=5)  # forward needs stage 3 only
    with caplog.at_level(logging.INFO, logger="geomim.checkpoints"):
        converted = swin_checkpoint_filter_fn(swin_fixture["state_dict"], classifier)
    assert converted.keys() == classifier.state_dict().keys()
    assert not any(key.startswith("stage_norms.2.") for key in converted)
    assert "dropped 2 checkpoint keys" in caplog.text
    assert "stage_norms.2.bias, stage_norms.2.weight" in caplog.text


@pytest.mark.parametrize(
    "out_indices, norms", [((1, 2), ["2", "3"]), ((3,), ["3"]), (4, ["2", "3"])]
)
def test_norms_follow_out_indices_and_load_official_weights(swin_fixture, out_indices, norms):
    model = timm.create_model("geomim_test", out_indices=out_indices)
    assert list(model.stage_norms) == norms
    model.load_state_dict(swin_checkpoint_filter_fn(swin_fixture["state_dict"], model))


def test_checkpoint_without_a_requested_output_norm_is_an_error(swin_fixture):
    official = {k: v for k, v in swin_fixture["state_dict"].items() if not k.startswith("norm2.")}
    with pytest.raises(CheckpointError, match=r"2 missing keys \[stage_norms\.2\.bias"):
        swin_checkpoint_filter_fn(official, timm.create_model("geomim_test", out_indices=(2, 3)))


def test_wrong_shapes_are_listed(swin_fixture):
    official = dict(swin_fixture["state_dict"])
    official["stages.1.downsample.norm.weight"] = torch.zeros(7)
    with pytest.raises(
        CheckpointError, match=r"stages.1.downsample.norm.weight: checkpoint \(7,\), model \(128,\)"
    ):
        swin_checkpoint_filter_fn(official, timm.create_model("geomim_test"))


def test_integer_weights_are_refused_not_cast(swin_fixture):
    official = dict(swin_fixture["state_dict"])
    official["patch_embed.projection.weight"] = torch.randint_like(
        official["patch_embed.projection.weight"], 3, dtype=torch.int64
    )
    with pytest.raises(
        CheckpointError,
        match=r"patch_embed\.proj\.weight: found torch\.int64, expected torch\.float32",
    ):
        swin_checkpoint_filter_fn(official, timm.create_model("geomim_test"))
