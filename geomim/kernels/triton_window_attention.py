"""Fused window attention in Triton: softmax(q k^T * d^-0.5 + bias + group mask) v and backward.

One problem per (window, head): q, k, v (B, heads, L, d) with L = window**2 tokens (any L, padded
to blocks and masked inside the kernels), a relative position bias shared by every window, and
optionally complementary token groups per window (masked pretraining): token i attends to token j
only if groups[i] == groups[j] >= 0. A disallowed pair's logit becomes -1e30 exactly as the
additive mask of `geomim.layers.group_window_mask` makes it in float32, so a row with nothing
allowed (padding) attends uniformly to all L tokens, as in the reference.

Neither the (B, heads, L, L) logits nor a per-window bias ever reach memory: the kernels stream
key blocks with an online softmax (flash attention), keep each row's max and sum for the
backward, and recompute the probabilities there. The bias gradient, the sum over windows of the
logits' gradient, is added atomically into a few (heads, L, L) float32 slots (windows spread over
them to thin out contention; float atomics make its last bits vary from run to run on GPU). Under
`torch.use_deterministic_algorithms(True)` every window gets its own slot, (B, heads, L, L) in
all, so that each element is added once and the sum over slots is reproducible.
Accumulation is float32 for every input dtype; float32 products are IEEE (no TF32).

Outputs and input gradients are (B, heads, L, d) views of (B, L, heads, d) memory, so the
caller's `.transpose(1, 2).flatten(2)` is free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from geomim.kernels import _triton
from geomim.kernels._triton import (  # jitted with the kernels
    attention_tiles,
    cdiv,
    online_softmax_step,
    sum_along,
    tile_dot,
)

if TYPE_CHECKING:  # the kernels get `tl` when jitted (geomim.kernels._triton)
    import triton.language as tl

_BIAS_GRAD_SLOTS = 8  # (heads, L, L) float32 partial sums of the bias gradient


def triton_window_attention(
    q: Tensor, k: Tensor, v: Tensor, table: Tensor, index: Tensor, groups: Tensor | None = None
) -> Tensor:
    """(B, heads, L, d) q, k, v, an (R, heads) bias table, (L, L) rows of it -> (B, heads, L, d)."""
    heads = q.shape[1]
    if table.ndim != 2 or table.shape[1] != heads:
        raise ValueError(f"expected a (R, {heads}) bias table, got {tuple(table.shape)}")
    tokens = q.shape[2]
    if index.shape != (tokens, tokens) or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"expected an integer ({tokens}, {tokens}) table index, got {index.dtype} "
            f"{tuple(index.shape)}"
        )
    bias = table[index].permute(2, 0, 1)  # (heads, L, L); autograd scatters its grad to the table
    return triton_attention_with_bias(q, k, v, bias, groups)


def triton_attention_with_bias(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, groups: Tensor | None = None
) -> Tensor:
    """(B, heads, L, d) q, k, v, a (heads, L, L) bias shared by all windows -> (B, heads, L, d).

    `groups` (G, L), B % G == 0: window b uses row b % G (window index fastest); values 0/1 are a
    token's group, -1 hides it from both.
    """
    _check_inputs(q, k, v, bias, groups)
    return _WindowAttention.apply(q, k, v, bias, groups)


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        out, row_max, row_sum = _forward(q, k, v, bias, groups)
        ctx.save_for_backward(q, k, v, bias, groups, out, row_max, row_sum)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, groups, out, row_max, row_sum = ctx.saved_tensors
        grads = _backward(
            q, k, v, bias, groups, out, row_max, row_sum, grad_out, ctx.needs_input_grad[3]
        )
        return (*grads, None)


def _forward(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, groups: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel: the output and each row's softmax max and sum (float32)."""
    kernels = _kernels()
    batch, heads, tokens, head_dim = q.shape
    q, k, v, bias = (_unit_stride(t) for t in (q, k, v, bias.contiguous()))
    out = _empty_output(q)
    row_max, row_sum = torch.empty(2, batch * heads, tokens, device=q.device).unbind(0)
    blocks = attention_tiles(tokens, head_dim, q.dtype)
    group_rows, num_groups = _group_rows(groups, bias)
    grid = (batch * heads, cdiv(tokens, blocks["BLOCK_M"]))
    with _triton.on_device(q):
        kernels._forward_kernel[grid](
            q, k, v, bias, group_rows, out, row_max, row_sum,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            heads, tokens, head_dim, num_groups, head_dim**-0.5,
            HAS_GROUPS=groups is not None, **blocks,
        )  # fmt: skip
    return out, row_max, row_sum


