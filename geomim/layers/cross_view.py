"""Cross-View Attention (CVA): every token attends to the tokens of its image row in all cameras.

The nuScenes cameras form a horizontal ring around the car, so one image row across the views is a
horizontal band around it. Tokens (B*N, H*W, C) are regrouped to (B*H, N*W, C): one sequence per
sample and row, holding that row of every view, and a pre-norm transformer block runs on it.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def rows_across_views(x: Tensor, num_views: int, height: int, width: int) -> Tensor:
    """(B*N, H*W, C) -> (B*H, N*W, C): one sequence per sample and image row."""
    images, tokens, channels = x.shape
    _check_layout(images, tokens, num_views, height, width)
    x = x.view(images // num_views, num_views, height, width, channels)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, num_views * width, channels)


def views_from_rows(x: Tensor, num_views: int, height: int, width: int) -> Tensor:
    """Inverse of `rows_across_views`: (B*H, N*W, C) -> (B*N, H*W, C)."""
    channels = x.shape[-1]
    x = x.view(-1, height, num_views, width, channels)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, height * width, channels)


def _check_layout(images: int, tokens: int, num_views: int, height: int, width: int) -> None:
    if tokens != height * width:
        raise ValueError(
            f"expected {height}x{width} = {height * width} tokens per image, got {tokens}"
        )
    if num_views < 1 or images % num_views:
        raise ValueError(
            f"a batch of {images} images does not split into whole rigs of {num_views} views"
        )


class CrossViewAttention(Block):
    """Pre-norm multi-head attention over rows across views, then an MLP; residual, drop path.

    Parameter names are timm's `Block` (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), as
    the official decoder's cross-view blocks. `zero_init=True` zeroes the output projection and the
    second MLP layer so a freshly inserted block is the identity, as the official code does.
    The view count is explicit: a constructor default, overridable per call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        zero_init: bool = False,
        num_views: int | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path=drop_path,
            norm_layer=partial(nn.LayerNorm, eps=norm_eps),
        )
        self.num_views = num_views
        if zero_init:
            self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Zero the output projection and the second MLP layer: the block becomes the identity."""
        for layer in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        size: tuple[int, int] | None = None,
        num_views: int | None = None,
        key_visible: Tensor | None = None,
    ) -> Tensor:
        """(B*N, H*W, C) with `size=(H, W)`, or (B, N, H, W, C); returns the same layout.

        `key_visible` (B*N, H*W) bool: only these tokens are attended to (each token still sees
        itself), as in masked pretraining where the hidden tokens' outputs are discarded.
        """
        if x.ndim == 5:
            batch, views, height, width, channels = x.shape
            flat = x.reshape(batch * views, height * width, channels)
            visible = None if key_visible is None else key_visible.reshape(batch * views, -1)
            return self.forward(flat, (height, width), views, visible).view_as(x)
        if x.ndim != 3 or size is None:
            raise ValueError(
                "expected tokens (B*N, H*W, C) with size=(H, W), or (B, N, H, W, C); "
                f"got shape {tuple(x.shape)} with size={size}"
            )
        num_views = num_views or self.num_views
        if num_views is None:
            raise ValueError("the number of views is needed: pass num_views (constructor or call)")
        height, width = size
        rows = rows_across_views(x, num_views, height, width)
        attn_mask = None
        if key_visible is not None:
            if key_visible.shape != x.shape[:2]:
                raise ValueError(
                    f"expected key_visible of shape {tuple(x.shape[:2])}, "
                    f"got {tuple(key_visible.shape)}"
                )
            keys = rows_across_views(key_visible[..., None], num_views, height, width)[..., 0]
            itself = torch.eye(keys.shape[1], dtype=torch.bool, device=x.device)
            attn_mask = (keys[:, None, :] | itself)[:, None]  # (B*H, 1, N*W, N*W)
        rows = super().forward(rows, attn_mask=attn_mask)
        return views_from_rows(rows, num_views, height, width)
