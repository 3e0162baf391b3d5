"""The pretraining camera branch: the Swin encoder on complementary masks, then the decoder."""

from __future__ import annotations

from torch import Tensor, nn

from geomim.models.swin import GeoMIMSwin
from geomim.pretrain.camera import camera_vector
from geomim.pretrain.decoder import DecoderConfig, GeoMIMDecoder


class CameraBranch(nn.Module):
    """Masked multi-view encoder + two-branch decoder (the official `SwinTransformerBEV`)."""

    def __init__(
        self, encoder: GeoMIMSwin, num_views: int = 6, decoder: DecoderConfig | None = None
    ) -> None:
        super().__init__()
        self.num_views = num_views
        self.encoder = encoder
        stage = encoder.stages[2]
        self.decoder = GeoMIMDecoder(
            encoder_dim=encoder.feature_info[2]["num_chs"],
            smooth_heads=stage.blocks[0].attn.num_heads,
            num_views=num_views,
            config=decoder or DecoderConfig(),
        )

    def forward(
        self,
        images: Tensor,
        intrinsics: Tensor,
        image_aug: Tensor,
        camera_to_ego: Tensor,
        group_masks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """images (B, N, 3, H, W), matrices (B, N, 4, 4), masks (2, H/32, W/32) (1 = hidden) ->
        semantic and geometry maps, each (2*B*N, D, H/16, W/16): rows [0, B*N) group 0."""
        if images.ndim != 5 or images.shape[1] != self.num_views:
            raise ValueError(
                f"expected images (B, {self.num_views}, 3, H, W), got {tuple(images.shape)}"
            )
        c4, c5 = self.encoder.forward_masked(images.flatten(0, 1), group_masks)
        vectors = camera_vector(intrinsics, image_aug, camera_to_ego).flatten(0, 1)
        return self.decoder(c4, c5, group_masks, vectors)
