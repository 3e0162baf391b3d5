"""Biased attention computed a few windows at a time so every intermediate stays in cache.

The official formulation writes the (windows x heads x L x L) logits, bias sum and probabilities
out to memory several times; at Swin's sizes on a CPU that traffic, not the matrix products,
is most of the time. Here the same explicit computation (bias copied into a buffer, q k^T added
onto it by one batched GEMM, softmax in place, times v) runs over chunks of windows whose logits
fit in a cache-sized buffer, and the backward recomputes each chunk's probabilities instead of
saving them (as flash attention does), so training keeps no (L x L) tensor per window either.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
            out = _forward(qkv, bias, mask)
        ctx.save_for_backward(qkv, bias, mask, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor | None, None]:
        qkv, bias, mask, out = ctx.saved_tensors
        with torch.autocast(qkv.device.type, enabled=False):
            grads = _backward(qkv, bias, mask, out, grad_out, ctx.needs_input_grad[1])
        return *grads, None


def _forward(qkv: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
    batch, tokens, _, heads, dim = qkv.shape
    out = qkv.new_empty(batch, tokens, heads, dim)
    for start, stop in _chunks(qkv, mask):
        q, k, v = _split(qkv[start:stop])
        probabilities = _probabilities(q, k, bias, _chunk_mask(mask, start, stop))
        attended = torch.bmm(probabilities, v).unflatten(0, (stop - start, heads))
        out[start:stop] = attended.transpose(1, 2)
    return out


def _backward(
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
