"""softmax(q k^T * d^-0.5 + bias) v for many small attention problems (Swin windows).

The fast path is `F.scaled_dot_product_attention` with the bias expanded (a stride-0 view) to a
full 4D mask: PyTorch's CPU flash kernel takes only a 4D mask, and with a (heads, L, L) one SDPA
falls back to the unfused math path, no faster than the explicit product. On CUDA the same call
reaches the memory-efficient kernel.

The bias is either shared by every problem, (heads, L, L), or one per window, (W, heads, L, L),
for a batch laid out (images, W) with the window index fastest (as `window_partition` orders it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """(B, heads, L, d) q, k, v and an additive bias -> (B, L, heads * d)."""
    batch, heads, tokens, head_dim = q.shape
    bias = _in_dtype(bias, q.dtype)
    if bias.ndim == 4:  # per window: fold the windows into the head axis, then broadcast
        windows = bias.shape[0]
        q, k, v = (
            t.reshape(batch // windows, windows * heads, tokens, head_dim) for t in (q, k, v)
        )
        bias = bias.reshape(windows * heads, tokens, tokens)
    attended = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.expand(q.shape[0], *bias.shape)
    )
    return attended.view(batch, heads, tokens, head_dim).transpose(1, 2).flatten(2)


def reference_attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """The official computation: scale q, matmul, add the bias, softmax, matmul."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    bias = _in_dtype(bias, q.dtype)
    logits = (logits.view(-1, *bias.shape) + bias).view_as(logits)
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


def _in_dtype(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """The bias in the attention's dtype, with "never attend" (-1e30) kept finite in fp16."""
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)
