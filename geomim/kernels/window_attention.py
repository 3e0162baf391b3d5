"""Window attention with a relative position bias and a complementary-group mask, one dispatch
function (`window_attention`) in front of five backends:

- "reference": the official formulation: scaled q times k^T, the bias gathered from its table
  and the mask added as full tensors, softmax, times v, then the layout copies back.
- "chunked" (CPU default): the explicit computation a few windows at a time in a cache-sized
  buffer, the mask added there, with a backward that recomputes the probabilities
  (below): on CPUs it beats both the official formulation and SDPA.
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

from geomim.kernels.dispatch import backend_failures, choose_backend
from geomim.kernels.triton_window_attention import triton_window_attention

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
    gathered_bias: Tensor | None = None,
) -> Tensor:
    """softmax(q k^T d^-0.5 + table[index] + mask) v for B windows of L tokens.

    qkv (B, L, 3, H, D) (the qkv projection, viewed), table (R, H), index (L, L) int64, mask for
    G windows with B % G == 0 (window index fastest) -> (B, L, H * D). `gathered_bias`: the
    (H, L, L) `relative_bias(table, index)` where the caller has it already (one gather for many
    calls); the "chunked" and "sdpa" backends then use it instead of gathering again.
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
        return _run_backend(name, qkv, table, index, mask, gathered_bias)


def _run_backend(
    name: str,
    qkv: Tensor,
    table: Tensor,
    index: Tensor,
    mask: WindowMask | None,
    gathered_bias: Tensor | None,
) -> Tensor:
    if name == "reference":
        return reference_window_attention(qkv, table, index, mask)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D), strided views
    if name == "triton":
        groups = None if mask is None else mask.groups
        return triton_window_attention(q, k, v, table, index, groups).transpose(1, 2).flatten(2)
    if name == "flex":
        return _flex(q, k, v, table, index, mask).transpose(1, 2).flatten(2)
    bias = relative_bias(table, index) if gathered_bias is None else gathered_bias
    if name == "chunked":
        additive = None if mask is None else _in_dtype(mask.additive, qkv.dtype)
        return chunked_attention_with_bias(qkv, bias.to(qkv.dtype), additive)
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


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """The explicit computation: scale q, matmul, add the bias, softmax, matmul -> (B, L, H*D)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    bias = _in_dtype(bias, q.dtype)
    logits = (logits.view(-1, *bias.shape) + bias).view_as(logits)
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


def reference_window_attention(
    qkv: Tensor, table: Tensor, index: Tensor, mask: WindowMask | None = None
) -> Tensor:
    """The official Swin computation, copies included (the reference every backend is checked
    against, and the baseline of the benchmarks): qkv (B, L, 3, H, D) -> (B, L, H * D)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    bias = relative_bias(table, index).contiguous()
    if mask is not None:
        bias = bias + mask.additive[:, None]
    return _explicit_attention(q, k, v, bias)


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
        never = max(NEVER, torch.finfo(q.dtype).min)  # fp16's scores cannot hold -1e30

        def score_mod(score, b, h, query, key):
            window = b % windows
            same = groups[window, query] == groups[window, key]
            allowed = same & (groups[window, query] >= 0)
            return torch.where(allowed, score + table[index[query, key], h], never)

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


# ---- "chunked": biased attention a few windows at a time, every intermediate in cache --------
# The official formulation writes the (windows x heads x L x L) logits, bias sum and probabilities
# out to memory several times; at Swin's sizes on a CPU that traffic, not the matrix products, is
# most of the time. Here the same explicit computation (bias copied into a buffer, q k^T added
# onto it by one batched GEMM, softmax in place, times v) runs over chunks of windows whose logits
# fit in a cache-sized buffer, and the backward recomputes each chunk's probabilities instead of
# saving them (as flash attention does), so training keeps no (L x L) tensor per window either.

CHUNK_BYTES = 2 << 20  # logits per chunk: about one core's L2


