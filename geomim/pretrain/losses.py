"""GeoMIM's pretraining losses: LiDAR depth supervision and BEV feature reconstruction.

depth maps (B*N, H, W) ──min per stride block, binned──> one-hot target (B*N*h*w, bins)
depth probabilities (B*N, bins, h, w) vs target ──BCE over foreground cells──> depth loss
teacher BEV (B, C, X, Y) ──normalised per patch──> target ──MSE with the prediction──> loss

A loss that is not finite raises `FloatingPointError` naming it (the official code zeroes a NaN
reconstruction loss and prints a message; silently training on from there hides the fault).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# an empty pixel counts as this far away, so a block's minimum is its nearest LiDAR point
_NO_DEPTH = 1e5


def depth_target(depth_maps: Tensor, stride: int, dbound: tuple[float, float, float]) -> Tensor:
    """(B*N, H, W) sparse depth maps (0 = no point) -> (B*N*h*w, bins) one-hot depth bins.

    Each stride x stride block takes its nearest depth, then the bin (d - (d_min - step)) / step
    truncated; bins 1..bins are kept (column bin - 1), anything else is an all-zero row. The range
    check comes after the minimum: a block whose nearest point is closer than d_min is dropped
    even if it also holds points in range (as the official does).
    """
    if depth_maps.ndim != 3:
        raise ValueError(f"expected depth maps (B*N, H, W), got {tuple(depth_maps.shape)}")
    images, height, width = depth_maps.shape
    if height % stride or width % stride:
        raise ValueError(f"depth map size {(height, width)} must be a multiple of stride {stride}")
    start, stop, step = dbound
    bins = len(torch.arange(start, stop, step, dtype=torch.float32))
    blocks = depth_maps.view(images, height // stride, stride, width // stride, stride)
    nearest = torch.where(blocks == 0, _NO_DEPTH, blocks).amin(dim=(2, 4))  # (B*N, h, w)
    index = (nearest - (start - step)) / step
    index = torch.where((index >= 0) & (index < bins + 1), index, 0).long()
    return F.one_hot(index.view(-1), bins + 1)[:, 1:].to(depth_maps.dtype)


def depth_loss(probabilities: Tensor, target: Tensor, weight: float = 0.01) -> Tensor:
    """Binary cross-entropy of (B*N, bins, h, w) depth probabilities against the one-hot target,
    summed over bins and foreground cells, / max(1, foreground cells), x weight."""
    bins = probabilities.shape[1]
    probabilities = probabilities.permute(0, 2, 3, 1).reshape(-1, bins)  # rows (image, row, col)
    if target.shape != probabilities.shape:
        raise ValueError(
            f"expected a depth target {tuple(probabilities.shape)}, got {tuple(target.shape)}"
        )
    if not torch.isfinite(probabilities).all():  # BCE would raise (CPU) or assert (CUDA) on NaN
        raise FloatingPointError(
            "depth loss is not finite: the depth probabilities hold NaN or inf"
        )
    foreground = target.amax(dim=1) > 0
    with torch.autocast(probabilities.device.type, enabled=False):  # BCE refuses autocast
        loss = F.binary_cross_entropy(
            probabilities[foreground].float(), target[foreground].float(), reduction="sum"
        )
    loss = weight * loss / foreground.sum().clamp(min=1)
    return _finite(loss, "depth loss")


def normalize_patches(teacher: Tensor, patch: int, eps: float = 1e-6) -> Tensor:
    """(B, C, X, Y) teacher map with every patch x patch block normalised over its C x patch x
    patch values: (x - mean) / sqrt(var + eps), var unbiased (as torch.var's default)."""
    batch, channels, size_x, size_y = teacher.shape
    if size_x % patch or size_y % patch:
        raise ValueError(f"teacher map {(size_x, size_y)} is not a whole number of {patch}-patches")
    grid_x, grid_y = size_x // patch, size_y // patch
    patches = teacher.reshape(batch, channels, grid_x, patch, grid_y, patch)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_x, grid_y, -1)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    patches = (patches - mean) / (var + eps) ** 0.5
    patches = patches.view(batch, grid_x, grid_y, channels, patch, patch)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, size_x, size_y)


def reconstruction_loss(prediction: Tensor, normalized_teacher: Tensor) -> Tensor:
    """Mean squared error of the (B, C, X, Y) prediction against the normalised teacher map."""
    if prediction.shape != normalized_teacher.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and teacher "
            f"{tuple(normalized_teacher.shape)} must have the same shape"
        )
    loss = F.mse_loss(prediction.float(), normalized_teacher.float())
    return _finite(loss, "reconstruction loss")


def _finite(loss: Tensor, name: str) -> Tensor:
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"{name} is not finite ({loss.item()})")
    return loss
