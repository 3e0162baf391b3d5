"""Window attention with a relative position bias and a complementary-group mask, one dispatch
function (`window_attention`) in front of five backends:

- "reference": the official formulation: scaled q times k^T, the bias gathered from its table
  and the mask added as full tensors, softmax, times v, then the layout copies back.
- "chunked" (CPU default): the explicit computation a few windows at a time in a cache-sized
  buffer, the mask added there, with a backward that recomputes the probabilities
  (`chunked_attention`): on CPUs it beats both the official formulation and SDPA.
- "sdpa" (CUDA default): `F.scaled_dot_product_attention` reading q, k, v as strided views of the
  qkv projection, the (heads, L, L) bias plus mask passed as a stride-0 expanded 4D mask:
  PyTorch's CPU flash kernel takes only a 4D mask (with a 3D one SDPA falls back to the unfused
  math path); on CUDA the same call reaches the memory-efficient kernel.
- "flex": FlexAttention, compiled, the bias and the group mask as a score modification that
  reads the table and the token groups (nothing (L, L)-sized is materialised per window), on
  CUDA the groups also as a block mask. On the CPU it is forward-only (no CPU backward).
- "triton" (opt-in until measured on a GPU): the fused kernel of `triton_window_attention`
  (bias table and token groups read inside the kernel; forward and backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from geomim.kernels.chunked_attention import chunked_attention_with_bias
from geomim.kernels.dispatch import backend_failures, choose_backend

NEVER = (
    -1e30
)  # additive logit of a pair that may not attend (finite: a fully masked row is uniform)


@dataclass(frozen=True)
class WindowMask:
    """Which tokens of each window may attend to which, in the two forms the backends read."""

    groups: Tensor  # (G, L) int8: the group each token is visible in, -1 for none (padding)
    additive: Tensor  # (G, L, L) float: 0 where both tokens share a group, NEVER elsewhere


def window_mask_from_groups(groups: Tensor) -> WindowMask:
    """The mask of (G, L) token groups (0 or 1; -1 visible in neither group)."""
    same = (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
    additive = torch.zeros(same.shape, device=groups.device).masked_fill(~same, NEVER)
    return WindowMask(groups.to(torch.int8), additive)


def relative_bias(table: Tensor, index: Tensor) -> Tensor:
    """(heads, L, L) bias: head h, query i, key j reads table[index[i, j], h]."""
    tokens = index.shape[0]
    return table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)


def window_attention(
    qkv: Tensor,
    table: Tensor,
    index: Tensor,
    mask: WindowMask | None = None,
    backend: str | None = None,
) -> Tensor:
    """softmax(q k^T d^-0.5 + table[index] + mask) v for B windows of L tokens.

    qkv (B, L, 3, H, D) (the qkv projection, viewed), table (R, H), index (L, L) int64, mask for
    G windows with B % G == 0 (window index fastest) -> (B, L, H * D).
    """
    batch, tokens, three, heads, _ = qkv.shape
    if three != 3 or index.shape != (tokens, tokens) or table.shape[1] != heads:
        raise ValueError(
            f"expected qkv (B, L, 3, H, D), index (L, L), table (R, H); got qkv "
            f"{tuple(qkv.shape)}, index {tuple(index.shape)}, table {tuple(table.shape)}"
        )
    if mask is not None and (batch % mask.groups.shape[0] or mask.groups.shape[1] != tokens):
        raise ValueError(
            f"a mask for {tuple(mask.groups.shape)} (windows, tokens) does not fit {batch} "
            f"windows of {tokens} tokens"
        )
    name = choose_backend("window_attention", qkv.device, backend)
    if (
        name == "flex"
        and qkv.device.type == "cpu"
        and torch.is_grad_enabled()
        and qkv.requires_grad
    ):
        raise NotImplementedError(
            "window_attention backend 'flex' has no backward on the CPU (FlexAttention's "
            "limit): use 'chunked' or 'sdpa' for training there"
        )
    with backend_failures("window_attention", name, qkv.device):
        return _run_backend(name, qkv, table, index, mask)


def _run_backend(
    name: str, qkv: Tensor, table: Tensor, index: Tensor, mask: WindowMask | None
) -> Tensor:
    if name == "reference":
        return _official(qkv, table, index, mask)
    if name == "chunked":
        additive = None if mask is None else _in_dtype(mask.additive, qkv.dtype)
        return chunked_attention_with_bias(qkv, relative_bias(table, index).to(qkv.dtype), additive)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D), strided views
    if name == "triton":
        from geomim.kernels.triton_window_attention import triton_window_attention

        groups = None if mask is None else mask.groups
        return triton_window_attention(q, k, v, table, index, groups).transpose(1, 2).flatten(2)
    if name == "flex":
        return _flex(q, k, v, table, index, mask).transpose(1, 2).flatten(2)
    bias = relative_bias(table, index)
    if mask is not None:
        bias = bias + mask.additive[:, None]  # (G, H, L, L)
    return attention_with_bias(q, k, v, bias)


def attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """SDPA of (B, H, L, D) q, k, v with an additive bias, (H, L, L) shared by every problem or
    (G, H, L, L) one per window (window index fastest) -> (B, L, H * D).

    A shared bias is expanded with stride 0 (no copy); a per-window one is written out for the
    whole batch: on the CPU that is about twice as fast as folding windows into heads, which
    makes SDPA copy q, k and v into a layout its flash kernel handles worse.
    """
    batch, heads, tokens, _ = q.shape
    bias = _in_dtype(bias, q.dtype)
    if bias.ndim == 4:
        windows = bias.shape[0]
        mask = bias.expand(batch // windows, *bias.shape).reshape(batch, heads, tokens, tokens)
    else:
        mask = bias.expand(batch, *bias.shape)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attended.transpose(1, 2).flatten(2)


def reference_attention_with_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """The explicit computation: scale q, matmul, add the bias, softmax, matmul -> (B, L, H*D)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    bias = _in_dtype(bias, q.dtype)
    logits = (logits.view(-1, *bias.shape) + bias).view_as(logits)
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


