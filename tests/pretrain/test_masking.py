"""Complementary masks and the attention masks they induce; isolation of the two groups."""

from __future__ import annotations

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim.pretrain.masking import (
    check_group_masks,
    complementary_masks,
    draw_group_masks,
    group_window_mask,
)


def test_masks_are_complementary_and_split_by_ratio():
    masks = complementary_masks((8, 22), generator=torch.Generator().manual_seed(0))
    assert masks.shape == (2, 8, 22)
    assert torch.equal(masks.sum(0), torch.ones(8, 22))  # each cell hidden in exactly one group
    assert masks[1].sum() == 8 * 22 // 2  # group 0 sees half of the cells
    other = complementary_masks((8, 22), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(masks, other)


def test_window_mask_allows_pairs_visible_in_one_group_and_hides_padding():
    masks = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 1 x 2 cells: left cell for group 1
    # a 2 x 2 map, one window: tokens 0, 2 in the left cell, tokens 1, 3 in the right one
    allowed = group_window_mask(masks, (2, 2), window=2).additive == 0
    assert allowed.shape == (1, 4, 4)
    assert allowed[0, 0, 2] and allowed[0, 1, 3] and not allowed[0, 0, 1] and not allowed[0, 2, 3]
    # a 2 x 3 map pads to 2 x 4; window 1 holds column 2 (right cell) and column 3 (padding)
    mask = group_window_mask(masks, (2, 3), window=2)
    assert mask.groups[1].tolist() == [0, -1, 0, -1]  # column 2: right cell; column 3: padding
    allowed = mask.additive == 0
    assert allowed.shape == (2, 4, 4)
    assert allowed[0].all()  # columns 0-1 both fall in the left cell
    assert allowed[1, 0, 2] and not allowed[1, 0, 1] and not allowed[1, 1, 1]
    assert torch.equal(allowed, allowed.transpose(1, 2))


def test_hidden_pixels_never_reach_the_other_group():
    torch.manual_seed(0)
    encoder = timm.create_model("geomim_test", out_indices=(2, 3)).eval()
    masks = complementary_masks((2, 4), generator=torch.Generator().manual_seed(3))
    images = torch.randn(2, 3, 64, 128)
    hidden_in_first = masks[0].repeat_interleave(32, 0).repeat_interleave(32, 1).bool()
    perturbed = images.clone()
    perturbed[:, :, hidden_in_first] += 5 * torch.randn_like(perturbed[:, :, hidden_in_first])
    with torch.no_grad():
        before = encoder.forward_masked(images, masks)
        after = encoder.forward_masked(perturbed, masks)
    for first, second in zip(before, after, strict=True):
        visible = 1 - torch.nn.functional.interpolate(masks[None, :1], size=first.shape[-2:])[0, 0]
        torch.testing.assert_close(first * visible, second * visible, atol=1e-5, rtol=0)
        assert not torch.allclose(first, second)  # the other group did see the change


def test_draws_per_sample_share_a_rig_and_per_image_draws_differ():
    images = torch.zeros(2, 3, 3, 64, 96)  # B = 2 samples of 3 cameras, grid 2 x 3
    generator = torch.Generator().manual_seed(0)
    assert draw_group_masks(images, generator=generator).shape == (2, 2, 3)
    per_sample = draw_group_masks(images, draw="sample", generator=generator)
    assert per_sample.shape == (2, 6, 2, 3)
    assert torch.equal(per_sample[:, 0], per_sample[:, 2])  # cameras of sample 0
    assert torch.equal(per_sample.sum(0), torch.ones(6, 2, 3))  # complementary
    per_image = draw_group_masks(images, draw="image", generator=torch.Generator().manual_seed(1))
    assert per_image.shape == (2, 6, 2, 3) and per_image[1].flatten(1).sum(1).eq(3).all()
    assert len({tuple(m.flatten().tolist()) for m in per_image[0]}) > 1
    with pytest.raises(ValueError, match="mask draw must be one of"):
        draw_group_masks(images, draw="pixel")


def test_per_image_window_masks_follow_each_image():
    masks = complementary_masks((2, 2), generator=torch.Generator().manual_seed(0), count=3)
    per_image = group_window_mask(masks, (4, 4), window=2).additive  # 4 windows per image
    assert per_image.shape == (12, 4, 4)
    for image in range(3):
        shared = group_window_mask(masks[:, image], (4, 4), window=2).additive
        assert torch.equal(per_image[4 * image : 4 * image + 4], shared)


@pytest.mark.parametrize("fused", [True, False], ids=["fast", "reference"])
def test_per_image_masks_isolate_groups_in_every_image_and_match_shared_ones(fused):
    torch.manual_seed(0)
    encoder = timm.create_model("geomim_test", out_indices=(2, 3)).eval()
    encoder.set_fused_attn(fused)
    masks = complementary_masks((2, 4), generator=torch.Generator().manual_seed(3), count=2)
    images = torch.randn(2, 3, 64, 128)
    perturbed = images.clone()
    for image in range(2):
        hidden = masks[0, image].repeat_interleave(32, 0).repeat_interleave(32, 1).bool()
        perturbed[image, :, hidden] += 5 * torch.randn_like(perturbed[image, :, hidden])
    with torch.no_grad():
        before = encoder.forward_masked(images, masks)
        after = encoder.forward_masked(perturbed, masks)
        alone = [encoder.forward_masked(images[i : i + 1], masks[:, i]) for i in range(2)]
    for level, (first, second) in enumerate(zip(before, after, strict=True)):
        visible = 1 - torch.nn.functional.interpolate(masks[0][:, None], size=first.shape[-2:])
        torch.testing.assert_close(first * visible, second * visible, atol=1e-5, rtol=0)
        assert not torch.allclose(first, second)
        shared = torch.cat([outputs[level] for outputs in alone])
        torch.testing.assert_close(first, shared, atol=1e-5, rtol=0)


def test_wrongly_shaped_masks_are_an_error_naming_both_layouts():
    encoder = timm.create_model("geomim_test", out_indices=(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 2, 4\) \(one pair per batch\) or \(2, 2, 2, 4\)"):
        encoder.forward_masked(torch.randn(2, 3, 64, 128), torch.zeros(2, 3, 2, 4))


def test_non_binary_masks_are_refused():
    half = torch.full((2, 2, 4), 0.5)  # complementary (sums to 1) but hides nothing
    with pytest.raises(ValueError, match="binary"):
        check_group_masks(half, 2, (64, 128))
    encoder = timm.create_model("geomim_test", out_indices=(2, 3))
    with pytest.raises(ValueError, match="binary"):
        encoder.forward_masked(torch.randn(2, 3, 64, 128), half)
