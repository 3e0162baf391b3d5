"""Token-map padding and window partitioning for (B, H, W, C) channels-last maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from geomim.kernels.window_attention import WindowMask, window_mask_from_groups


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom/right so H and W are multiples of `multiple`."""
    _, height, width, _ = x.shape
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) map, sides multiples of `window` -> (B * num_windows, window**2, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_bands(
    images: int, height: int, window: int, max_rows: int
) -> list[tuple[int, int, int]]:
    """Groups of whole bands of `window` rows over the (images * height) rows of a map:
    (first row, stop row, band height) each, about `max_rows` rows (at least one band) per
    group. A band never crosses images; an image's last band is shorter where `height` is not a
    multiple of `window`, and is then a group of its own."""
    full, partial = divmod(height, window)
    per_group = max(1, max_rows // window)
    if partial == 0:  # the images' bands follow each other with no gap
        return _balanced(0, images * full, per_group, window)
    groups = []
    for image in range(images):
        first = image * height
        groups += _balanced(first, full, per_group, window)
        groups.append((first + full * window, first + height, partial))
    return groups


def _balanced(first: int, bands: int, per_group: int, window: int) -> list[tuple[int, int, int]]:
    """`bands` bands of `window` rows from row `first`, split into equal groups of at most
    `per_group`."""
    if bands == 0:
        return []
    size = -(-bands // -(-bands // per_group))
    return [
        (first + start * window, first + min(bands, start + size) * window, window)
        for start in range(0, bands, size)
    ]


def window_merge(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: (B * num_windows, window**2, C) -> (B, height, width, C)."""
    channels = windows.shape[-1]
    rows, cols = height // window, width // window
    x = windows.view(-1, rows, cols, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def group_window_mask(masks: Tensor, size: tuple[int, int], window: int) -> WindowMask:
    """The attention mask of a (H, W) token map in windows of `window`: for masks (2, h, w)
    shared by every image, G = nW windows; for masks (2, I, h, w), one pair per image, G = I * nW
    (window index fastest, as `window_partition` orders a batch).

    The stride-32 masks are nearest-resized to the unpadded map, the padding is hidden in both
    groups, and token p may attend to token q only if both are visible in one group.
    """
    per_image = masks if masks.ndim == 4 else masks[:, None]  # (2, I, h, w)
    hidden = F.interpolate(per_image.transpose(0, 1).float(), size=size, mode="nearest")
    visible = pad_to_multiple((1 - hidden).permute(0, 2, 3, 1), window)  # (I, Hp, Wp, 2), pad 0
    visible = window_partition(visible, window)  # (I * nW, L, 2)
    groups = torch.where(visible[..., 1] > 0, 1, 0).masked_fill(visible.sum(-1) == 0, -1)
    return window_mask_from_groups(groups)


def check_group_masks(masks: Tensor, images: int, image_size: tuple[int, int]) -> None:
    """Raise unless `masks` is (2, h, w) or (2, images, h, w) on the stride-32 grid of images of
    `image_size` (H, W)."""
    grid = (-(-image_size[0] // 32), -(-image_size[1] // 32))
    shapes = [(2, *grid), (2, images, *grid)]
    if tuple(masks.shape) not in shapes:
        raise ValueError(
            f"expected group masks of shape {shapes[0]} (one pair per batch) or {shapes[1]} "
            f"(one pair per image) for {images} images of {image_size[0]}x{image_size[1]}, "
            f"got {tuple(masks.shape)}"
        )
    if not ((masks == 0) | (masks == 1)).all():
        raise ValueError(
            "group masks must be binary (1 = hidden in that group, 0 = visible), got values "
            f"{masks.unique()[:6].tolist()}"
        )
    if not torch.equal(masks.sum(0), torch.ones_like(masks[0])):
        raise ValueError(
            "group masks must be complementary: every cell hidden (1) in exactly one group"
        )