def _backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    groups: Tensor | None,
    out: Tensor,
    row_max: Tensor,
    row_sum: Tensor,
    grad_out: Tensor,
    bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward kernels: dq (with the bias gradient), then dk and dv."""
    kernels = _kernels()
    batch, heads, tokens, head_dim = q.shape
    q, k, v, bias, grad_out = (_unit_stride(t) for t in (q, k, v, bias.contiguous(), grad_out))
    grad_q, grad_k, grad_v = (_empty_output(t) for t in (q, k, v))
    delta = torch.empty(batch * heads, tokens, device=q.device)  # rowsum(dO * O), from kernel 1
    slots = _bias_grad_slots(batch) if bias_grad else 1
    grad_bias = torch.zeros(slots, heads, tokens, tokens, device=q.device)
    blocks = attention_tiles(tokens, head_dim, q.dtype)
    group_rows, num_groups = _group_rows(groups, bias)
    query_grid = (batch * heads, cdiv(tokens, blocks["BLOCK_M"]))
    key_grid = (batch * heads, cdiv(tokens, blocks["BLOCK_N"]))
    common = (heads, tokens, head_dim, num_groups, head_dim**-0.5)
    with _triton.on_device(q):
        kernels._backward_query_kernel[query_grid](
            q, k, v, bias, group_rows, out, grad_out, row_max, row_sum, delta, grad_q, grad_bias,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out),
            *common, slots,
            HAS_GROUPS=groups is not None, BIAS_GRAD=bias_grad, **blocks,
        )  # fmt: skip
        kernels._backward_key_kernel[key_grid](
            q, k, v, bias, group_rows, grad_out, row_max, row_sum, delta, grad_k, grad_v,
            *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(grad_k),
            *common,
            HAS_GROUPS=groups is not None, **blocks,
        )  # fmt: skip
    grad_bias = grad_bias.sum(0).to(bias.dtype) if bias_grad else None
    return grad_q, grad_k, grad_v, grad_bias


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, groups: Tensor | None) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"expected q, k, v of one shape (B, heads, L, d), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not q.dtype.is_floating_point or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"expected q, k, v of one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, tokens, _ = q.shape
    if bias.shape != (heads, tokens, tokens):
        raise ValueError(f"expected a ({heads}, {tokens}, {tokens}) bias, got {tuple(bias.shape)}")
    if groups is not None:
        if groups.ndim != 2 or groups.shape[1] != tokens or batch % groups.shape[0]:
            raise ValueError(
                f"expected groups (G, {tokens}) with {batch} windows a multiple of G, got "
                f"{tuple(groups.shape)}"
            )
        if groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise TypeError(f"expected integer groups (0, 1 or -1), got {groups.dtype}")
    for tensor in (q, k, v, bias) if groups is None else (q, k, v, bias, groups):
        if tensor.device != q.device:
            raise ValueError(f"expected all inputs on {q.device}, got one on {tensor.device}")
    _triton.check_device(q)


def _kernels():
    return _triton.jit(_load_rows, _load_groups, tile_dot, online_softmax_step, _scores, *_KERNELS)


def _bias_grad_slots(windows: int) -> int:
    """How many (heads, L, L) partial sums take the bias gradient (one per window: reproducible)."""
    if torch.are_deterministic_algorithms_enabled():
        return windows
    return min(windows, _BIAS_GRAD_SLOTS)


def _group_rows(groups: Tensor | None, placeholder: Tensor) -> tuple[Tensor, int]:
    if groups is None:
        return placeholder, 1
    return groups.to(torch.int32).contiguous(), groups.shape[0]


def _unit_stride(tensor: Tensor) -> Tensor:
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _empty_output(like: Tensor) -> Tensor:
    """An empty (B, heads, L, d) tensor laid out as (B, L, heads, d) in memory."""
    batch, heads, tokens, head_dim = like.shape
    return like.new_empty(batch, tokens, heads, head_dim).transpose(1, 2)


def _strides(tensor: Tensor) -> tuple[int, int, int]:
    """(B, heads, L) strides; the last one is 1."""
    return tensor.stride(0), tensor.stride(1), tensor.stride(2)


# ---- Triton (jitted on first use by geomim.kernels._triton) ---------------------------------


def _load_rows(ptr, stride_row, rows, tokens, head_dim, BLOCK_D: tl.constexpr):
    """Rows `rows` of a (L, d) matrix as a (rows, BLOCK_D) tile, zero past L and d."""
    dims = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < tokens) & (dims[None, :] < head_dim)
    return tl.load(ptr + rows[:, None] * stride_row + dims[None, :], mask=mask, other=0.0)


def _load_groups(groups_ptr, window, rows, tokens, HAS_GROUPS: tl.constexpr):
    """The window's token groups at `rows` (-1 past L), or 0 without groups."""
    if HAS_GROUPS:  # one return: compiled Triton wants one type from all of them
        groups = tl.load(groups_ptr + window * tokens + rows, mask=rows < tokens, other=-1)
    else:
        groups = 0
    return groups


