"""CVA-ViT: documented shapes, timm behaviour, view handling, round trips."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

import geomim  # noqa: F401
from geomim.checkpoints import CheckpointError, save_safetensors_atomic
from geomim.models import GeoMIMViT
from geomim.pretrain.masking import complementary_masks

TINY = dict(embed_dim=64, depth=4, num_heads=4, cva_blocks=(0, 3), num_views=3)


def tiny_vit(**kwargs) -> GeoMIMViT:
    """The family's code path at a test size: 64 wide, 4 blocks, CVA after blocks 0 and 3, every
    pyramid level built."""
    torch.manual_seed(0)
    return GeoMIMViT(**{**TINY, "out_indices": (0, 1, 2), **kwargs}).eval()


@pytest.mark.parametrize(
    "variant, width",
    [("geomim_vit_small", 384), ("geomim_vit_base", 768), ("geomim_vit_large", 1024)],
)
def test_registered_variants_give_documented_shapes_at_full_size(variant, width):
    model = timm.create_model(variant, features_only=True).eval()
    assert model.feature_info.reduction() == [8, 16, 32]
    assert model.feature_info.channels() == [width] * 3
    with torch.inference_mode():
        levels = model(torch.randn(1, 6, 3, 256, 704))
    assert [tuple(t.shape) for t in levels] == [
        (1, 6, width, 32, 88),
        (1, 6, width, 16, 44),
        (1, 6, width, 8, 22),
    ]


def test_default_cva_blocks_sit_after_every_quarter():
    with torch.device("meta"):
        base = timm.create_model("geomim_vit_base")
        large = timm.create_model("geomim_vit_large")
    assert list(base.cva) == ["2", "5", "8", "11"]
    assert list(large.cva) == ["5", "11", "17", "23"]
    assert timm.get_pretrained_cfg("geomim_vit_base").hf_hub_id == "geomim/geomim_vit_base.nuscenes"


def test_safetensors_round_trip_reproduces_outputs_exactly(tmp_path):
    model = tiny_vit()
    with torch.no_grad():
        for parameter in model.cva.parameters():  # leave the identity so CVA takes part
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.randn(2, 3, 3, 64, 96)
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic(model.state_dict(), path)
    torch.manual_seed(1)  # different random weights, all replaced by the load
    loaded = GeoMIMViT(**TINY, out_indices=(0, 1, 2)).eval()
    loaded.load_pretrained(str(path))
    with torch.no_grad():
        expected = model.forward_intermediates(images, intermediates_only=True)
        actual = loaded.forward_intermediates(images, intermediates_only=True)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_position_embedding_of_another_grid_is_resized(tmp_path):
    source = tiny_vit(pos_embed_grid=(8, 8))
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic(source.state_dict(), path)
    target = tiny_vit()
    target.load_pretrained(str(path))
    assert target.pos_embed.shape == (1, 64, 16, 44)


def test_unexpected_keys_are_listed(tmp_path):
    state = tiny_vit().state_dict()
    state["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic(state, path)
    with pytest.raises(
        CheckpointError, match=r"1 unexpected keys \[blocks\.9\.attn\.qkv\.weight\]"
    ):
        tiny_vit().load_pretrained(str(path))


def test_cameras_are_told_apart_by_the_view_embedding():
    model = tiny_vit(cva_blocks=())
    same_image = torch.randn(1, 1, 3, 32, 32).expand(1, 3, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(same_image)
    assert not torch.allclose(features[0, 0], features[0, 1])


def test_zero_initialised_cva_blocks_leave_views_independent():
    model = tiny_vit()  # fresh: CVA blocks are the identity
    images = torch.randn(1, 3, 3, 32, 32)
    changed = images.clone()
    changed[0, 2] = torch.randn(3, 32, 32)
    with torch.no_grad():
        before, after = model.forward_features(images), model.forward_features(changed)
    torch.testing.assert_close(before[0, :2], after[0, :2])
    with torch.no_grad():
        for parameter in model.cva.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        before, after = model.forward_features(images), model.forward_features(changed)
    assert not torch.allclose(before[0, :2], after[0, :2])  # now views see each other


def test_four_and_five_dimensional_inputs_agree():
    model = tiny_vit()
    images = torch.randn(2, 3, 3, 40, 50)
    with torch.no_grad():
        kept = model.forward_intermediates(images, intermediates_only=True)
        flat = model.forward_intermediates(images.flatten(0, 1), intermediates_only=True)
    for a, b in zip(kept, flat, strict=True):
        torch.testing.assert_close(a.flatten(0, 1), b, atol=0, rtol=0)
    assert [t.shape[-2:] for t in kept] == [(6, 8), (3, 4), (2, 2)]  # 40x50 pads to 48x64


def test_bad_view_counts_and_sizes_are_clear_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="expected 3 views, got 4"):
        model(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="batch of 4 images does not split into rigs of 3"):
        model(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="at least one 16x16 patch"):
        model(torch.randn(3, 3, 8, 32))
    with pytest.raises(ValueError, match="3 image channels"):
        model(torch.randn(3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"cva_blocks \[4\] must index blocks 0..3"):
        GeoMIMViT(embed_dim=64, depth=4, num_heads=4, cva_blocks=(4,))


def test_timm_conveniences():
    model = tiny_vit(num_classes=5)
    images = torch.randn(2, 3, 3, 32, 32)
    assert model(images).shape == (2, 3, 5)
    assert model(images.flatten(0, 1)).shape == (6, 5)
    model.reset_classifier(0)
    assert model(images).shape == (2, 3, 64)
    final, levels = model.forward_intermediates(images, indices=[1])
    assert final.shape == levels[0].shape == (2, 3, 64, 2, 2)
    assert {"pos_embed", "view_embed"} <= model.no_weight_decay()


def test_grad_checkpointing_gives_same_gradients():
    model = tiny_vit().train()
    images = torch.randn(1, 3, 3, 32, 32)

    def grads():
        model.zero_grad()
        model.forward_features(images).square().mean().backward()
        return model.patch_embed.proj.weight.grad.clone()

    plain = grads()
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(grads(), plain)


def test_pretrained_without_weights_says_how_to_get_them(hf_cache):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)no pretrained weights.*checkpoint of your own"
    ):
        timm.create_model("geomim_vit_small", pretrained=True)


def group_attention_reference(model: GeoMIMViT, images: Tensor, masks: Tensor) -> Tensor:
    """The masked mode written as full-length attention restricted to each group's tokens."""
    x, size, num_views, _ = model._embed(images)
    hidden = F.interpolate(masks[:, None].float(), size=size, mode="nearest").flatten(1)
    merged = torch.zeros_like(x)
    for group_hidden in hidden:  # (L,)
        visible = (group_hidden == 0).expand(x.shape[0], -1)  # (I, L)
        same_group = visible[:, :, None] & visible[:, None, :]
        itself = torch.eye(x.shape[1], dtype=torch.bool)
        tokens = x
        for i, block in enumerate(model.blocks):
            tokens = block(tokens, attn_mask=(same_group | itself)[:, None])
            if str(i) in model.cva:
                tokens = model.cva[str(i)](tokens, size, num_views, visible)
        merged = merged + model.norm(tokens) * visible[..., None]
    return merged.view(x.shape[0], *size, -1).permute(0, 3, 1, 2)


