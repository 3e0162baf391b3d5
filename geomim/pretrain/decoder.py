"""The GeoMIM decoder: top-down fusion, mask tokens, a semantic and a camera-aware geometry branch.

c4, c5 ──top-down + window-7 smoothing (group masks)──> tokens (B*N, h, w, 4C)
──embed, mask tokens per group, position embedding──> (2*B*N, h*w, D), groups stacked
──semantic blocks (cross-view after 1 and 5)──> semantic map
      └─ tapped after block 3 ──camera modulation──> geometry blocks (cross-view after 1)
                                                     ──> geometry map
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from geomim.layers import (
    CrossViewAttention,
    SwinBlock,
    add_position_embedding,
    group_window_mask,
)
from geomim.pretrain.camera import CameraModulation


@dataclass(frozen=True)
class DecoderConfig:
    """Defaults are the official recipe (width 512, 16 heads, 8 + 4 blocks)."""

    width: int = 512
    heads: int = 16
    mlp_ratio: float = 4.0
    semantic_depth: int = 8
    semantic_cross_view: tuple[int, ...] = (1, 5)  # cross-view block after these blocks
    geometry_tap: int = 3  # the geometry branch starts from the output of this semantic block
    geometry_depth: int = 4
    geometry_cross_view: tuple[int, ...] = (1,)
    smooth_window: int = 7
    pos_embed_grid: tuple[int, int] = (7, 7)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 <= self.geometry_tap < self.semantic_depth:
            raise ValueError(
                f"geometry_tap {self.geometry_tap} must index one of the "
                f"{self.semantic_depth} semantic blocks"
            )
        for branch in ("semantic", "geometry"):
            depth, after = getattr(self, f"{branch}_depth"), getattr(self, f"{branch}_cross_view")
            if any(not 0 <= i < depth for i in after):
                raise ValueError(
                    f"{branch}_cross_view {tuple(after)} must index the {depth} {branch} blocks "
                    f"(0..{depth - 1}): a cross-view block after a missing block never runs"
                )


class GeoMIMDecoder(nn.Module):
    """Decodes the masked encoder's stride-16/32 outputs into semantic and geometry maps."""

    def __init__(
        self,
        encoder_dim: int,
        smooth_heads: int,
        num_views: int,
        config: DecoderConfig,
        c5_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_views = num_views
        width, heads = config.width, config.heads
        # c5 -> c4 width (Swin: 8C -> 4C)
        self.top_down = nn.Linear(c5_dim or 2 * encoder_dim, encoder_dim)
        self.smooth = SwinBlock(encoder_dim, smooth_heads, config.smooth_window)
        self.smooth_norm = nn.LayerNorm(encoder_dim)
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # fixed (as in the official MixMAE initialisation), yet a parameter so checkpoints carry it
        self.pos_embed = nn.Parameter(torch.zeros(1, width, *config.pos_embed_grid), False)

        def blocks(depth: int) -> nn.ModuleList:
            norm = partial(nn.LayerNorm, eps=config.norm_eps)
            return nn.ModuleList(
                Block(width, heads, config.mlp_ratio, qkv_bias=True, norm_layer=norm)
                for _ in range(depth)
            )

        def cross_view(after: tuple[int, ...]) -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    str(i): CrossViewAttention(
                        width, heads, config.mlp_ratio, zero_init=True, norm_eps=config.norm_eps
                    )
                    for i in after
                }
            )

        self.semantic_blocks = blocks(config.semantic_depth)
        self.semantic_cross_view = cross_view(config.semantic_cross_view)
        self.semantic_norm = nn.LayerNorm(width, eps=config.norm_eps)
        self.camera = CameraModulation(width)
        self.geometry_blocks = blocks(config.geometry_depth)
        self.geometry_cross_view = cross_view(config.geometry_cross_view)
        self.geometry_norm = nn.LayerNorm(width, eps=config.norm_eps)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, c4: Tensor, c5: Tensor, group_masks: Tensor, camera_vectors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """c4 (B*N, 4C, h, w), c5 (B*N, 8C, h/2, w/2), masks (2, H/32, W/32) or (2, B*N, H/32,
        W/32), camera vectors (B*N, 22) -> semantic and geometry maps, each (2*B*N, D, h, w),
        group-major."""
        images, _, height, width = c4.shape
        c5 = self.top_down(c5.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        fused = F.interpolate(c5, size=(height, width), mode="nearest") + c4
        window_mask = group_window_mask(group_masks, (height, width), self.config.smooth_window)
        tokens = self.smooth(fused.permute(0, 2, 3, 1), window_mask)  # (B*N, h, w, 4C)
        tokens = self.embed(self.smooth_norm(tokens))  # (B*N, h, w, D)

        per_image = group_masks if group_masks.ndim == 4 else group_masks[:, None]
        hidden = F.interpolate(per_image.float(), size=(height, width), mode="nearest")
        hidden = hidden[..., None]  # (2, 1 or B*N, h, w, 1)
        groups = tokens[None] * (1 - hidden) + self.mask_token * hidden  # (2, B*N, h, w, D)
        x = add_position_embedding(groups.flatten(0, 1), self.pos_embed)  # (2*B*N, h, w, D)
        x = x.flatten(1, 2)  # (2*B*N, h*w, D)

        size = (height, width)
        vectors = camera_vectors.repeat(2, 1)  # the same cameras in both groups
        geometry = None
        for i, block in enumerate(self.semantic_blocks):
            x = self._block(block, self.semantic_cross_view, i, x, size)
            if i == self.config.geometry_tap:
                geometry = self.camera(x, vectors)
        for i, block in enumerate(self.geometry_blocks):
            geometry = self._block(block, self.geometry_cross_view, i, geometry, size)

        def as_map(tokens: Tensor, norm: nn.Module) -> Tensor:
            return norm(tokens).transpose(1, 2).reshape(2 * images, -1, height, width)

        return as_map(x, self.semantic_norm), as_map(geometry, self.geometry_norm)

    def _block(
        self,
        block: nn.Module,
        cross_view: nn.ModuleDict,
        index: int,
        x: Tensor,
        size: tuple[int, int],
    ) -> Tensor:
        x = block(x)
        if str(index) in cross_view:
            x = cross_view[str(index)](x, size, self.num_views)
        return x
