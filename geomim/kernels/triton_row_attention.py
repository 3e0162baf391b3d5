"""The Triton kernels of row attention (`geomim.kernels.row_attention`, backend "triton"): flash
attention over each image row of every view, reading q, k, v and writing the output by strides in
the view-major layout, the key mask read from `key_visible`; the backward writes dq, dk, dv into
one gradient laid out as qkv, so no layout copy happens either way.
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


def triton_row_attention(qkv: Tensor, key_visible: Tensor | None) -> Tensor:
    """qkv (B, N, H, W, 3, heads, D), key_visible (B, N, H, W) bool or None -> (B, N, H, W,
    heads * D); inputs checked by `row_attention`."""
    qkv = qkv if qkv.is_contiguous() else qkv.contiguous()  # the gradient shares its strides
    visible = None if key_visible is None else key_visible.to(torch.int8).contiguous()
    return _RowAttention.apply(qkv, visible).flatten(-2)


class _RowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, visible):
        out, row_max, row_sum = _forward(qkv, visible)
        ctx.save_for_backward(qkv, visible, out, row_max, row_sum)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(*ctx.saved_tensors, grad_out), None


def _forward(qkv: Tensor, visible: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel: the output (B, N, H, W, heads, D) and each row's softmax max
    and sum (float32, one row per (sample, image row, head) and position)."""
    kernels = _kernels()
    batch, views, height, width, _, heads, head_dim = qkv.shape
    tokens = views * width
    out = qkv.new_empty(batch, views, height, width, heads, head_dim)
    row_max, row_sum = torch.empty(2, batch * height * heads, tokens, device=qkv.device).unbind(0)
    blocks = attention_tiles(tokens, head_dim, qkv.dtype)
    grid = (batch * height * heads, cdiv(tokens, blocks["BLOCK_M"]))
    with _triton.on_device(qkv):
        kernels._forward_kernel[grid](
            qkv, qkv if visible is None else visible, out, row_max, row_sum,
            *_qkv_strides(qkv), *_out_strides(out),
            height, width, heads, tokens, head_dim, head_dim**-0.5,
            HAS_MASK=visible is not None, **blocks,
        )  # fmt: skip
    return out, row_max, row_sum


def _backward(
    qkv: Tensor,
    visible: Tensor | None,
    out: Tensor,
    row_max: Tensor,
    row_sum: Tensor,
    grad_out: Tensor,
) -> Tensor:
    """Launch the backward kernels (dq, then dk and dv) into one gradient laid out as qkv."""
    kernels = _kernels()
    views, height, width, _, heads, head_dim = qkv.shape[1:]
    tokens = views * width
    grad_out = grad_out.contiguous()  # the strides of out (both contiguous)
    grad_qkv = torch.empty_like(qkv)  # the strides of qkv (contiguous, see row_attention)
    delta = torch.empty_like(row_max)  # rowsum(dO * O), from the first kernel for the second
    blocks = attention_tiles(tokens, head_dim, qkv.dtype)
    common = (
        *_qkv_strides(qkv), *_out_strides(out),
        height, width, heads, tokens, head_dim, head_dim**-0.5,
    )  # fmt: skip
    mask = qkv if visible is None else visible
    with _triton.on_device(qkv):
        kernels._backward_query_kernel[(row_max.shape[0], cdiv(tokens, blocks["BLOCK_M"]))](
            qkv, mask, out, grad_out, row_max, row_sum, delta, grad_qkv, *common,
            HAS_MASK=visible is not None, **blocks,
        )  # fmt: skip
        kernels._backward_key_kernel[(row_max.shape[0], cdiv(tokens, blocks["BLOCK_N"]))](
            qkv, mask, grad_out, row_max, row_sum, delta, grad_qkv, *common,
            HAS_MASK=visible is not None, **blocks,
        )  # fmt: skip
    return grad_qkv


def _kernels():
    return _triton.jit(
        tile_dot, online_softmax_step, _bases, _token_offsets, _load_tokens, _store_tokens,
        _load_visible, _load_keys, _scores, *_KERNELS,
    )  # fmt: skip


