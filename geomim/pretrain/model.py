"""The GeoMIM pretrainer: masked camera branch, Lift-Splat to BEV, frozen LiDAR teacher, losses."""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
from torch import Tensor, nn

from geomim.data.batch import MultiViewBatch
from geomim.models import masked_encoder_kwargs
from geomim.pretrain.camera_branch import CameraBranch
from geomim.pretrain.decoder import DecoderConfig
from geomim.pretrain.losses import (
    depth_loss,
    depth_target,
    normalize_patches,
    reconstruction_loss,
)
from geomim.pretrain.masking import MASK_DRAWS, draw_group_masks
from geomim.pretrain.teacher import Teacher, TeacherMeta
from geomim.pretrain.view_transform import DepthLSS, ViewTransformConfig, ViewTransformOutput


@dataclass(frozen=True)
class PretrainConfig:
    """Defaults are the official recipe (Swin-B, 6 cameras, 256 x 704, 18-cell teacher patches)."""

    encoder: str = "geomim_base"  # any GeoMIM Swin or CVA-ViT name (geomim_vit_base, ...)
    encoder_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    num_views: int = 6
    mask_ratio: float = 0.5
    mask_draw: str = "batch"  # official: one draw per batch; or "sample", "image"
    teacher_patch: int = 18
    depth_loss_weight: float = 0.01
    # Recompute encoder activations in backward: base fp32 peaks at 9.6 GiB instead of 15.9 GiB
    # per 6-camera sample (benchmarks/pretrain_step.py), at about the same step time on CPU.
    grad_checkpointing: bool = True
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    view_transform: ViewTransformConfig = field(default_factory=ViewTransformConfig)

    def __post_init__(self) -> None:
        if self.mask_draw not in MASK_DRAWS:
            raise ValueError(f"mask_draw must be one of {MASK_DRAWS}, got {self.mask_draw!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.view_transform.num_views != self.num_views:
            raise ValueError(
                f"view_transform.num_views {self.view_transform.num_views} must equal "
                f"num_views {self.num_views}"
            )
        if self.view_transform.in_channels != self.decoder.width:
            raise ValueError(
                f"view_transform.in_channels {self.view_transform.in_channels} must equal "
                f"the decoder width {self.decoder.width}"
            )


@dataclass(frozen=True)
class PretrainOutput:
    losses: dict[str, Tensor]  # "reconstruction", "depth", "total"
    predictions: list[ViewTransformOutput]  # one per mask group
    teacher: Tensor  # (B, C, X, Y) the normalised teacher map
    group_masks: Tensor  # (2, H/32, W/32) or (2, B*N, H/32, W/32), 1 = hidden in that group


class GeoMIMPretrainer(nn.Module):
    """Every piece of the method between a `MultiViewBatch` and its losses.

    `teacher` maps the batch's LiDAR points (a list of (P, 5) tensors) to a (B, C, X, Y) BEV map
    the size of the view transform's output (a `Teacher`; wrap any module with `ModuleTeacher`).
    """

    def __init__(self, config: PretrainConfig, teacher: Teacher) -> None:
        super().__init__()
        self.config = config
        encoder = timm.create_model(
            config.encoder,
            **{
                "num_views": config.num_views,
                **masked_encoder_kwargs(config.encoder),
                **config.encoder_kwargs,
            },
        )
        encoder.set_grad_checkpointing(config.grad_checkpointing)
        self.camera_branch = CameraBranch(encoder, config.num_views, config.decoder)
        self.view_transform = DepthLSS(config.view_transform)
        if not isinstance(teacher, Teacher):
            raise TypeError(
                f"teacher must be a geomim Teacher, got {type(teacher).__name__}: wrap a plain "
                "module as ModuleTeacher(module)"
            )
        self.teacher = teacher.eval().requires_grad_(False)  # frozen, eval whatever the mode

    def forward(self, batch: MultiViewBatch, group_masks: Tensor | None = None) -> PretrainOutput:
        """Losses of one batch; masks are drawn as `config.mask_draw` says unless given."""
        images = batch.images  # (B, N, 3, H, W)
        if group_masks is None:
            group_masks = draw_group_masks(images, self.config.mask_ratio, self.config.mask_draw)
        cameras = batch.cameras
        semantic, geometry = self.camera_branch(
            images, cameras.intrinsics, cameras.image_aug, cameras.camera_to_ego, group_masks
        )  # each (2*B*N, D, h, w), group-major
        semantic = semantic.unflatten(0, (2, *images.shape[:2]))  # (2, B, N, D, h, w)
        geometry = geometry.unflatten(0, (2, *images.shape[:2]))
        predictions = [
            self.view_transform(semantic[g], geometry[g], cameras, batch.lidar_aug) for g in (0, 1)
        ]
        with torch.no_grad():
            meta = TeacherMeta(batch.tokens, batch.lidar_aug)
            teacher = normalize_patches(self.teacher(batch.points, meta), self.config.teacher_patch)
        target = depth_target(
            batch.depth_maps.flatten(0, 1),
            self.config.view_transform.stride,
            self.config.view_transform.dbound,
        )
        try:
            reconstruction = sum(reconstruction_loss(p.prediction, teacher) for p in predictions)
            depth = sum(
                depth_loss(p.depth, target, self.config.depth_loss_weight) for p in predictions
            )
        except FloatingPointError as error:
            raise FloatingPointError(f"{error} on samples {batch.tokens}") from error
        losses = {"reconstruction": reconstruction / 2, "depth": depth / 2}
        losses["total"] = losses["reconstruction"] + losses["depth"]
        return PretrainOutput(losses, predictions, teacher, group_masks)