def _scores(
    q,
    k,
    bias_ptr,
    row_groups,
    col_groups,
    rows,
    cols,
    tokens,
    scale,
    HAS_GROUPS: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """(rows, cols) float32 logits: q k^T * scale + bias, -1e30 across groups, -inf past L."""
    inside = (rows[:, None] < tokens) & (cols[None, :] < tokens)
    scores = tile_dot(q, tl.trans(k), PRECISION, UPCAST_DOT) * scale
    bias = tl.load(bias_ptr + rows[:, None] * tokens + cols[None, :], mask=inside, other=0.0)
    scores += bias.to(tl.float32)
    if HAS_GROUPS:
        same = (row_groups[:, None] == col_groups[None, :]) & (row_groups[:, None] >= 0)
        scores = tl.where(same, scores, -1e30)  # = s + bias - 1e30 in float32, as the reference
    return tl.where(cols[None, :] < tokens, scores, float("-inf"))


def _forward_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, groups_ptr, out_ptr, row_max_ptr, row_sum_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
    heads, tokens, head_dim, num_groups, scale,
    HAS_GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """One block of query rows of one (window, head): stream the keys with an online softmax."""
    problem = tl.program_id(0)
    window = (problem // heads).to(tl.int64)
    head = problem % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(q_ptr + window * stride_qb + head * stride_qh, stride_ql, rows, tokens,
                   head_dim, BLOCK_D)  # fmt: skip
    k_ptr += window * stride_kb + head * stride_kh
    v_ptr += window * stride_vb + head * stride_vh
    bias_ptr += head * tokens * tokens
    row_groups = _load_groups(groups_ptr, window % num_groups, rows, tokens, HAS_GROUPS)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.full((BLOCK_M,), 0.0, tl.float32)
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, stride_kl, cols, tokens, head_dim, BLOCK_D)
        v = _load_rows(v_ptr, stride_vl, cols, tokens, head_dim, BLOCK_D)
        col_groups = _load_groups(groups_ptr, window % num_groups, cols, tokens, HAS_GROUPS)
        scores = _scores(q, k, bias_ptr, row_groups, col_groups, rows, cols, tokens, scale,
                         HAS_GROUPS, PRECISION, UPCAST_DOT)  # fmt: skip
        row_max, row_sum, acc = online_softmax_step(
            scores, v, row_max, row_sum, acc, PRECISION, UPCAST_DOT
        )
    acc = acc / row_sum[:, None]
    dims = tl.arange(0, BLOCK_D)
    out_ptr += window * stride_ob + head * stride_oh + rows[:, None] * stride_ol + dims[None, :]
    inside = (rows[:, None] < tokens) & (dims[None, :] < head_dim)
    tl.store(out_ptr, acc.to(out_ptr.dtype.element_ty), mask=inside)
    # max and sum apart: max + log(sum) would lose the sum of a padding row (max -1e30)
    tl.store(row_max_ptr + problem * tokens + rows, row_max, mask=rows < tokens)
    tl.store(row_sum_ptr + problem * tokens + rows, row_sum, mask=rows < tokens)


def _backward_query_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, groups_ptr, out_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr,
    delta_ptr, grad_q_ptr, grad_bias_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
    stride_gb, stride_gh, stride_gl,
    heads, tokens, head_dim, num_groups, scale, slots,
    HAS_GROUPS: tl.constexpr, BIAS_GRAD: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dq and the bias gradient for one block of query rows; writes rowsum(dO * O) for dk, dv."""
    problem = tl.program_id(0)
    window = (problem // heads).to(tl.int64)
    head = problem % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < tokens
    q = _load_rows(q_ptr + window * stride_qb + head * stride_qh, stride_ql, rows, tokens,
                   head_dim, BLOCK_D)  # fmt: skip
    grad_out = _load_rows(grad_out_ptr + window * stride_gb + head * stride_gh, stride_gl, rows,
                          tokens, head_dim, BLOCK_D)  # fmt: skip
    out = _load_rows(out_ptr + window * stride_ob + head * stride_oh, stride_ol, rows, tokens,
                     head_dim, BLOCK_D)  # fmt: skip
    delta = sum_along(grad_out.to(tl.float32) * out.to(tl.float32), 1)
    tl.store(delta_ptr + problem * tokens + rows, delta, mask=row_ok)
    row_max = tl.load(row_max_ptr + problem * tokens + rows, mask=row_ok, other=0.0)
    row_sum = tl.load(row_sum_ptr + problem * tokens + rows, mask=row_ok, other=1.0)
    k_ptr += window * stride_kb + head * stride_kh
    v_ptr += window * stride_vb + head * stride_vh
    bias_ptr += head * tokens * tokens
    grad_bias_ptr += ((window % slots) * heads + head) * tokens * tokens
    row_groups = _load_groups(groups_ptr, window % num_groups, rows, tokens, HAS_GROUPS)
    grad_q = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, stride_kl, cols, tokens, head_dim, BLOCK_D)
        v = _load_rows(v_ptr, stride_vl, cols, tokens, head_dim, BLOCK_D)
        col_groups = _load_groups(groups_ptr, window % num_groups, cols, tokens, HAS_GROUPS)
        scores = _scores(q, k, bias_ptr, row_groups, col_groups, rows, cols, tokens, scale,
                         HAS_GROUPS, PRECISION, UPCAST_DOT)  # fmt: skip
        p = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
        p = tl.where(row_ok[:, None], p, 0.0)
        grad_p = tile_dot(grad_out, tl.trans(v), PRECISION, UPCAST_DOT)
        grad_scores = p * (grad_p - delta[:, None])  # also the bias gradient, mask or not
        grad_q += tile_dot(grad_scores.to(k.dtype), k, PRECISION, UPCAST_DOT)
        if BIAS_GRAD:
            inside = row_ok[:, None] & (cols[None, :] < tokens)
            offsets = rows[:, None] * tokens + cols[None, :]
            tl.atomic_add(grad_bias_ptr + offsets, grad_scores, mask=inside, sem="relaxed")
    dims = tl.arange(0, BLOCK_D)  # grad_q has the layout of out (both from _empty_output)
    grad_q_ptr += window * stride_ob + head * stride_oh + rows[:, None] * stride_ol + dims[None, :]
    inside = row_ok[:, None] & (dims[None, :] < head_dim)
    tl.store(grad_q_ptr, (grad_q * scale).to(grad_q_ptr.dtype.element_ty), mask=inside)


def _backward_key_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, groups_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr,
    delta_ptr, grad_k_ptr, grad_v_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl, stride_gb, stride_gh, stride_gl,
    stride_db, stride_dh, stride_dl,
    heads, tokens, head_dim, num_groups, scale,
    HAS_GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dk and dv for one block of keys of one (window, head): stream the query blocks."""
    problem = tl.program_id(0)
    window = (problem // heads).to(tl.int64)
    head = problem % heads
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr + window * stride_kb + head * stride_kh, stride_kl, cols, tokens,
                   head_dim, BLOCK_D)  # fmt: skip
    v = _load_rows(v_ptr + window * stride_vb + head * stride_vh, stride_vl, cols, tokens,
                   head_dim, BLOCK_D)  # fmt: skip
    q_ptr += window * stride_qb + head * stride_qh
    grad_out_ptr += window * stride_gb + head * stride_gh
    bias_ptr += head * tokens * tokens
    col_groups = _load_groups(groups_ptr, window % num_groups, cols, tokens, HAS_GROUPS)
    grad_k = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    grad_v = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < tokens
        q = _load_rows(q_ptr, stride_ql, rows, tokens, head_dim, BLOCK_D)
        grad_out = _load_rows(grad_out_ptr, stride_gl, rows, tokens, head_dim, BLOCK_D)
        row_groups = _load_groups(groups_ptr, window % num_groups, rows, tokens, HAS_GROUPS)
        row_max = tl.load(row_max_ptr + problem * tokens + rows, mask=row_ok, other=0.0)
        row_sum = tl.load(row_sum_ptr + problem * tokens + rows, mask=row_ok, other=1.0)
        delta = tl.load(delta_ptr + problem * tokens + rows, mask=row_ok, other=0.0)
        scores = _scores(q, k, bias_ptr, row_groups, col_groups, rows, cols, tokens, scale,
                         HAS_GROUPS, PRECISION, UPCAST_DOT)  # fmt: skip
        p = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
        p = tl.where(row_ok[:, None], p, 0.0)
        grad_v += tile_dot(tl.trans(p.to(grad_out.dtype)), grad_out, PRECISION, UPCAST_DOT)
        grad_p = tile_dot(grad_out, tl.trans(v), PRECISION, UPCAST_DOT)
        grad_scores = p * (grad_p - delta[:, None])
        grad_k += tile_dot(tl.trans(grad_scores.to(q.dtype)), q, PRECISION, UPCAST_DOT)
    dims = tl.arange(0, BLOCK_D)
    offsets = window * stride_db + head * stride_dh + cols[:, None] * stride_dl + dims[None, :]
    inside = (cols[:, None] < tokens) & (dims[None, :] < head_dim)
    tl.store(grad_k_ptr + offsets, (grad_k * scale).to(grad_k_ptr.dtype.element_ty), mask=inside)
    tl.store(grad_v_ptr + offsets, grad_v.to(grad_v_ptr.dtype.element_ty), mask=inside)


_KERNELS = (_forward_kernel, _backward_query_kernel, _backward_key_kernel)