def _qkv_strides(qkv: Tensor) -> tuple[int, ...]:
    """(B, N, H, W, 3, heads) strides of qkv (its last one is 1)."""
    return tuple(qkv.stride(dim) for dim in range(6))


def _out_strides(out: Tensor) -> tuple[int, ...]:
    """(B, N, H, W, heads) strides of the output (its last one is 1)."""
    return tuple(out.stride(dim) for dim in range(5))


# ---- Triton (jitted on first use by geomim.kernels._triton) ---------------------------------


def _bases(
    heads, height, width, tokens, stride_b, stride_h, stride_head, stride_ob, stride_oh,
    stride_ohead,
):  # fmt: skip
    """Where this program's (sample, image row, head) starts (head fastest in program_id(0)):
    its int64 offsets in qkv, in the output and in the contiguous (B, N, H, W) mask."""
    problem = tl.program_id(0)
    sequence = problem // heads
    sample = (sequence // height).to(tl.int64)
    image_row = (sequence % height).to(tl.int64)
    head = problem % heads
    qkv = sample * stride_b + image_row * stride_h + head * stride_head
    out = sample * stride_ob + image_row * stride_oh + head * stride_ohead
    return qkv, out, sample * height * tokens + image_row * width


def _token_offsets(positions, width, stride_n, stride_w):
    """Offsets of sequence positions p = n * W + w: n * stride_n + w * stride_w (int64)."""
    view = (positions // width).to(tl.int64)
    column = (positions % width).to(tl.int64)
    return view * stride_n + column * stride_w


def _load_tokens(ptr, offsets, positions, tokens, head_dim, BLOCK_D: tl.constexpr):
    """The D-vectors at `offsets` as a (positions, BLOCK_D) tile, zero past L and D."""
    dims = tl.arange(0, BLOCK_D)
    mask = (positions[:, None] < tokens) & (dims[None, :] < head_dim)
    return tl.load(ptr + offsets[:, None] + dims[None, :], mask=mask, other=0.0)


def _store_tokens(ptr, offsets, positions, tokens, head_dim, values, BLOCK_D: tl.constexpr):
    """Store a (positions, BLOCK_D) float32 tile as the D-vectors at `offsets`, up to L and D."""
    dims = tl.arange(0, BLOCK_D)
    mask = (positions[:, None] < tokens) & (dims[None, :] < head_dim)
    tl.store(ptr + offsets[:, None] + dims[None, :], values.to(ptr.dtype.element_ty), mask=mask)


def _load_visible(visible_ptr, positions, tokens, width, height, HAS_MASK: tl.constexpr):
    """Whether the keys at `positions` are visible (0 past L), from the sequence's (N, W) slice
    of the contiguous (B, N, H, W) mask; 0 without a mask (unused then)."""
    if HAS_MASK:  # one return: compiled Triton wants one type from all of them
        offsets = _token_offsets(positions, width, height * width, 1)
        visible = tl.load(visible_ptr + offsets, mask=positions < tokens, other=0).to(tl.int32)
    else:
        visible = 0
    return visible


def _load_keys(
    q_ptr, visible_ptr, keys, tokens, width, height, head_dim, stride_n, stride_w, stride_part,
    HAS_MASK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """k and v at sequence positions `keys` (q at `q_ptr`), and whether those keys are visible."""
    offsets = _token_offsets(keys, width, stride_n, stride_w)
    k = _load_tokens(q_ptr + stride_part, offsets, keys, tokens, head_dim, BLOCK_D)
    v = _load_tokens(q_ptr + 2 * stride_part, offsets, keys, tokens, head_dim, BLOCK_D)
    return k, v, _load_visible(visible_ptr, keys, tokens, width, height, HAS_MASK)


def _scores(
    q,
    k,
    queries,
    keys,
    key_visible,
    tokens,
    scale,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """(queries, keys) float32 logits q k^T * scale; -1e30 for a hidden key other than the query
    itself (each real query sees itself, so its probabilities there are exactly 0); -inf past L."""
    scores = tile_dot(q, tl.trans(k), PRECISION, UPCAST_DOT) * scale
    if HAS_MASK:
        allowed = (key_visible[None, :] != 0) | (queries[:, None] == keys[None, :])
        scores = tl.where(allowed, scores, -1e30)
    return tl.where(keys[None, :] < tokens, scores, float("-inf"))


def _forward_kernel(
    qkv_ptr, visible_ptr, out_ptr, row_max_ptr, row_sum_ptr,
    stride_b, stride_n, stride_h, stride_w, stride_part, stride_head,
    stride_ob, stride_on, stride_oh, stride_ow, stride_ohead,
    height, width, heads, tokens, head_dim, scale,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """One block of queries of one (sample, image row, head): stream the keys, online softmax."""
    qkv_base, out_base, visible_base = _bases(
        heads, height, width, tokens, stride_b, stride_h, stride_head, stride_ob, stride_oh,
        stride_ohead,
    )  # fmt: skip
    q_ptr = qkv_ptr + qkv_base
    visible_ptr += visible_base
    queries = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_offsets = _token_offsets(queries, width, stride_n, stride_w)
    q = _load_tokens(q_ptr, q_offsets, queries, tokens, head_dim, BLOCK_D)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.full((BLOCK_M,), 0.0, tl.float32)
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k, v, key_visible = _load_keys(
            q_ptr, visible_ptr, keys, tokens, width, height, head_dim, stride_n, stride_w,
            stride_part, HAS_MASK, BLOCK_D,
        )  # fmt: skip
        scores = _scores(q, k, queries, keys, key_visible, tokens, scale, HAS_MASK, PRECISION,
                         UPCAST_DOT)  # fmt: skip
        row_max, row_sum, acc = online_softmax_step(
            scores, v, row_max, row_sum, acc, PRECISION, UPCAST_DOT
        )
    out_offsets = _token_offsets(queries, width, stride_on, stride_ow)
    out = acc / row_sum[:, None]
    _store_tokens(out_ptr + out_base, out_offsets, queries, tokens, head_dim, out, BLOCK_D)
    stats = tl.program_id(0) * tokens + queries  # (sample, image row, head) rows of (., L)
    tl.store(row_max_ptr + stats, row_max, mask=queries < tokens)
    tl.store(row_sum_ptr + stats, row_sum, mask=queries < tokens)


def _backward_query_kernel(
    qkv_ptr, visible_ptr, out_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr,
    grad_qkv_ptr,
    stride_b, stride_n, stride_h, stride_w, stride_part, stride_head,
    stride_ob, stride_on, stride_oh, stride_ow, stride_ohead,
    height, width, heads, tokens, head_dim, scale,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dq for one block of queries; writes rowsum(dO * O) for the key kernel."""
    qkv_base, out_base, visible_base = _bases(
        heads, height, width, tokens, stride_b, stride_h, stride_head, stride_ob, stride_oh,
        stride_ohead,
    )  # fmt: skip
    q_ptr = qkv_ptr + qkv_base
    visible_ptr += visible_base
    queries = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_ok = queries < tokens
    q_offsets = _token_offsets(queries, width, stride_n, stride_w)
    out_offsets = _token_offsets(queries, width, stride_on, stride_ow)
    q = _load_tokens(q_ptr, q_offsets, queries, tokens, head_dim, BLOCK_D)
    grad_out = _load_tokens(grad_out_ptr + out_base, out_offsets, queries, tokens, head_dim,
                            BLOCK_D)  # fmt: skip
    out = _load_tokens(out_ptr + out_base, out_offsets, queries, tokens, head_dim, BLOCK_D)
    delta = sum_along(grad_out.to(tl.float32) * out.to(tl.float32), 1)
    stats = tl.program_id(0) * tokens + queries
    tl.store(delta_ptr + stats, delta, mask=query_ok)
    row_max = tl.load(row_max_ptr + stats, mask=query_ok, other=0.0)
    row_sum = tl.load(row_sum_ptr + stats, mask=query_ok, other=1.0)
    grad_q = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k, v, key_visible = _load_keys(
            q_ptr, visible_ptr, keys, tokens, width, height, head_dim, stride_n, stride_w,
            stride_part, HAS_MASK, BLOCK_D,
        )  # fmt: skip
        scores = _scores(q, k, queries, keys, key_visible, tokens, scale, HAS_MASK, PRECISION,
                         UPCAST_DOT)  # fmt: skip
        p = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
        p = tl.where(query_ok[:, None], p, 0.0)
        grad_p = tile_dot(grad_out, tl.trans(v), PRECISION, UPCAST_DOT)
        grad_scores = p * (grad_p - delta[:, None])
        grad_q += tile_dot(grad_scores.to(k.dtype), k, PRECISION, UPCAST_DOT)
    _store_tokens(grad_qkv_ptr + qkv_base, q_offsets, queries, tokens, head_dim, grad_q * scale,
                  BLOCK_D)  # fmt: skip


def _backward_key_kernel(
    qkv_ptr, visible_ptr, grad_out_ptr, row_max_ptr, row_sum_ptr, delta_ptr, grad_qkv_ptr,
    stride_b, stride_n, stride_h, stride_w, stride_part, stride_head,
    stride_ob, stride_on, stride_oh, stride_ow, stride_ohead,
    height, width, heads, tokens, head_dim, scale,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dk and dv for one block of keys of one (sample, image row, head): stream the queries."""
    qkv_base, out_base, visible_base = _bases(
        heads, height, width, tokens, stride_b, stride_h, stride_head, stride_ob, stride_oh,
        stride_ohead,
    )  # fmt: skip
    q_ptr = qkv_ptr + qkv_base
    visible_ptr += visible_base
    grad_out_ptr += out_base
    keys = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k, v, key_visible = _load_keys(
        q_ptr, visible_ptr, keys, tokens, width, height, head_dim, stride_n, stride_w,
        stride_part, HAS_MASK, BLOCK_D,
    )  # fmt: skip
    grad_k = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    grad_v = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    for start in range(0, tokens, BLOCK_M):
        queries = start + tl.arange(0, BLOCK_M)
        query_ok = queries < tokens
        q = _load_tokens(q_ptr, _token_offsets(queries, width, stride_n, stride_w), queries,
                         tokens, head_dim, BLOCK_D)  # fmt: skip
        grad_out = _load_tokens(grad_out_ptr, _token_offsets(queries, width, stride_on, stride_ow),
                                queries, tokens, head_dim, BLOCK_D)  # fmt: skip
        stats = tl.program_id(0) * tokens + queries
        row_max = tl.load(row_max_ptr + stats, mask=query_ok, other=0.0)
        row_sum = tl.load(row_sum_ptr + stats, mask=query_ok, other=1.0)
        delta = tl.load(delta_ptr + stats, mask=query_ok, other=0.0)
        scores = _scores(q, k, queries, keys, key_visible, tokens, scale, HAS_MASK, PRECISION,
                         UPCAST_DOT)  # fmt: skip
        p = tl.exp(scores - row_max[:, None]) / row_sum[:, None]
        p = tl.where(query_ok[:, None], p, 0.0)
        grad_v += tile_dot(tl.trans(p.to(grad_out.dtype)), grad_out, PRECISION, UPCAST_DOT)
        grad_p = tile_dot(grad_out, tl.trans(v), PRECISION, UPCAST_DOT)
        grad_scores = p * (grad_p - delta[:, None])
        grad_k += tile_dot(tl.trans(grad_scores.to(q.dtype)), q, PRECISION, UPCAST_DOT)
    grad_k_ptr = grad_qkv_ptr + qkv_base + stride_part
    key_offsets = _token_offsets(keys, width, stride_n, stride_w)
    _store_tokens(grad_k_ptr, key_offsets, keys, tokens, head_dim, grad_k * scale, BLOCK_D)
    _store_tokens(grad_k_ptr + stride_part, key_offsets, keys, tokens, head_dim, grad_v, BLOCK_D)


_KERNELS = (_forward_kernel, _backward_query_kernel, _backward_key_kernel)
