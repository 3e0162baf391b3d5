"""Pre-norm Swin block on (B, H, W, C) maps: padded, unshifted window attention, then an MLP."""

from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from geomim.kernels.window_attention import WindowMask
from geomim.layers.mlp import ChunkedMlp
from geomim.layers.window_attention import WindowAttention
from geomim.layers.windows import pad_to_multiple, window_merge, window_partition


class SwinBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)), with windows that are never shifted.

    The map is zero-padded at the bottom/right to whole windows after the first norm; padded
    tokens take part in attention unmasked and are cropped before the residual add, as in the
    official GeoMIM encoder (its weights depend on this).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, fused_attn=fused_attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ChunkedMlp(dim, int(dim * mlp_ratio), chunked=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: WindowMask | None = None) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); `mask` restricts attention in every window (see
        `geomim.layers.windows.group_window_mask`)."""
        _, height, width, _ = x.shape
        padded = pad_to_multiple(self.norm1(x), self.window)  # (B, Hp, Wp, C)
        windows = self.attn(window_partition(padded, self.window), mask)  # (B * nW, w*w, C)
        attended = window_merge(windows, self.window, padded.shape[1], padded.shape[2])
        x = x + self.drop_path(attended[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))
