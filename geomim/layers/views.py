"""The multi-view image layout: (B, N, C, H, W) at the API edge, (B * N, C, H, W) inside models."""

from __future__ import annotations

from torch import Tensor


def fold_views(images: Tensor, in_chans: int) -> tuple[Tensor, int | None]:
    """Check an image batch and flatten a view axis: returns (B * N, C, H, W) and N (None if 4D)."""
    if images.ndim not in (4, 5):
        raise ValueError(
            "expected images shaped (B*N, C, H, W) or (B, N, C, H, W), "
            f"got a {images.ndim}D tensor of shape {tuple(images.shape)}"
        )
    if images.shape[-3] != in_chans:
        raise ValueError(
            f"expected {in_chans} image channels at dim -3, got shape {tuple(images.shape)}"
        )
    if images.ndim == 4:
        return images, None
    return images.flatten(0, 1), images.shape[1]


def unfold_views(x: Tensor, num_views: int | None) -> Tensor:
    """Restore the view axis removed by `fold_views`: (B * N, ...) -> (B, N, ...)."""
    if num_views is None:
        return x
    return x.view(-1, num_views, *x.shape[1:])
