"""The GeoMIM Swin encoder (official `SwinTransformerBEVFT`) as a timm model.

Layout inside the model: tokens as (B, H, W, C) channels-last maps; outputs as (B, C, H, W).
Multi-view input (B, N, 3, H, W) is folded to (B * N, 3, H, W) and outputs get the view axis back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import ClassifierHead, trunc_normal_
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geomim.layers import (
    ChunkedMlp,
    CrossViewAttention,
    PatchEmbed,
    PatchMerging,
    SwinBlock,
    WindowAttention,
    add_position_embedding,
    check_group_masks,
    fold_views,
    group_window_mask,
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
from geomim.models.swin_convert import swin_checkpoint_filter_fn

# The stages `forward_masked` returns (strides 16 and 32), as the official pretraining encoder.
MASKED_STAGES = (2, 3)


class SwinStage(nn.Module):
    """A run of Swin blocks at one resolution, with the patch merging that follows it (if any)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        out_dim: int | None,
        fused_attn: bool,
        cva_after: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, mlp_ratio, drop_path[i], fused_attn)
            for i in range(depth)
        )
        # Cross-view blocks after the given block indices, zero-initialised (identity at start).
        self.cva = nn.ModuleDict(
            {
                str(i): CrossViewAttention(dim, num_heads, mlp_ratio, True, drop_path[i], True)
                for i in cva_after
            }
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(
        self, x: Tensor, num_views: int | None = None, group_masks: Tensor | None = None
    ) -> Tensor:
        """Run the blocks on (B*N, H, W, C); the caller applies `downsample` afterwards.

        `group_masks` (2, h, w): complementary masks (1 = hidden); each token then attends only
        within its group, and padding is hidden in both (masked pretraining).
        """
        mask = None
        if group_masks is not None:
            mask = group_window_mask(group_masks, x.shape[1:3], self.blocks[0].window)
        for i, block in enumerate(self.blocks):
            x = self._run(block, x, mask)
            if str(i) in self.cva:
                images, height, width, channels = x.shape
                rigs = x.view(images // num_views, num_views, height, width, channels)
                x = self._run(self.cva[str(i)], rigs).view_as(x)
        return x

    def _run(self, module: nn.Module, x: Tensor, *args) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, *args, use_reentrant=False)
        return module(x, *args)


class GeoMIMSwin(MultiViewBackbone):
    """Swin encoder with unshifted padded windows, a resized absolute position embedding and
    LayerNorm'd outputs at stages 2 and 3, numerically identical to the official GeoMIM backbone.
    """

    checkpoint_filter = staticmethod(swin_checkpoint_filter_fn)  # official or geomim weights

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_sizes: Sequence[int] = (16, 16, 16, 8),
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        pos_embed_grid: tuple[int, int] = (56, 56),
        normed_stages: Sequence[int] = (2, 3),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        fused_attn: bool = True,
        cva_stages: Sequence[int] = (),
        cva_every: int | None = None,
        num_views: int = 6,
        out_indices: OutIndices = None,
    ) -> None:
        """`out_indices`: the stages whose maps `forward_intermediates` (and so `features_only`
        and `forward_masked`, which needs 2 and 3) may return besides the last; the output norms
        of those among `normed_stages` are built (as the official model builds them for its
        out_indices). None: only what `forward` uses, so that every parameter gets a gradient."""
        super().__init__()
        num_stages = _check_architecture(embed_dim, depths, num_heads, window_sizes)
        check_int("in_chans", in_chans)
        check_int("num_classes", num_classes, 0)
        check_real("mlp_ratio", mlp_ratio, 0.0)
        check_int("patch_size", patch_size)
        check_ints("pos_embed_grid", pos_embed_grid, count=2)
        check_rate("drop_rate", drop_rate)
        check_rate("drop_path_rate", drop_path_rate)
        check_int("num_views", num_views)
        if cva_every is not None:
            check_int("cva_every", cva_every)
        normed_stages = check_indices("normed_stages", normed_stages, num_stages, "stage")
        cva_stages = check_indices("cva_stages", cva_stages, num_stages, "stage")
        outputs = {*check_indices("out_indices", out_indices, num_stages, "stage"), num_stages - 1}
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.in_chans = in_chans
        self.num_views = num_views
        self.has_cva = bool(cva_stages)
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NCHW"
        self.normed_stages = tuple(normed_stages)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *pos_embed_grid))
        drop_path = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i in range(num_stages):
            first_block = sum(depths[:i])
            self.stages.append(
                SwinStage(
                    dim=dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_path[first_block : first_block + depths[i]],
                    out_dim=dims[i + 1] if i + 1 < num_stages else None,
                    fused_attn=fused_attn,
                    cva_after=_cva_positions(depths[i], cva_every) if i in cva_stages else (),
                )
            )
            self.feature_info.append(
                dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"stages.{i}")
            )
        self.stage_norms = nn.ModuleDict(
            {str(i): nn.LayerNorm(dims[i]) for i in normed_stages if i in outputs}
        )
        self.head = ClassifierHead(dims[-1], num_classes, global_pool, drop_rate=drop_rate)
        trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.apply(init_linear_weights)
        for module in self.modules():
            if isinstance(module, CrossViewAttention):
                module.reset_to_identity()  # inserted blocks start as the identity

    # ----------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"} | {
            name for name, _ in self.named_parameters() if "relative_position_bias_table" in name
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^absolute_pos_embed|^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stage_norms", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_fused_attn(self, enable: bool = True) -> None:
        """Switch between the fast path (the device's attention backend; at CPU inference, blocks
        run on bands of window rows and MLPs in row chunks; patch layers in copy-light layouts)
        and the official computation step by step (explicit attention, whole-map blocks, the
        official patch layouts), the reference for parity."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.fused_attn = enable
            elif isinstance(module, ChunkedMlp):
                module.chunked = enable
            elif isinstance(module, PatchEmbed | PatchMerging):
                module.fast_layout = enable

    # ----------------------------------------------------------------------------- forward
    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C) tokens + the resized position embedding."""
        height, width = images.shape[-2:]
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"expected images of at least one {self.patch_size}x{self.patch_size} patch, "
                f"got {height}x{width}"
            )
        return add_position_embedding(self.patch_embed(images), self.absolute_pos_embed)

    def _fold(self, images: Tensor) -> tuple[Tensor, int | None]:
        """(B*N, 3, H, W) and N (None for 4D input), checking rigs when CVA blocks need them."""
        images, num_views = fold_views(images, self.in_chans)
        rig = num_views or self.num_views
        if self.has_cva and images.shape[0] % rig:
            raise ValueError(
                f"a batch of {images.shape[0]} images does not split into rigs of {rig} views"
            )
        return images, num_views

    def stage_output(self, index: int, x: Tensor) -> Tensor:
        """Stage `index`'s (B, H, W, C) tokens as the (B, C, H, W) map the backbone returns."""
        if index in self.normed_stages:
            x = self.stage_norms[str(index)](x)
        return x.permute(0, 3, 1, 2).contiguous()

    def check_outputs(self, indices: Sequence[int], caller: str) -> None:
        """Raise unless every stage in `indices` that has an output norm was built with it."""
        missing = [i for i in indices if i in self.normed_stages and str(i) not in self.stage_norms]
        if missing:
            built = sorted(int(key) for key in self.stage_norms)
            raise ValueError(
                f"{caller}: the output norm of stage {missing[0]} is not part of this model "
                f"(built for the normalised outputs {built}): create it with out_indices "
                f"including {missing[0]}, e.g. timm.create_model(name, out_indices=(2, 3)), "
                "or with features_only=True"
            )

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (B*N or B, N, C_i, H/s_i, W/s_i); stages 2 and 3 carry their output norm.

        `norm` is accepted for timm compatibility: the output norms are part of this backbone's
        outputs, so they are always applied, as in the official model.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"expected output_fmt 'NCHW', got {output_fmt!r}")
        images, num_views = self._fold(x)
        taken, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if stop_early else len(self.stages) - 1
        self.check_outputs([*taken, last], "forward_intermediates")
        final, intermediates = self._run_stages(images, num_views, taken, last)
        if intermediates_only:
            return intermediates
        return final, intermediates

    def masked_feature_info(self) -> dict:
        """What `forward_masked` returns: channels of its stride-16 and stride-32 maps, and the
        head count a decoder block at the stride-16 width should use."""
        stage = self.stages[2]
        return dict(
            channels=(self.feature_info[2]["num_chs"], self.feature_info[3]["num_chs"]),
            num_heads=stage.blocks[0].attn.num_heads,
        )

    def forward_masked(self, images: Tensor, group_masks: Tensor) -> list[Tensor]:
        """Masked pretraining: both complementary groups in one pass, every window attention
        restricted to its group. `group_masks` (2, H/32, W/32) for every image or (2, B*N, H/32,
        W/32) one pair per image, 1 = hidden. Returns stages 2 and 3 (normalised), like the
        official pretraining encoder."""
        if self.has_cva:
            raise ValueError(
                "cross-view blocks would mix the mask groups: build without cva_stages"
            )
        self.check_outputs(MASKED_STAGES, "forward_masked")
        images, num_views = self._fold(images)
        check_group_masks(group_masks, images.shape[0], images.shape[-2:])
        _, outputs = self._run_stages(images, num_views, MASKED_STAGES, 3, group_masks)
        return outputs

    def _run_stages(
        self,
        images: Tensor,
        num_views: int | None,
        take_indices: Sequence[int],
        last: int,
        group_masks: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Stages 0..last on folded images: the last output and those of `take_indices`."""
        x = self.embed(images)
        intermediates = []
        for i in range(last + 1):
            stage = self.stages[i]
            x = stage(x, num_views or self.num_views, group_masks)
            if i in take_indices:
                intermediates.append(unfold_views(self.stage_output(i, x), num_views))
            if i < last and stage.downsample is not None:
                x = stage.downsample(x)
        if last in take_indices:
            return intermediates[-1], intermediates
        return unfold_views(self.stage_output(last, x), num_views), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages, output norms (and head) that the requested outputs do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.stages[-1].downsample = None
        for key in [k for k in self.stage_norms if int(k) not in take_indices]:
            del self.stage_norms[key]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Last stage's normalised map: (B*N, 8C, H/32, W/32), or (B, N, ...) for 5D input."""
        self.check_outputs([len(self.stages) - 1], "forward_features")
        images, num_views = self._fold(x)
        final, _ = self._run_stages(images, num_views, [], len(self.stages) - 1)
        return final


def _check_architecture(
    embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_sizes: Sequence[int]
) -> int:
    """Raise `ValueError` naming the argument unless the stages fit together; the stage count."""
    check_int("embed_dim", embed_dim)
    check_ints("depths", depths)
    check_ints("num_heads", num_heads)
    check_ints("window_sizes", window_sizes)
    if not 1 <= len(depths) == len(num_heads) == len(window_sizes):
        raise ValueError(
            f"depths {list(depths)}, num_heads {list(num_heads)} and window_sizes "
            f"{list(window_sizes)} must have one entry per stage (at least one stage)"
        )
    for i, heads in enumerate(num_heads):
        if (embed_dim * 2**i) % heads:
            raise ValueError(
                f"stage {i} is embed_dim * 2**{i} = {embed_dim * 2**i} wide, which num_heads[{i}] "
                f"= {heads} does not divide: pick embed_dim or num_heads so that it does"
            )
    return len(depths)


def _cva_positions(depth: int, every: int | None) -> list[int]:
    """Block indices followed by a CVA block: every `every` blocks, or after the last one."""
    every = every or depth
    return list(range(every - 1, depth, every))
