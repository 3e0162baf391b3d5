"""GeoMIMSwin: parity with the official backbone, timm behaviour, input contract."""

from __future__ import annotations

import pytest
import timm
import torch

import geomim  # noqa: F401  (registers the models)
from geomim.kernels import last_backend
from geomim.models import GeoMIMSwin, masked_encoder_kwargs, swin_checkpoint_filter_fn
from tests.helpers import official_state_dict

ALL_STAGES = (0, 1, 2, 3)


def official_test_model(swin_fixture, **kwargs) -> GeoMIMSwin:
    """geomim_test with the official fixture's weights, built to return every stage."""
    model = timm.create_model("geomim_test", out_indices=ALL_STAGES, **kwargs).eval()
    model.load_state_dict(swin_checkpoint_filter_fn(swin_fixture["state_dict"], model))
    return model


@pytest.mark.parametrize("backend", ["chunked", "sdpa", "flex", "reference"])
@pytest.mark.parametrize("sample", ["a", "b"])
def test_outputs_match_official_fixture(swin_fixture, window_attention_backend, backend, sample):
    model = official_test_model(swin_fixture)
    model.set_fused_attn(window_attention_backend(backend))
    io = swin_fixture["io"]
    with torch.no_grad():
        c4, c5 = model.forward_intermediates(
            io[f"input_{sample}"], indices=(2, 3), intermediates_only=True
        )
    assert last_backend("window_attention") == backend
    torch.testing.assert_close(c4, io[f"output_{sample}_stage2"], atol=1e-5, rtol=0)
    torch.testing.assert_close(c5, io[f"output_{sample}_stage3"], atol=1e-5, rtol=0)


def test_features_only_returns_official_outputs(swin_fixture):
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(state_dict=swin_fixture["state_dict"]),
    ).eval()
    io = swin_fixture["io"]
    with torch.no_grad():
        c4, c5 = model(io["input_a"])
    assert model.feature_info.channels() == [64, 128]
    assert model.feature_info.reduction() == [16, 32]
    torch.testing.assert_close(c4, io["output_a_stage2"], atol=1e-5, rtol=0)
    torch.testing.assert_close(c5, io["output_a_stage3"], atol=1e-5, rtol=0)


def test_fast_path_matches_reference_on_full_size_base():
    """geomim_base with an official-format checkpoint on 6x3x256x704: fast path == reference."""
    model = timm.create_model("geomim_base", out_indices=(2, 3)).eval()
    official = official_state_dict("official-keys-geomim_base.txt", seed=1)
    model.load_state_dict(swin_checkpoint_filter_fn(official, model))
    images = torch.randn(6, 3, 256, 704, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = model.forward_intermediates(images, indices=(2, 3), intermediates_only=True)
        model.set_fused_attn(False)
        reference = model.forward_intermediates(images, indices=(2, 3), intermediates_only=True)
    assert [tuple(t.shape) for t in fast] == [(6, 512, 16, 44), (6, 1024, 8, 22)]
    for ours, theirs in zip(fast, reference, strict=True):
        assert (ours - theirs).abs().max() <= 1e-4


def test_variants_are_listed_with_hub_weights():
    assert {"geomim_base", "geomim_large", "geomim_test"} <= set(timm.list_models("geomim*"))
    tagged = set(timm.list_models("geomim*", pretrained=True))
    assert {"geomim_base.nuscenes", "geomim_large.nuscenes"} <= tagged
    cfg = timm.get_pretrained_cfg("geomim_base")
    assert cfg.hf_hub_id == "geomim/geomim_base.nuscenes"
    assert cfg.input_size == (3, 256, 704)


@pytest.mark.parametrize(
    "variant, parameters, channels",
    [("geomim_base", 87_396_344, [512, 1024]), ("geomim_large", 195_975_156, [768, 1536])],
)
def test_parameter_count_and_channels_match_official(variant, parameters, channels):
    with torch.device("meta"):
        model = timm.create_model(variant, out_indices=(2, 3))  # the official outputs
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert [info["num_chs"] for info in model.feature_info[2:]] == channels
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]


def test_multiview_input_keeps_view_axis(swin_fixture):
    model = official_test_model(swin_fixture)
    images = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        per_view = model.forward_intermediates(images, intermediates_only=True)
        flat = model.forward_intermediates(images.flatten(0, 1), intermediates_only=True)
        pooled = model(images)
    for kept, folded in zip(per_view, flat, strict=True):
        assert kept.shape[:2] == (2, 3)
        torch.testing.assert_close(kept.flatten(0, 1), folded, atol=0, rtol=0)
    assert pooled.shape == (2, 3, 128)


