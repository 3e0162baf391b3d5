"""splat (pooling of depth x context without the outer product): every backend against the
definition, forward and backward; plans cached per geometry."""

from __future__ import annotations

import itertools

import pytest
import torch

from geomim.kernels import splat
from geomim.kernels.splat import _plans, cached_splat_plan

CPU_BACKENDS = ["sparse", "index_add", "reference"]


def problem(seed: int, images: int = 3, bins: int = 5, rows: int = 4, cols: int = 6):
    """Depths, context, and cells with repeats, shared pixels per cell and dropped points."""
    generator = torch.Generator().manual_seed(seed)
    depth = torch.rand(images, bins, rows, cols, generator=generator).softmax(dim=1)
    context = torch.randn(images, rows, cols, 7, generator=generator)
    cells = torch.randint(0, 41, (images, bins, rows, cols), generator=generator)  # 40 = dropped
    return depth, context, cells, 40


def definition(depth, context, cells, num_cells):
    """out[cell] += depth[p] * context[pixel(p)], point by point."""
    out = torch.zeros(num_cells, context.shape[-1], dtype=torch.float64)
    for i, d, y, x in itertools.product(*map(range, depth.shape)):
        cell = int(cells[i, d, y, x])
        if cell < num_cells:
            out[cell] += depth[i, d, y, x].double() * context[i, y, x].double()
    return out.float()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sums_equal_the_definition_with_gradients(backend):
    depth, context, cells, num_cells = problem(0)
    expected = definition(depth, context, cells, num_cells)
    depth.requires_grad_(True)
    context.requires_grad_(True)
    pooled = splat(depth, context, cells, num_cells, backend=backend)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)

    upstream = torch.randn(num_cells, 7, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((pooled * upstream).sum(), (depth, context))
    kept = cells < num_cells
    padded = torch.cat([upstream, torch.zeros(1, 7)])  # the dropped points' cell
    at_point = padded[cells]  # (I, D, h, w, C)
    expected_depth = (at_point * context.detach()[:, None]).sum(-1) * kept
    expected_context = (at_point * depth.detach()[..., None]).sum(1)
    torch.testing.assert_close(grads[0], expected_depth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], expected_context, atol=1e-5, rtol=1e-5)


def test_a_plan_is_built_once_per_geometry_key():
    _plans.clear()
    _, _, cells, num_cells = problem(2)
    first = cached_splat_plan(cells, num_cells, key="rig A")
    assert cached_splat_plan(cells, num_cells, key="rig A") is first
    assert cached_splat_plan(cells, num_cells, key="rig B") is not first
    assert cached_splat_plan(cells, num_cells, key=None) is not first  # never cached
    assert len(_plans) == 2


def test_the_sparse_plan_sorts_entries_by_cell_and_drops_out_of_grid_points():
    _, _, cells, num_cells = problem(3)
    plan = cached_splat_plan(cells, num_cells, key=None)
    flat = cells.reshape(-1)
    assert len(plan.order) == int((flat < num_cells).sum())
    entry_cells = flat[plan.order]
    assert torch.equal(entry_cells, entry_cells.sort().values)
    assert plan.crow[-1] == len(plan.order)


def test_shape_mismatches_are_errors_naming_the_layouts():
    depth, context, cells, num_cells = problem(4)
    with pytest.raises(ValueError, match=r"expected depth \(I, D, h, w\)"):
        splat(depth, context[:, :2], cells, num_cells)
