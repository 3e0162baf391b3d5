"""Pre-norm Swin block on (B, H, W, C) maps: padded, unshifted window attention, then an MLP."""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from geomim.kernels.window_attention import WindowMask
from geomim.layers.mlp import ChunkedMlp
from geomim.layers.window_attention import WindowAttention
from geomim.layers.windows import pad_to_multiple, window_bands, window_merge, window_partition

# Tokens per band group at CPU inference: the group's qkv, attention and MLP intermediates stay
# in cache instead of going out to memory as whole-map tensors (2-32 MiB measured alike on an
# AMD EPYC, 6% faster than whole maps; fewer, larger groups lose less on a busy machine).
BAND_BYTES = 8 << 20


class SwinBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)), with windows that are never shifted.

    The map is zero-padded at the bottom/right to whole windows after the first norm; padded
    tokens take part in attention unmasked and are cropped before the residual add, as in the
    official GeoMIM encoder (its weights depend on this).

    At CPU inference (eval mode, autograd off, no mask, the fast path on: `mlp.chunked`, not
    under `torch.compile`) the block runs on bands of whole window rows, a few at a time:
    windows never shift, so a band's tokens meet only tokens of the same band, and the results
    equal the whole-map computation up to float32 rounding (the GEMMs have other row counts).
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
        if self._runs_in_bands(x, mask):
            return self._forward_in_bands(x)
        _, height, width, _ = x.shape
        x = x + self.drop_path(self._attend(x, mask)[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend(
        self, x: Tensor, mask: WindowMask | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Attention on the padded windows of LN(x) -> (B, Hp, Wp, C), padding included."""
        padded = pad_to_multiple(self.norm1(x), self.window)  # (B, Hp, Wp, C)
        windows = self.attn(window_partition(padded, self.window), mask, bias)  # (B * nW, w*w, C)
        return window_merge(windows, self.window, padded.shape[1], padded.shape[2])

    def _runs_in_bands(self, x: Tensor, mask: WindowMask | None) -> bool:
        return (
            self.mlp.chunked
            and mask is None
            and not self.training
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # a compiler fuses the whole-map ops itself
        )

    def _forward_in_bands(self, x: Tensor) -> Tensor:
        images, height, width, channels = x.shape
        rows = max(1, BAND_BYTES // (width * channels * x.element_size()))
        source = x.contiguous().view(-1, width, channels)
        out = torch.empty_like(source)
        bias = self.attn.relative_position_bias()  # gathered once for every band
        for start, stop, band_height in window_bands(images, height, self.window, rows):
            band = source[start:stop].view(-1, band_height, width, channels)
            band = band + self._attend(band, bias=bias)[:, :band_height, :width]
            torch.add(band, self.mlp(self.norm2(band)), out=out[start:stop].view_as(band))
        return out.view_as(x)
