"""Multi-head self-attention inside square windows with a learned relative position bias (Swin)."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from geomim.kernels.window_attention import WindowMask, relative_bias, window_attention


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into the ((2w - 1)**2, heads) bias table, from query minus key offsets."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, L), token i = y * w + x
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, L, L), in [0, 2w - 2]
    return offsets[0] * (2 * window - 1) + offsets[1]


class WindowAttention(nn.Module):
    """Attention over (num_windows, window**2, C) tokens with an unscaled relative position bias.

    `fused_attn=True` runs `geomim.kernels.window_attention` on its default backend for the
    device (or `backend`, when set); `False` the official explicit matmul + softmax.
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, qkv_bias: bool = True, fused_attn: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.fused_attn = fused_attn
        self.backend: str | None = None  # a `window_attention` backend, None: the default
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """(heads, L, L) bias added to the attention logits."""
        return relative_bias(self.relative_position_bias_table, self.relative_position_index)

    def forward(
        self, x: Tensor, mask: WindowMask | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """(B * nW, L, C) -> (B * nW, L, C); `mask` restricts attention in every window; `bias`:
        `relative_position_bias()` where the caller computed it once for several calls."""
        windows, tokens, _ = x.shape
        qkv = self.qkv(x).view(windows, tokens, 3, self.num_heads, self.head_dim)
        backend = self.backend if self.fused_attn else "reference"
        attended = window_attention(
            qkv,
            self.relative_position_bias_table,
            self.relative_position_index,
            mask,
            backend,
            bias,
        )
        return self.proj(attended)