def test_masked_mode_equals_attention_restricted_to_each_group():
    model = tiny_vit()
    masks = complementary_masks((2, 3), generator=torch.Generator().manual_seed(0))
    images = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        c4, c5 = model.forward_masked(images, masks)
        expected = group_attention_reference(model, images.flatten(0, 1), masks)
    assert c4.shape == (3, 64, 4, 6) and c5.shape == (3, 64, 2, 3)
    torch.testing.assert_close(c4, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(c5, F.max_pool2d(expected, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("count", [None, 3], ids=["per-batch", "per-image"])
def test_masked_mode_hides_each_groups_pixels_from_the_other(count):
    model = tiny_vit()
    masks = complementary_masks((2, 3), generator=torch.Generator().manual_seed(1), count=count)
    per_image = masks if count else masks[:, None].expand(2, 3, 2, 3)
    images = torch.randn(3, 3, 64, 96)
    perturbed = images.clone()
    for image in range(3):
        hidden = per_image[0, image].repeat_interleave(32, 0).repeat_interleave(32, 1).bool()
        perturbed[image, :, hidden] += 5 * torch.randn_like(perturbed[image, :, hidden])
    with torch.no_grad():
        before = model.forward_masked(images, masks)
        after = model.forward_masked(perturbed, masks)
    for first, second in zip(before, after, strict=True):
        visible = 1 - F.interpolate(per_image[0][:, None], size=first.shape[-2:])
        torch.testing.assert_close(first * visible, second * visible, atol=1e-5, rtol=0)
        assert not torch.allclose(first, second)


def test_masked_mode_needs_sides_in_whole_mask_cells():
    with pytest.raises(ValueError, match="multiples of 32, got 48x96"):
        tiny_vit().forward_masked(torch.randn(3, 3, 48, 96), torch.zeros(2, 2, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_views=0), r"num_views must be an integer >= 1, got 0"),
        (dict(drop_path_rate=1.01), r"drop_path_rate must be a number in \[0.0, 1.0\], got 1.01"),
        (dict(drop_rate=-1.0), r"drop_rate must be a number in \[0.0, 1.0\], got -1.0"),
        (dict(embed_dim=66), r"embed_dim 66 must be divisible by num_heads, got num_heads 4"),
        (dict(depth=0), r"depth must be an integer >= 1, got 0"),
        (dict(num_heads=0), r"num_heads must be an integer >= 1, got 0"),
        (dict(patch_size=15), r"patch_size must be even .* got 15"),
        (dict(pyramid_channels=0), r"pyramid_channels must be an integer >= 1, got 0"),
        (dict(mlp_ratio=-2.0), r"mlp_ratio must be a number > 0.0, got -2.0"),
        (dict(pos_embed_grid=(0, 44)), r"pos_embed_grid entries must be integers >= 1"),
        (dict(out_indices=(3,)), r"out_indices \[3\] must index pyramid levels 0..2"),
        (dict(cva_blocks=(0, 9)), r"cva_blocks \[0, 9\] must index blocks 0..3"),
    ],
)
def test_constructor_arguments_out_of_range_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeoMIMViT(**{**TINY, **kwargs})


def test_a_classifier_has_no_pyramid_and_a_feature_model_the_levels_asked_for():
    assert list(tiny_vit(out_indices=None).pyramid.levels) == []
    features = timm.create_model("geomim_vit_small", features_only=True, out_indices=(0, 2))
    assert list(features.model.pyramid.levels) == ["0", "2"]
    assert features.feature_info.reduction() == [8, 32]


def test_pyramid_levels_load_when_present_and_stay_fresh_when_absent(tmp_path, caplog):
    encoder = tiny_vit(out_indices=None)  # what pretraining trains: no pyramid
    path = tmp_path / "encoder.safetensors"
    save_safetensors_atomic(encoder.state_dict(), path)
    features = tiny_vit(out_indices=(1,))
    fresh = {k: v.clone() for k, v in features.state_dict().items() if k.startswith("pyramid.")}
    with caplog.at_level(logging.INFO, logger="geomim.checkpoints"):
        features.load_pretrained(str(path))
    assert "keeping the model's initialisation for" in caplog.text
    for key, value in fresh.items():
        torch.testing.assert_close(features.state_dict()[key], value, atol=0, rtol=0)
    torch.testing.assert_close(features.pos_embed, encoder.pos_embed, atol=0, rtol=0)

    save_safetensors_atomic(tiny_vit().state_dict(), path)  # every level
    classifier = tiny_vit(out_indices=None, num_classes=4)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="geomim.checkpoints"):
        classifier.load_pretrained(str(path))
    assert "dropped" in caplog.text and "pyramid.levels.0" in caplog.text
