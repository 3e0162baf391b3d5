"""What every GeoMIM backbone shares: the timm classifier-head API over multi-view features,
and loading weight files through the family's checkpoint filter."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from geomim.checkpoints import load_checkpoint_into
from geomim.layers import unfold_views


class MultiViewBackbone(nn.Module):
    """Subclasses set `head` (a timm ClassifierHead), `num_classes`, `forward_features` and
    `checkpoint_filter` (a staticmethod mapping a state dict and the model to fitted weights)."""

    head: nn.Module
    num_classes: int
    checkpoint_filter: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
    forward_features: Callable[[Tensor], Tensor]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled features or logits of (B*N, C, H, W) maps, or (B, N, ...) for 5D maps."""
        if x.ndim == 5:
            return unfold_views(self.head(x.flatten(0, 1), pre_logits=pre_logits), x.shape[1])
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a weight file (converted by the family's filter); timm calls this."""
        load_checkpoint_into(self, checkpoint_path, type(self).checkpoint_filter)
