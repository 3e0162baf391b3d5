"""MixMIM-style complementary masking: two groups of tokens, each attending only within itself.

Masks live on the stride-32 grid (1 = hidden in that group): (2, h, w) shared by every image of
the batch (one draw per batch, as the official code), or (2, I, h, w) with one pair per image
(I = B*N). The pixels are never altered: every window attention of the encoder (and of the
decoder's smoothing block) gets an additive mask (`group_window_mask`) that only lets a token
attend to tokens visible in its own group.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geomim.layers.windows import check_group_masks, group_window_mask

__all__ = [
    "MASK_DRAWS",
    "check_group_masks",
    "complementary_masks",
    "draw_group_masks",
    "group_window_mask",
]

MASK_DRAWS = ("batch", "sample", "image")


def complementary_masks(
    grid: tuple[int, int],
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    count: int | None = None,
) -> Tensor:
    """(2, h, w) masks, 1 = hidden: one random permutation of the grid, its first `ratio` of
    the cells visible to group 0 and the rest to group 1. With `count`, that many independent
    draws: (2, count, h, w)."""
    height, width = grid
    cells = height * width
    draws = 1 if count is None else count
    order = torch.rand(draws, cells, generator=generator).argsort(dim=1).to(device)
    visible_to_first = torch.zeros(draws, cells, device=device)
    visible_to_first.scatter_(1, order[:, : int(cells * ratio)], 1.0)
    masks = torch.stack([1 - visible_to_first, visible_to_first]).view(2, draws, height, width)
    return masks[:, 0] if count is None else masks


def draw_group_masks(
    images: Tensor,
    ratio: float = 0.5,
    draw: str = "batch",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Masks for (B, N, 3, H, W) images on the stride-32 grid: one pair for the whole batch
    (`draw="batch"`, the official way, (2, h, w)), one per sample shared by its cameras
    ("sample") or one per image ("image"), both (2, B*N, h, w)."""
    if draw not in MASK_DRAWS:
        raise ValueError(f"mask draw must be one of {MASK_DRAWS}, got {draw!r}")
    batch, views = images.shape[:2]
    grid = (math.ceil(images.shape[-2] / 32), math.ceil(images.shape[-1] / 32))
    if draw == "batch":
        return complementary_masks(grid, ratio, generator, images.device)
    count = batch if draw == "sample" else batch * views
    masks = complementary_masks(grid, ratio, generator, images.device, count)
    return masks.repeat_interleave(views, dim=1) if draw == "sample" else masks
