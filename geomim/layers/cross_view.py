"""Cross-View Attention (CVA): every token attends to the tokens of its image row in all cameras.

The nuScenes cameras form a horizontal ring around the car, so one image row across the views is a
horizontal band around it: one sequence per sample and row, holding that row of every view, on
which a pre-norm transformer block runs. The block stays in the view-major layout (B, N, H, W, C)
throughout: its attention (`geomim.kernels.row_attention`) reads each row sequence from the qkv
projection in place. The official formulation regroups the tokens instead, (B*N, H*W, C) ->
(B*H, N*W, C), and runs a timm `Block` on those sequences (the tests compare the two).
"""

from __future__ import annotations

from functools import partial

from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from geomim.kernels.row_attention import row_attention


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
    The view count is explicit: a constructor default, overridable per call. `attn.fused_attn`
    (timm's switch) picks the attention backend: `backend` (None: the device's default, see
    `geomim.kernels.dispatch`) or, when False, the official explicit computation ("reference").
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
        self.backend: str | None = None  # a `row_attention` backend, None: the default
        _check_supported(self)
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

        `key_visible` (B*N, H*W) bool (or (B, N, H, W)): only these tokens are attended to (each
        token still sees itself), as in masked pretraining where the hidden tokens' outputs are
        discarded.
        """
        if x.ndim == 5:
            maps = x
        elif x.ndim == 3 and size is not None:
            num_views = num_views or self.num_views
            if num_views is None:
                raise ValueError(
                    "the number of views is needed: pass num_views (constructor or call)"
                )
            height, width = size
            _check_layout(x.shape[0], x.shape[1], num_views, height, width)
            maps = x.view(-1, num_views, height, width, x.shape[-1])
        else:
            raise ValueError(
                "expected tokens (B*N, H*W, C) with size=(H, W), or (B, N, H, W, C); "
                f"got shape {tuple(x.shape)} with size={size}"
            )
        if key_visible is not None:
            if key_visible.numel() != maps[..., 0].numel():
                expected = tuple(maps.shape[:4]) if x.ndim == 5 else tuple(x.shape[:2])
                raise ValueError(
                    f"expected key_visible of shape {expected}, got {tuple(key_visible.shape)}"
                )
            key_visible = key_visible.reshape(maps.shape[:4])
        return self.forward_maps(maps, key_visible).view_as(x)

    def forward_maps(self, x: Tensor, key_visible: Tensor | None = None) -> Tensor:
        """The block on view-major maps: (B, N, H, W, C), `key_visible` (B, N, H, W) bool."""
        attn = self.attn
        qkv = attn.qkv(self.norm1(x)).unflatten(-1, (3, attn.num_heads, attn.head_dim))
        backend = self.backend if attn.fused_attn else "reference"
        attended = row_attention(qkv, key_visible, backend)  # (B, N, H, W, C)
        x = x + _drop_rows(self.drop_path1, self.ls1(attn.proj_drop(attn.proj(attended))))
        return x + _drop_rows(self.drop_path2, self.ls2(self.mlp(self.norm2(x))))


def _drop_rows(drop_path: nn.Module, x: Tensor) -> Tensor:
    """timm's drop path per (sample, image row) sequence of (B, N, H, W, C) maps, as the block
    on (B*H, N*W, C) rows drops it (the same draws, in the same order)."""
    if not isinstance(drop_path, DropPath) or drop_path.drop_prob == 0 or not drop_path.training:
        return drop_path(x)
    keep = 1 - drop_path.drop_prob
    batch, _, height = x.shape[:3]
    kept = x.new_empty(batch, 1, height, 1, 1).bernoulli_(keep)
    if keep > 0 and drop_path.scale_by_keep:
        kept.div_(keep)
    return x * kept


def _check_supported(block: Block) -> None:
    """Raise if timm built the block with a part the view-major forward does not run."""
    attn = block.attn
    unsupported = [
        name
        for name in ("q_norm", "k_norm", "norm")
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity)
    ]
    if getattr(attn, "gate", None) is not None:
        unsupported.append("gate")
    if attn.attn_drop.p > 0:
        unsupported.append("attn_drop")
    if unsupported:
        raise ValueError(
            f"CrossViewAttention supports timm's plain Attention (Identity q_norm, k_norm, norm; "
            f"no gate; attn_drop 0), got {unsupported} set"
        )
