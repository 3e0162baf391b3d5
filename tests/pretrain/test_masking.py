"""Complementary masks and the attention masks they induce; isolation of the two groups."""

from __future__ import annotations

import timm
import torch

import geomim  # noqa: F401
from geomim.pretrain.masking import complementary_masks, group_window_mask


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
    allowed = group_window_mask(masks, (2, 2), window=2) == 0
    assert allowed.shape == (1, 4, 4)
    assert allowed[0, 0, 2] and allowed[0, 1, 3] and not allowed[0, 0, 1] and not allowed[0, 2, 3]
    # a 2 x 3 map pads to 2 x 4; window 1 holds column 2 (right cell) and column 3 (padding)
    allowed = group_window_mask(masks, (2, 3), window=2) == 0
    assert allowed.shape == (2, 4, 4)
    assert allowed[0].all()  # columns 0-1 both fall in the left cell
    assert allowed[1, 0, 2] and not allowed[1, 0, 1] and not allowed[1, 1, 1]
    assert torch.equal(allowed, allowed.transpose(1, 2))


def test_hidden_pixels_never_reach_the_other_group():
    torch.manual_seed(0)
    encoder = timm.create_model("geomim_test").eval()
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
