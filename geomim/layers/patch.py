"""Patch embedding and patch merging of the official GeoMIM (mmdet-style) Swin encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Conv patchify then LayerNorm (optional): (B, 3, H, W) -> (B, ceil(H/p), ceil(W/p), C).

    Sides that are not multiples of the patch size are zero-padded at the bottom/right first.
    With `fast_layout` (the default) the convolution takes a channels-last input and so writes
    (B, H, W, C) directly; without, it runs on NCHW and the tokens are a whole-map copy, as in
    the official code.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.fast_layout = True

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size))
        if self.fast_layout:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def add_position_embedding(tokens: Tensor, pos_embed: Tensor) -> Tensor:
    """(B, H, W, C) tokens + a (1, C, h, w) embedding bicubically resized to (H, W)."""
    resized = F.interpolate(pos_embed, size=tokens.shape[1:3], mode="bicubic", align_corners=False)
    return tokens + resized.permute(0, 2, 3, 1)


class PatchMerging(nn.Module):
    """2x2 neighbourhood merge: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim).

    The official code lays the four neighbours out channel-major (index = c * 4 + row * 2 +
    col, as `nn.Unfold(2, stride=2)` orders them), then LayerNorm(4C) and a bias-free
    Linear(4C, out_dim); the parameters keep that order. With `fast_layout` (the default) the
    forward gathers the neighbours position-major instead (index = (row * 2 + col) * C + c:
    whole C-long runs, where the channel-major gather copies one float at a time, ~10x slower)
    and reorders the norm's and the reduction's parameters to match: the same result up to
    float32 rounding.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.fast_layout = True

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        rows, cols = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(batch, rows, 2, cols, 2, channels)
        if not self.fast_layout:
            x = x.permute(0, 1, 3, 5, 2, 4).reshape(batch, rows, cols, 4 * channels)
            return self.reduction(self.norm(x))
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, 4 * channels)
        norm = self.norm
        weight, bias = (_position_major(p, channels) for p in (norm.weight, norm.bias))
        x = F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
        return F.linear(x, _position_major(self.reduction.weight, channels))


def _position_major(parameter: Tensor, channels: int) -> Tensor:
    """A parameter over channel-major neighbours (last dim 4C, index c * 4 + k) reordered to
    position-major (index k * C + c)."""
    lead = parameter.shape[:-1]
    return parameter.view(*lead, channels, 4).transpose(-1, -2).reshape(*lead, 4 * channels)
