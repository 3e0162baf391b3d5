"""Building blocks shared by the backbones, the pretraining decoder and the adapters."""

from geomim.layers.cross_view import CrossViewAttention
from geomim.layers.mlp import ChunkedMlp
from geomim.layers.patch import PatchEmbed, PatchMerging, add_position_embedding
from geomim.layers.swin_block import SwinBlock
from geomim.layers.views import fold_views, unfold_views
from geomim.layers.window_attention import WindowAttention, relative_position_index
from geomim.layers.windows import (
    check_group_masks,
    group_window_mask,
    pad_to_multiple,
    window_merge,
    window_partition,
)

__all__ = [
    "ChunkedMlp",
    "CrossViewAttention",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "WindowAttention",
    "add_position_embedding",
    "check_group_masks",
    "fold_views",
    "group_window_mask",
    "pad_to_multiple",
    "relative_position_index",
    "unfold_views",
    "window_merge",
    "window_partition",
]
