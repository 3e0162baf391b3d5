"""Lift-Splat pooling without the outer product: out[cell] = sum over the frustum points p in the
cell of depth[p] * context[pixel(p)].

The (points, C) outer product of depth and context (498k x 80 floats at the official size) is
never materialised on the default "sparse" backend: the pooling is a sparse matrix S (cells x
pixels, one entry per kept point, the point's depth probability) times the dense (pixels, C)
context. The structure of S (a `SplatPlan`: points sorted by cell, CSR row offsets, and the
transpose for the backward pass) depends only on the camera geometry, so it is cached per
geometry key and repeated calls skip the sort. Backward: d_context = S^T grad (a second sparse
product), d_depth = grad @ context^T sampled at S's entries (`torch.sparse.sampled_addmm`).

Backends ("splat" in `geomim.kernels.dispatch`): "sparse" (default), "index_add" (materialise
the features, one `index_add_`), "reference" (materialise, element-wise `scatter_add_`),
"triton" (materialise, the interval-sum kernel of `triton_bev_pool`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomim.kernels.bev_pool import pool_with
from geomim.kernels.dispatch import backend_failures, choose_backend

PLAN_CACHE_SIZE = 8
_plans: OrderedDict[Hashable, SplatPlan] = OrderedDict()


@dataclass(frozen=True)
class SplatPlan:
    """The sparse structure of one geometry: entries (kept points) sorted by (cell, pixel)."""

    num_cells: int
    num_pixels: int
    order: Tensor  # (E,) int64: entry e is flattened point order[e]
    crow: Tensor  # (num_cells + 1,) int64 CSR row offsets
    pixels: Tensor  # (E,) int64 column (pixel) of each entry
    transpose_crow: Tensor  # (num_pixels + 1,) row offsets of S^T
    transpose_cells: Tensor  # (E,) int64 column (cell) of each S^T entry
    transpose_order: Tensor  # (E,) int64: S^T entry f is S entry transpose_order[f]


def splat_plan(cells: Tensor, num_cells: int) -> SplatPlan:
    """The plan of (I, D, h, w) flat cell indices (num_cells marks a dropped point)."""
    images, bins, rows, cols = cells.shape
    num_pixels = images * rows * cols
    pixel = torch.arange(num_pixels, device=cells.device).view(images, 1, rows, cols)
    flat_cells = cells.reshape(-1)
    flat_pixels = pixel.expand(images, bins, rows, cols).reshape(-1)
    kept = (flat_cells < num_cells).nonzero()[:, 0]
    order = kept[torch.argsort(flat_cells[kept] * num_pixels + flat_pixels[kept])]
    entry_cells, entry_pixels = flat_cells[order], flat_pixels[order]
    transpose_order = torch.argsort(entry_pixels, stable=True)
    return SplatPlan(
        num_cells=num_cells,
        num_pixels=num_pixels,
        order=order,
        crow=_row_offsets(entry_cells, num_cells),
        pixels=entry_pixels,
        transpose_crow=_row_offsets(entry_pixels[transpose_order], num_pixels),
        transpose_cells=entry_cells[transpose_order],
        transpose_order=transpose_order,
    )


def cached_splat_plan(cells: Tensor, num_cells: int, key: Hashable | None) -> SplatPlan:
    """`splat_plan`, reused for calls with the same `key` (None: never cached)."""
    if key is None:
        return splat_plan(cells, num_cells)
    key = (key, tuple(cells.shape), num_cells, cells.device)
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = splat_plan(cells, num_cells)
        if len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


def splat(
    depth: Tensor,
    context: Tensor,
    cells: Tensor,
    num_cells: int,
    plan_key: Hashable | None = None,
    backend: str | None = None,
) -> Tensor:
    """depth (I, D, h, w), context (I, h, w, C), cells (I, D, h, w) int64 in [0, num_cells]
    (num_cells = dropped) -> (num_cells, C) sums. `plan_key` names the geometry for caching."""
    images, _, rows, cols = depth.shape
    if cells.shape != depth.shape or context.shape[:3] != (images, rows, cols):
        raise ValueError(
            f"expected depth (I, D, h, w), cells of the same shape and context (I, h, w, C); got "
            f"{tuple(depth.shape)}, {tuple(cells.shape)}, {tuple(context.shape)}"
        )
    name = choose_backend("splat", depth.device, backend)
    if name == "sparse":
        with backend_failures("splat", name, depth.device):
            plan = cached_splat_plan(cells, num_cells, plan_key)
            return SparseSplat.apply(depth, context, plan)
    features = (depth[..., None] * context[:, None]).reshape(-1, context.shape[-1])
    return pool_with(name, features, cells.reshape(-1), num_cells + 1)[:-1]


class SparseSplat(torch.autograd.Function):
    """S @ context with S's values the depths of the plan's entries; see the module docstring."""

    @staticmethod
    def forward(ctx, depth: Tensor, context: Tensor, plan: SplatPlan) -> Tensor:
        values = depth.reshape(-1)[plan.order]
        context2d = context.reshape(plan.num_pixels, -1)
        ctx.save_for_backward(values, context2d)
        ctx.plan, ctx.depth_shape, ctx.context_shape = plan, depth.shape, context.shape
        return _csr(plan.crow, plan.pixels, values, plan.num_cells, plan.num_pixels) @ context2d

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        values, context2d = ctx.saved_tensors
        plan: SplatPlan = ctx.plan
        grad = grad.contiguous()
        grad_depth = grad_context = None
        if ctx.needs_input_grad[1]:
            transpose = _csr(
                plan.transpose_crow,
                plan.transpose_cells,
                values[plan.transpose_order],
                plan.num_pixels,
                plan.num_cells,
            )
            grad_context = (transpose @ grad).view(ctx.context_shape)
        if ctx.needs_input_grad[0]:
            structure = _csr(plan.crow, plan.pixels, values, plan.num_cells, plan.num_pixels)
            sampled = torch.sparse.sampled_addmm(structure, grad, context2d.T, beta=0.0)
            grad_depth = values.new_zeros(ctx.depth_shape.numel())
            grad_depth[plan.order] = sampled.values()
            grad_depth = grad_depth.view(ctx.depth_shape)
        return grad_depth, grad_context, None


def _csr(crow: Tensor, columns: Tensor, values: Tensor, rows: int, cols: int) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used within its support
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, columns, values, (rows, cols), check_invariants=False)


def _row_offsets(sorted_rows: Tensor, rows: int) -> Tensor:
    offsets = sorted_rows.new_zeros(rows + 1)
    offsets[1:] = torch.bincount(sorted_rows, minlength=rows).cumsum(0)
    return offsets
