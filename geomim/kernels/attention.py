"""softmax(q k^T * d^-0.5 + bias) v for many small attention problems (Swin windows).

The fast path is `F.scaled_dot_product_attention` with the bias expanded (a stride-0 view) to the
full (B, heads, L, L) mask: PyTorch's CPU flash kernel takes only a 4D mask, and with a (heads,
L, L) one SDPA falls back to the unfused math path, no faster than the explicit product. On
CUDA the same call reaches the memory-efficient kernel.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """(B, heads, L, d) q, k, v and a (heads, L, L) additive bias -> (B, L, heads * d)."""
    mask = bias.to(q.dtype).expand(q.shape[0], *bias.shape)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attended.transpose(1, 2).flatten(2)


def reference_attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """The official computation: scale q, matmul, add the bias, softmax, matmul."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias.to(q.dtype)
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