@pytest.mark.parametrize("size", [(4, 4), (37, 53), (90, 170), (130, 31)])
def test_any_input_size_gives_ceil_strided_maps(swin_fixture, size):
    model = official_test_model(swin_fixture)
    with torch.no_grad():
        outputs = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    height, width = -(-size[0] // 4), -(-size[1] // 4)  # padded patch grid
    for out in outputs:
        assert out.shape[-2:] == (height, width)
        assert torch.isfinite(out).all()
        height, width = -(-height // 2), -(-width // 2)  # merging pads odd sides


def test_forward_intermediates_selects_and_stops_early(swin_fixture):
    model = official_test_model(swin_fixture)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        everything = model.forward_intermediates(images, intermediates_only=True)
        final, last_two = model.forward_intermediates(images, indices=2)
        early_final, early = model.forward_intermediates(images, indices=[1], stop_early=True)
        features = model.forward_features(images)
    assert [t.shape[1] for t in everything] == [16, 32, 64, 128]
    torch.testing.assert_close(last_two[0], everything[2])
    torch.testing.assert_close(final, everything[3])
    torch.testing.assert_close(features, everything[3])
    torch.testing.assert_close(early[0], everything[1])
    torch.testing.assert_close(early_final, everything[1])


def test_pruned_feature_model_keeps_outputs(swin_fixture):
    model = official_test_model(swin_fixture)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(images, indices=[2], intermediates_only=True)
        model.prune_intermediate_layers([2])
        pruned = model.forward_intermediates(images, indices=[2], intermediates_only=True)
    assert len(model.stages) == 3 and model.stages[-1].downsample is None
    assert "3" not in model.stage_norms
    torch.testing.assert_close(pruned[0], expected[0])


def test_classifier_head_trains_and_resets():
    model = timm.create_model("geomim_test", num_classes=7)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.get_classifier().weight.grad is not None
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 128)
    assert timm.create_model("geomim_test")(torch.randn(1, 3, 32, 32)).shape == (1, 128)


def test_grad_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("geomim_test", out_indices=ALL_STAGES)
    images = torch.randn(2, 3, 64, 64)

    def loss_and_grads():
        model.zero_grad()
        loss = sum(o.square().mean() for o in model.forward_intermediates(images)[1])
        loss.backward()
        return loss.detach(), model.patch_embed.proj.weight.grad.clone()

    plain = loss_and_grads()
    model.set_grad_checkpointing(True)
    checkpointed = loss_and_grads()
    torch.testing.assert_close(plain, checkpointed)


def test_training_uses_drop_path_and_backpropagates():
    model = timm.create_model("geomim_test", drop_path_rate=0.5)
    assert model.train() is model  # the official class returned None here
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    first = model(images)
    torch.manual_seed(1)
    second = model(images)
    assert not torch.allclose(first, second)
    first.sum().backward()
    assert all(p.grad is not None for p in model.stages.parameters())


def test_bf16_autocast_stays_close_to_fp32(swin_fixture):
    model = official_test_model(swin_fixture)
    images = swin_fixture["io"]["input_a"]
    with torch.inference_mode():
        reference = model.forward_intermediates(images, intermediates_only=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_intermediates(images, intermediates_only=True)
    for full, half in zip(reference, low, strict=True):
        assert (full - half.float()).abs().max() / full.abs().max() < 0.05


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(2, 1, 64, 64), "3 image channels"),
        (torch.randn(3, 64, 64), "got a 3D tensor"),
        (torch.randn(1, 2, 3, 4, 64, 64), "got a 6D tensor"),
        (torch.randn(1, 3, 3, 64), "at least one 4x4 patch"),
    ],
)
def test_bad_input_names_what_was_expected(images, message):
    model = timm.create_model("geomim_test", out_indices=ALL_STAGES)
    with pytest.raises(ValueError, match=message):
        model(images)
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(images)


def test_constructor_rejects_inconsistent_stages():
    with pytest.raises(ValueError, match="one entry per stage"):
        GeoMIMSwin(depths=(2, 2), num_heads=(1, 2, 4, 8))


def test_no_weight_decay_names_position_parameters():
    model = timm.create_model("geomim_test")
    names = model.no_weight_decay()
    assert "absolute_pos_embed" in names
    assert "stages.0.blocks.0.attn.relative_position_bias_table" in names
    assert names <= {name for name, _ in model.named_parameters()}


def test_cva_blocks_are_off_by_default_and_optional():
    with torch.device("meta"):
        plain = timm.create_model("geomim_base")
        with_cva = timm.create_model("geomim_base", cva_stages=(2, 3), cva_every=6)
    assert not any(".cva." in key for key in plain.state_dict())
    assert list(with_cva.stages[2].cva) == ["5", "11", "17"]
    assert list(with_cva.stages[3].cva) == []  # depth 2: none after a 6th block
    once = GeoMIMSwin(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), cva_stages=(3,))
    assert list(once.stages[3].cva) == ["1"]  # without cva_every: after the stage's last block


