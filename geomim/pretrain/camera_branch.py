"""The pretraining camera branch: the encoder on complementary masks, then the decoder.

The encoder is any backbone with `forward_masked(images, group_masks) -> [c4, c5]` (stride-16 and
stride-32 maps of both groups' tokens) and `masked_feature_info()`: GeoMIM Swin (window attention
restricted to each group) or CVA-ViT (each group's visible tokens only, MAE-style).
"""

from __future__ import annotations

from torch import Tensor, nn

from geomim.models.cva_vit import GeoMIMViT
from geomim.models.swin import GeoMIMSwin
from geomim.pretrain.camera import camera_vector
from geomim.pretrain.decoder import DecoderConfig, GeoMIMDecoder


class CameraBranch(nn.Module):
    """Masked multi-view encoder + two-branch decoder (with Swin: the official
    `SwinTransformerBEV`)."""

    def __init__(
        self,
        encoder: GeoMIMSwin | GeoMIMViT,
        num_views: int = 6,
        decoder: DecoderConfig | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(encoder, "forward_masked"):
            raise TypeError(
                f"{type(encoder).__name__} has no masked mode: use a GeoMIM Swin or CVA-ViT encoder"
            )
        self.num_views = num_views
        self.encoder = encoder
        info = encoder.masked_feature_info()
        c4_dim, c5_dim = info["channels"]
        self.decoder = GeoMIMDecoder(
            encoder_dim=c4_dim,
            smooth_heads=info["num_heads"],
            num_views=num_views,
            config=decoder or DecoderConfig(),
            c5_dim=c5_dim,
        )

    def forward(
        self,
        images: Tensor,
        intrinsics: Tensor,
        image_aug: Tensor,
        camera_to_ego: Tensor,
        group_masks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """images (B, N, 3, H, W), matrices (B, N, 4, 4), masks (2, H/32, W/32) or (2, B*N, H/32,
        W/32) (1 = hidden) -> semantic and geometry maps, each (2*B*N, D, H/16, W/16): rows
        [0, B*N) group 0."""
        if images.ndim != 5 or images.shape[1] != self.num_views:
            raise ValueError(
                f"expected images (B, {self.num_views}, 3, H, W), got {tuple(images.shape)}"
            )
        c4, c5 = self.encoder.forward_masked(images.flatten(0, 1), group_masks)
        vectors = camera_vector(intrinsics, image_aug, camera_to_ego).flatten(0, 1)
        return self.decoder(c4, c5, group_masks, vectors)
