"""Row attention, the attention of Cross-View Attention, read straight from view-major tokens.

qkv comes as the projection of (B, N, H, W, C) camera maps, viewed (B, N, H, W, 3, heads, D). For
each sample b and image row h, the N*W tokens of that row in every view form one sequence, its
position p = n * W + w holding token [b, n, h, w]; softmax(q k^T D^-0.5) v runs within it. With
`key_visible` (B, N, H, W) bool, a hidden key is attended to by its own query only, so a hidden
query that sees nothing attends to itself. One dispatch function, `row_attention`, in front of:

- "reference": the official formulation: qkv copied into (B*H, heads, N*W, D) rows, q scaled
  times k^T, the mask added as -inf, softmax, times v, the output copied back to view-major.
- "sdpa" (the default): the same copies around `F.scaled_dot_product_attention` (q, k, v strided
  as timm's `Attention` passes them; a bool mask only where keys are hidden).
- "triton" (opt-in until measured on a GPU): flash attention (online softmax, the mask read
  from `key_visible`) that reads q, k, v and writes the output by strides in the view-major
  layout, and whose backward writes dq, dk, dv into one gradient of qkv's layout: no layout
  copy either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from geomim.kernels import _triton
from geomim.kernels.dispatch import backend_failures, choose_backend
from geomim.kernels.triton_row_attention import triton_row_attention


def row_attention(
    qkv: Tensor, key_visible: Tensor | None = None, backend: str | None = None
) -> Tensor:
    """Attention within each image row across the views: qkv (B, N, H, W, 3, heads, D), optional
    `key_visible` (B, N, H, W) bool -> (B, N, H, W, heads * D), view-major."""
    _check_inputs(qkv, key_visible)
    name = choose_backend("row_attention", qkv.device, backend)
    if name == "reference":
        return reference_row_attention(qkv, key_visible)
    if name == "triton":
        _triton.check_device(qkv)
    with backend_failures("row_attention", name, qkv.device):
        if name == "triton":
            return triton_row_attention(qkv, key_visible)
        q, k, v = _rows(qkv)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=_row_mask(key_visible))
        return _views_from_rows(attended, qkv.shape[0], qkv.shape[1])


def reference_row_attention(qkv: Tensor, key_visible: Tensor | None = None) -> Tensor:
    """The official computation (explicit matmul and softmax, layout copies) -> (B, N, H, W, C)."""
    q, k, v = _rows(qkv)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B*H, heads, N*W, N*W)
    mask = _row_mask(key_visible)
    if mask is not None:
        logits = logits + torch.zeros_like(mask, dtype=logits.dtype).masked_fill(~mask, -torch.inf)
    return _views_from_rows(logits.softmax(dim=-1) @ v, qkv.shape[0], qkv.shape[1])


def _rows(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, H, W, 3, heads, D) -> q, k, v (B*H, heads, N*W, D): one copy, then strided views."""
    batch, views, height, width, three, heads, head_dim = qkv.shape
    rows = qkv.transpose(1, 2).reshape(batch * height, views * width, three, heads, head_dim)
    return rows.permute(2, 0, 3, 1, 4).unbind(0)


def _views_from_rows(attended: Tensor, batch: int, views: int) -> Tensor:
    """(B*H, heads, N*W, D) -> (B, N, H, W, heads * D), copied into the view-major layout."""
    split = attended.unflatten(2, (views, -1)).unflatten(0, (batch, -1))  # (B, H, heads, N, W, D)
    return split.permute(0, 3, 1, 4, 2, 5).flatten(-2).contiguous()


def _row_mask(key_visible: Tensor | None) -> Tensor | None:
    """(B*H, 1, N*W, N*W) bool, True where a query may attend to a key (visible, or itself)."""
    if key_visible is None:
        return None
    batch, views, height, width = key_visible.shape
    keys = key_visible.transpose(1, 2).reshape(batch * height, views * width)
    itself = torch.eye(views * width, dtype=torch.bool, device=keys.device)
    return (keys[:, None, :] | itself)[:, None]


def _check_inputs(qkv: Tensor, key_visible: Tensor | None) -> None:
    if qkv.ndim != 7 or qkv.shape[4] != 3:
        raise ValueError(f"expected qkv (B, N, H, W, 3, heads, D), got shape {tuple(qkv.shape)}")
    if not qkv.dtype.is_floating_point:
        raise TypeError(f"expected a floating-point qkv, got {qkv.dtype}")
    if key_visible is None:
        return
    if key_visible.shape != qkv.shape[:4]:
        raise ValueError(
            f"expected key_visible of shape (B, N, H, W) = {tuple(qkv.shape[:4])}, "
            f"got {tuple(key_visible.shape)}"
        )
    if key_visible.dtype != torch.bool:
        raise TypeError(f"expected a bool key_visible, got {key_visible.dtype}")
    if key_visible.device != qkv.device:
        raise ValueError(f"expected key_visible on {qkv.device}, got {key_visible.device}")
