"""MixMIM-style complementary masking: two groups of tokens, each attending only within itself.

Masks live on the stride-32 grid (1 = hidden in that group). The pixels are never altered: every
window attention of the encoder (and of the decoder's smoothing block) gets an additive mask
(`group_window_mask`) that only lets a token attend to tokens visible in its own group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomim.layers.windows import group_window_mask

__all__ = ["complementary_masks", "group_window_mask"]


def complementary_masks(
    grid: tuple[int, int],
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(2, h, w) masks, 1 = hidden: one random permutation of the grid, its first `ratio` of
    the cells visible to group 0 and the rest to group 1 (one draw for the whole batch)."""
    height, width = grid
    cells = height * width
    order = torch.rand(cells, generator=generator).argsort().to(device)
    visible_to_first = torch.zeros(cells, device=device)
    visible_to_first[order[: int(cells * ratio)]] = 1
    hidden_in_first = 1 - visible_to_first
    return torch.stack([hidden_in_first, visible_to_first]).view(2, height, width)
