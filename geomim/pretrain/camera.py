"""Camera-aware modulation of the geometry branch (as BEVDepth's camera-aware depth net)."""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from geomim.data.batch import check_camera_shapes

CAMERA_VECTOR_SIZE = 22


def camera_vector(intrinsics: Tensor, image_aug: Tensor, camera_to_ego: Tensor) -> Tensor:
    """(..., 4, 4) matrices -> (..., 22): fx, fy, cx, cy; the image augmentation's A00, A01, a0,
    A10, A11, a1 (2x2 part and translation); camera-to-ego [R | t] row by row. The three must
    hold one matrix per camera each (a ValueError names the one that does not)."""
    check_camera_shapes(
        {"intrinsics": intrinsics, "image_aug": image_aug, "camera_to_ego": camera_to_ego}
    )
    focal_and_centre = intrinsics[..., [0, 1, 0, 1], [0, 1, 2, 2]]
    augmentation = image_aug[..., [0, 0, 0, 1, 1, 1], [0, 1, 3, 0, 1, 3]]
    pose = camera_to_ego[..., :3, :4].flatten(-2)
    return torch.cat([focal_and_centre, augmentation, pose], dim=-1)


class CameraModulation(nn.Module):
    """Tokens of each camera gated by its camera vector: BatchNorm1d(22), MLP 22 -> D -> D, and a
    squeeze-excitation gate x * sigmoid(expand(ReLU(reduce(embedding))))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(CAMERA_VECTOR_SIZE)
        self.mlp = Mlp(CAMERA_VECTOR_SIZE, dim, dim, act_layer=nn.GELU)
        self.gate_reduce = nn.Linear(dim, dim)
        self.gate_expand = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor, vectors: Tensor) -> Tensor:
        """(images, L, D) tokens, (images, 22) camera vectors -> modulated tokens."""
        embedding = self.mlp(self.norm(vectors))  # (images, D)
        gate = self.gate_expand(self.gate_reduce(embedding).relu()).sigmoid()
        return tokens * gate[:, None, :]