def _official(qkv: Tensor, table: Tensor, index: Tensor, mask: WindowMask | None) -> Tensor:
    """The official Swin computation, copies included (the baseline the benchmarks compare to)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    bias = relative_bias(table, index).contiguous()
    if mask is not None:
        bias = bias + mask.additive[:, None]
    return reference_attention_with_bias(q, k, v, bias)


def _flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    index: Tensor,
    mask: WindowMask | None,
    block_sparse: bool | None = None,
) -> Tensor:
    """FlexAttention with the bias table and token groups read by the score modification; the
    groups also as a block mask (on CUDA by default), so blocks nobody attends to are skipped."""
    table = table.to(q.dtype)
    block_mask = None
    if mask is None:

        def score_mod(score, b, h, query, key):
            return score + table[index[query, key], h]

    else:
        groups, windows = mask.groups.int(), mask.groups.shape[0]

        def score_mod(score, b, h, query, key):
            window = b % windows
            same = groups[window, query] == groups[window, key]
            allowed = same & (groups[window, query] >= 0)
            return torch.where(allowed, score + table[index[query, key], h], NEVER)

        if q.is_cuda if block_sparse is None else block_sparse:
            block_mask = _group_block_mask(groups, q.shape[0], q.shape[2])

    # one compilation per shape and mask layout: a model has more of them than dynamo's default
    # recompile limit (8), past which it would silently run flex_attention unfused
    with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
        return _compiled_flex_attention()(q, k, v, score_mod=score_mod, block_mask=block_mask)


def _group_block_mask(groups: Tensor, batch: int, tokens: int):
    """The block mask of (G, L) token groups for `batch` windows (window b reads groups[b % G]):
    a query sees the keys of its group; a query in no group keeps every key (the score
    modification makes its row uniform, as in the other backends)."""
    from torch.nn.attention.flex_attention import create_block_mask

    windows = groups.shape[0]

    def mask_mod(b, h, query, key):
        window = b % windows
        return (groups[window, query] == groups[window, key]) | (groups[window, query] < 0)

    return create_block_mask(mask_mod, batch, None, tokens, tokens, device=groups.device)


FLEX_RECOMPILE_LIMIT = 64


@cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _in_dtype(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """The bias in the attention's dtype, with "never attend" (-1e30) kept finite in fp16."""
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)