def test_swin_with_cva_loads_official_weights_and_starts_identical(swin_fixture):
    plain = official_test_model(swin_fixture)
    with_cva = official_test_model(swin_fixture, cva_stages=(1, 2), cva_every=1, num_views=3)
    images = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        expected = plain.forward_intermediates(images, intermediates_only=True)
        actual = with_cva.forward_intermediates(images, intermediates_only=True)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="batch of 4 images does not split into rigs of 3 views"):
        with_cva(torch.randn(4, 3, 64, 96))
    with pytest.raises(ValueError, match=r"cva_stages \[4\] must index stages 0..3"):
        timm.create_model("geomim_test", cva_stages=(4,))


@pytest.mark.parametrize("variant", ["geomim_test", "geomim_vit_small"])
def test_group_matcher_puts_every_parameter_in_a_layer_group(variant):
    from timm.models import group_parameters

    model = timm.create_model(variant)
    groups = group_parameters(model, model.group_matcher())
    grouped = [name for names in groups.values() for name in names]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    assert len(groups) > 3  # stem, blocks in order, and the rest


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(drop_path_rate=1.5), r"drop_path_rate must be a number in \[0.0, 1.0\], got 1.5"),
        (dict(drop_path_rate=-0.1), r"drop_path_rate must be a number in \[0.0, 1.0\], got -0.1"),
        (dict(drop_rate=2), r"drop_rate must be a number in \[0.0, 1.0\], got 2"),
        (dict(window_sizes=(16, 0, 16, 8)), r"window_sizes entries must be integers >= 1, got \["),
        (dict(depths=(2, 2, 2)), r"depths \[2, 2, 2\], num_heads .* one entry per stage"),
        (dict(num_heads=(3, 2, 4, 8)), r"stage 0 is embed_dim \* 2\*\*0 = 16 wide.*num_heads\[0\]"),
        (dict(embed_dim=0), r"embed_dim must be an integer >= 1, got 0"),
        (dict(mlp_ratio=0), r"mlp_ratio must be a number > 0.0, got 0"),
        (dict(patch_size=0), r"patch_size must be an integer >= 1, got 0"),
        (dict(pos_embed_grid=(56,)), r"pos_embed_grid must have 2 entries, got 1"),
        (dict(num_views=0), r"num_views must be an integer >= 1, got 0"),
        (dict(cva_every=0), r"cva_every must be an integer >= 1, got 0"),
        (dict(in_chans=0), r"in_chans must be an integer >= 1, got 0"),
        (dict(num_classes=-1), r"num_classes must be an integer >= 0, got -1"),
        (dict(normed_stages=(5,)), r"normed_stages \[5\] must index stages 0..3"),
        (dict(out_indices=(4,)), r"out_indices \[4\] must index stages 0..3 .* got 4"),
        (dict(out_indices=5), r"out_indices as an int takes the last n stages: expected 1..4"),
    ],
)
def test_constructor_arguments_out_of_range_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("geomim_test", **kwargs)


def test_features_only_out_indices_out_of_range_are_named():
    with pytest.raises(ValueError, match=r"out_indices \[1, 4\] must index stages 0..3"):
        timm.create_model("geomim_test", features_only=True, out_indices=(1, 4))


def test_a_classifier_builds_only_the_output_norm_forward_uses():
    model = timm.create_model("geomim_test", num_classes=3)
    assert list(model.stage_norms) == ["3"]
    with pytest.raises(
        ValueError, match=r"forward_masked: the output norm of stage 2 .*out_indices"
    ):
        model.forward_masked(torch.randn(1, 3, 64, 64), torch.zeros(2, 2, 2))


@pytest.mark.parametrize("out_indices, norms", [(None, ["2", "3"]), ((3,), ["3"]), ((1,), [])])
def test_a_feature_model_keeps_the_output_norms_of_its_outputs(out_indices, norms):
    kwargs = {} if out_indices is None else dict(out_indices=out_indices)
    features = timm.create_model("geomim_test", features_only=True, **kwargs)
    assert list(features.model.stage_norms) == norms


@pytest.mark.parametrize("name", ["geomim_test", "geomim_vit_small"])
def test_masked_encoder_kwargs_build_what_forward_masked_uses(name):
    encoder = timm.create_model(name, num_views=2, **masked_encoder_kwargs(name)).train()
    masks = torch.zeros(2, 2, 2)
    masks[1] = 1 - masks[0].fill_(1).tril_()
    c4, c5 = encoder.forward_masked(torch.randn(2, 3, 64, 64), masks)
    (c4.mean() + c5.mean()).backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not unused, f"parameters forward_masked does not use: {unused}"
    with pytest.raises(ValueError, match=r"'resnet50' is no GeoMIM encoder"):
        masked_encoder_kwargs("resnet50")
