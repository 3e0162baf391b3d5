"""CVA-ViT: plain ViT encoders with Cross-View Attention blocks, for multi-camera rigs.

Patch 16 tokens of every view run through ViT blocks; after the configured blocks a CVA block
lets each token attend to its image row in all cameras. A learned per-camera embedding tells the
views apart. A simple feature pyramid (ViTDet) turns the stride-16 map into strides 8, 16, 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, LayerNorm2d, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geomim.layers import (
    CrossViewAttention,
    PatchEmbed,
    add_position_embedding,
    check_group_masks,
    fold_views,
    unfold_views,
)
from geomim.models._base import MultiViewBackbone
from geomim.models._factory import (
    OutIndices,
    check_indices,
    check_int,
    check_ints,
    check_rate,
    check_real,
    init_linear_weights,
)
from geomim.models.cva_vit_convert import cva_vit_checkpoint_filter_fn


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from one stride-16 map: x2 by a transposed conv, as is, /2 by max-pool
    (odd sides rounded up, as the Swin stages do); each level then Conv1x1 + LayerNorm2d +
    Conv3x3 + LayerNorm2d to `out_channels`. Only the `levels` asked for are built."""

    NUM_LEVELS = 3

    def __init__(self, dim: int, out_channels: int, levels: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.levels = nn.ModuleDict({str(i): _pyramid_level(i, dim, out_channels) for i in levels})

    def forward(self, x: Tensor, indices: Sequence[int] = (0, 1, 2)) -> list[Tensor]:
        """(B, C, H, W) at stride 16 -> the selected levels (strides 8, 16, 32)."""
        return [self.levels[str(i)](x) for i in indices]


def _pyramid_level(index: int, dim: int, out_channels: int) -> nn.Sequential:
    """Level `index` of the pyramid: the rescaling (x2, x1, /2), then the two conv + norm."""
    if index == 0:
        rescale, width = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    else:
        rescale, width = (nn.Identity() if index == 1 else nn.MaxPool2d(2, ceil_mode=True)), dim
    return nn.Sequential(
        rescale,
        nn.Conv2d(width, out_channels, 1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


class GeoMIMViT(MultiViewBackbone):
    """ViT with Cross-View Attention after chosen blocks, a per-camera embedding and a
    stride 8/16/32 feature pyramid. Images: (B, N, 3, H, W), or (B*N, 3, H, W) with N = num_views.
    """

    checkpoint_filter = staticmethod(cva_vit_checkpoint_filter_fn)

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        pos_embed_grid: tuple[int, int] = (16, 44),
        num_views: int = 6,
        cva_blocks: Sequence[int] | None = None,
        pyramid_channels: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        out_indices: OutIndices = None,
    ) -> None:
        """`out_indices`: the pyramid levels `forward_intermediates` (and so `features_only`)
        may return; only those are built. None: no pyramid, only what `forward` uses, so that
        every parameter gets a gradient."""
        super().__init__()
        _check_architecture(embed_dim, depth, num_heads, patch_size)
        check_int("in_chans", in_chans)
        check_int("num_classes", num_classes, 0)
        check_real("mlp_ratio", mlp_ratio, 0.0)
        check_ints("pos_embed_grid", pos_embed_grid, count=2)
        check_int("num_views", num_views)
        check_rate("drop_rate", drop_rate)
        check_rate("drop_path_rate", drop_path_rate)
        if pyramid_channels is not None:
            check_int("pyramid_channels", pyramid_channels)
        if cva_blocks is None:  # after every quarter of the depth
            cva_blocks = [depth * quarter // 4 - 1 for quarter in range(1, 5)]
            cva_blocks = sorted({i for i in cva_blocks if i >= 0})
        cva_blocks = check_indices("cva_blocks", cva_blocks, depth, "block")
        levels = check_indices(
            "out_indices", out_indices, SimpleFeaturePyramid.NUM_LEVELS, "pyramid level"
        )
        self.in_chans = in_chans
        self.num_views = num_views
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dim
        self.output_fmt = "NCHW"
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *pos_embed_grid))
        self.view_embed = nn.Parameter(torch.zeros(num_views, embed_dim))
        drop_path = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path[i])
            for i in range(depth)
        )
        self.cva = nn.ModuleDict(
            {
                str(i): CrossViewAttention(
                    embed_dim, num_heads, mlp_ratio, drop_path=drop_path[i], zero_init=True
                )
                for i in sorted(cva_blocks)
            }
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        pyramid_channels = pyramid_channels or embed_dim
        self.pyramid = SimpleFeaturePyramid(embed_dim, pyramid_channels, levels)
        self.feature_info = [
            dict(num_chs=pyramid_channels, reduction=stride, module=f"pyramid.levels.{i}")
            for i, stride in enumerate((patch_size // 2, patch_size, patch_size * 2))
        ]
        self.head = ClassifierHead(embed_dim, num_classes, global_pool, drop_rate=drop_rate)
        for parameter in (self.pos_embed, self.view_embed):
            trunc_normal_(parameter, std=0.02)
        self.blocks.apply(init_linear_weights)  # the CVA blocks keep their zero init

    # ----------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "view_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^pos_embed|^view_embed|^patch_embed",
            blocks=[(r"^(?:blocks|cva)\.(\d+)", None), (r"^norm|^pyramid", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # ----------------------------------------------------------------------------- forward
    def encode(self, images: Tensor) -> tuple[Tensor, int | None]:
        """Images -> the normalised stride-16 map (B*N, C, H/16, W/16), and N if 5D input."""
        x, (grid_h, grid_w), num_views, views_given = self._embed(images)
        for i, block in enumerate(self.blocks):
            x = self._run(block, x)
            if str(i) in self.cva:
                x = self._run(self.cva[str(i)], x, (grid_h, grid_w), num_views)
        x = self.norm(x).view(x.shape[0], grid_h, grid_w, -1)
        return x.permute(0, 3, 1, 2).contiguous(), views_given

    def masked_feature_info(self) -> dict:
        """What `forward_masked` returns: channels of its stride-16 and stride-32 maps, and the
        head count a decoder block at the stride-16 width should use."""
        return dict(
            channels=(self.num_features, self.num_features),
            num_heads=self.blocks[0].attn.num_heads,
        )

    def forward_masked(self, images: Tensor, group_masks: Tensor) -> list[Tensor]:
        """Masked pretraining, MAE-style: each complementary group's visible tokens run through
        the blocks without the hidden ones (attention costs about half a full pass), and the
        cross-view blocks attend only to the group's visible tokens.

        `group_masks` (2, H/32, W/32) or (2, B*N, H/32, W/32), 1 = hidden; H and W multiples of
        32. Returns the normalised stride-16 map of both groups' tokens (B*N, C, H/16, W/16) and
        its 2x2 max-pool (B*N, C, H/32, W/32): every pooled cell lies in one mask cell, so
        neither group's outputs see the other's pixels.
        """
        height, width = images.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(
                f"the masked mode needs image sides that are multiples of 32, got {height}x{width}"
            )
        x, size, num_views, _ = self._embed(images)  # (I, L, C)
        check_group_masks(group_masks, x.shape[0], (height, width))
        per_image = group_masks if group_masks.ndim == 4 else group_masks[:, None]
        hidden = F.interpolate(per_image.float(), size=size, mode="nearest")  # (2, 1 or I, h, w)
        visible = (hidden == 0).flatten(2).expand(2, x.shape[0], -1)  # (2, I, L)
        merged = torch.zeros_like(x)
        for group in visible:
            merged = merged + self._encode_visible(x, group, size, num_views)
        merged = merged.view(x.shape[0], *size, -1).permute(0, 3, 1, 2).contiguous()
        return [merged, F.max_pool2d(merged, 2)]

    def _encode_visible(
        self, x: Tensor, visible: Tensor, size: tuple[int, int], num_views: int
    ) -> Tensor:
        """Run the tokens where `visible` (I, L) through the encoder without the others; return
        the normalised outputs in place, zeros where hidden: (I, L, C)."""
        counts = visible.sum(dim=1)
        if not torch.all(counts == counts[0]):
            raise ValueError(f"every image needs as many visible tokens, got {counts.tolist()}")
        order = visible.to(torch.uint8).argsort(dim=1, descending=True, stable=True)
        index = order[:, : int(counts[0]), None].expand(-1, -1, x.shape[-1])  # (I, L_v, C)
        tokens = x.gather(1, index)
        for i, block in enumerate(self.blocks):
            tokens = self._run(block, tokens)
            if str(i) in self.cva:  # rows across views need the full grid: scatter, attend, gather
                full = torch.zeros_like(x).scatter(1, index, tokens)
                full = self._run(self.cva[str(i)], full, size, num_views, visible)
                tokens = full.gather(1, index)
        return torch.zeros_like(x).scatter(1, index, self.norm(tokens))

    def _embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int], int, int | None]:
        """Images -> tokens (B*N, h*w, C) with position and camera embeddings, the grid (h, w),
        the rig size N, and N if the input was 5D."""
        images, views_given = fold_views(images, self.in_chans)
        num_views = views_given or self.num_views
        if views_given is not None and views_given != self.num_views:
            raise ValueError(f"expected {self.num_views} views, got {views_given}")
        if images.shape[0] % num_views:
            raise ValueError(
                f"a batch of {images.shape[0]} images does not split into rigs of {num_views} views"
            )
        height, width = images.shape[-2:]
        if min(height, width) < self.patch_embed.patch_size:
            size = self.patch_embed.patch_size
            raise ValueError(
                f"expected images of at least one {size}x{size} patch, got {height}x{width}"
            )
        x = add_position_embedding(self.patch_embed(images), self.pos_embed)  # (B*N, h, w, C)
        batch_views, grid_h, grid_w, channels = x.shape
        views = self.view_embed.repeat(batch_views // num_views, 1)  # camera n of each sample
        x = (x + views[:, None, None, :]).view(batch_views, grid_h * grid_w, channels)
        return x, (grid_h, grid_w), num_views, views_given

    def _run(self, module: nn.Module, x: Tensor, *args) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, *args, use_reentrant=False)
        return module(x, *args)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Pyramid levels (strides 8, 16, 32) as (B*N or B, N, C, H/s, W/s), and the final map.

        `norm` and `stop_early` are accepted for timm compatibility: every level is computed from
        the normalised last block.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"expected output_fmt 'NCHW', got {output_fmt!r}")
        take_indices, _ = feature_take_indices(SimpleFeaturePyramid.NUM_LEVELS, indices)
        missing = [i for i in take_indices if str(i) not in self.pyramid.levels]
        if missing:
            built = sorted(int(key) for key in self.pyramid.levels)
            raise ValueError(
                f"forward_intermediates: pyramid level {missing[0]} is not part of this model "
                f"(built with levels {built}): create it with out_indices including "
                f"{missing[0]}, e.g. timm.create_model(name, out_indices=(0, 1, 2)), or with "
                "features_only=True"
            )
        final, num_views = self.encode(x)
        levels = [unfold_views(level, num_views) for level in self.pyramid(final, take_indices)]
        if intermediates_only:
            return levels
        return unfold_views(final, num_views), levels

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Keep every block (each level needs the last); drop the pyramid levels not asked for,
        and the head if asked."""
        take_indices, _ = feature_take_indices(SimpleFeaturePyramid.NUM_LEVELS, indices)
        for key in [k for k in self.pyramid.levels if int(k) not in take_indices]:
            del self.pyramid.levels[key]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """The normalised stride-16 map: (B*N, C, H/16, W/16), or (B, N, ...) for 5D input."""
        final, num_views = self.encode(x)
        return unfold_views(final, num_views)


def _check_architecture(embed_dim: int, depth: int, num_heads: int, patch_size: int) -> None:
    """Raise `ValueError` naming the argument unless the encoder's sizes fit together."""
    check_int("embed_dim", embed_dim, 2)  # the pyramid's x2 level has embed_dim // 2 channels
    check_int("depth", depth)
    check_int("num_heads", num_heads)
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim {embed_dim} must be divisible by num_heads, got num_heads {num_heads}"
        )
    check_int("patch_size", patch_size, 2)
    if patch_size % 2:
        raise ValueError(
            f"patch_size must be even (the pyramid's finest level is at stride patch_size / 2), "
            f"got {patch_size}"
        )