def chunked_attention_with_bias(qkv: Tensor, bias: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T d^-0.5 + bias + mask) v for qkv (B, L, 3, H, D), bias (H, L, L) (may need
    grad) and an optional additive mask (G, L, L), window b reading mask[b % G] -> (B, L, H * D).
    """
    return _ChunkedAttention.apply(qkv, bias, mask).flatten(2)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
        with torch.autocast(qkv.device.type, enabled=False):  # in the dtype of q, k, v
            out = _chunked_forward(qkv, bias, mask)
        ctx.save_for_backward(qkv, bias, mask, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor | None, None]:
        qkv, bias, mask, out = ctx.saved_tensors
        with torch.autocast(qkv.device.type, enabled=False):
            grads = _chunked_backward(qkv, bias, mask, out, grad_out, ctx.needs_input_grad[1])
        return *grads, None


def _chunked_forward(qkv: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
    batch, tokens, _, heads, dim = qkv.shape
    out = qkv.new_empty(batch, tokens, heads, dim)
    for start, stop in _chunks(qkv, mask):
        q, k, v = _split(qkv[start:stop])
        probabilities = _probabilities(q, k, bias, _chunk_mask(mask, start, stop))
        attended = torch.bmm(probabilities, v).unflatten(0, (stop - start, heads))
        out[start:stop] = attended.transpose(1, 2)
    return out


def _chunked_backward(
    qkv: Tensor, bias: Tensor, mask: Tensor | None, out: Tensor, grad_out: Tensor, bias_grad: bool
) -> tuple[Tensor, Tensor | None]:
    scale = qkv.shape[-1] ** -0.5
    heads = qkv.shape[3]
    grad_qkv = torch.empty_like(qkv)
    grad_bias = torch.zeros_like(bias) if bias_grad else None
    for start, stop in _chunks(qkv, mask):
        q, k, v = _split(qkv[start:stop])
        probabilities = _probabilities(q, k, bias, _chunk_mask(mask, start, stop))
        grad = grad_out[start:stop].transpose(1, 2).flatten(0, 1)  # (n * H, L, D)
        # softmax backward: row sums of grad * out equal those of grad_logits * probabilities
        row = (grad_out[start:stop] * out[start:stop]).sum(dim=-1).transpose(1, 2).flatten(0, 1)
        grad_v = torch.bmm(probabilities.transpose(1, 2), grad)
        grad_logits = torch.bmm(grad, v.transpose(1, 2))
        grad_logits.sub_(row[..., None]).mul_(probabilities)
        if grad_bias is not None:
            grad_bias.add_(grad_logits.view(-1, *bias.shape).sum(dim=0))
        grad_q = torch.bmm(grad_logits, k).mul_(scale)
        grad_k = torch.bmm(grad_logits.transpose(1, 2), q).mul_(scale)
        for slot, value in enumerate((grad_q, grad_k, grad_v)):
            grad_qkv[start:stop, :, slot] = value.unflatten(0, (stop - start, heads)).transpose(
                1, 2
            )
    return grad_qkv, grad_bias


def _chunks(qkv: Tensor, mask: Tensor | None) -> list[tuple[int, int]]:
    """Window ranges with about CHUNK_BYTES of logits each, none across a multiple of the mask
    period G (so a chunk's masks are one slice)."""
    batch, tokens, _, heads, _ = qkv.shape
    size = max(1, CHUNK_BYTES // (heads * tokens * tokens * qkv.element_size()))
    period = batch if mask is None else mask.shape[0]
    return [
        (start, min(first + period, start + size))
        for first in range(0, batch, period)
        for start in range(first, first + period, size)
    ]


def _split(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of a chunk (n, L, 3, H, D) as (n * H, L, D) each (views for one window)."""
    return tuple(part.transpose(1, 2).flatten(0, 1) for part in qkv.unbind(2))


def _chunk_mask(mask: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The chunk's masks (n, 1, L, L), or None."""
    if mask is None:
        return None
    first = start % mask.shape[0]
    return mask[first : first + stop - start, None]


def _probabilities(q: Tensor, k: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T d^-0.5 + bias + mask) as (n * H, L, L), in one buffer."""
    count, tokens, dim = q.shape
    logits = q.new_empty(count, tokens, tokens)
    windows = logits.view(-1, *bias.shape)  # (n, H, L, L)
    windows.copy_(bias)
    if mask is not None:
        windows.add_(mask)
    logits.baddbmm_(q, k.transpose(1, 2), alpha=dim**-0.5)
    return torch.softmax(logits, dim=-1, out=logits)
