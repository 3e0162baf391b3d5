"""Interval building and the Triton interval-sum BEV pooling against the scatter reference.

CPU tests run the kernels on Triton's interpreter (set per test; the kernels are jitted for the
mode current at each call, see geomim.kernels._triton); GPU tests run them compiled, and a compile
test builds them for sm_90 on any machine.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from geomim.kernels import triton_bev_pool as module
from geomim.kernels.bev_pool import reference_bev_pool
from geomim.kernels.triton_bev_pool import Intervals, bev_pool_intervals, triton_bev_pool
from tests.kernels.triton_compile import compile_for_gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_points(
    points: int, channels: int, num_cells: int, dtype=torch.float32, device="cpu", seed=0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, cell ids (some == num_cells: dropped; one cell holding 40 points), a gradient."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, num_cells + 1, (points,), generator=generator)
    cells[:40] = 3  # a run longer than the kernels' block of points
    features = torch.randn(points, channels, generator=generator)
    grad = torch.randn(num_cells, channels, generator=generator)
    return features.to(device, dtype), cells.to(device), grad.to(device, dtype)


def pool_and_grad(pool, features: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    features = features.detach().requires_grad_()
    pooled = pool(features, *args[:-1])
    (grad_features,) = torch.autograd.grad(pooled, features, args[-1])
    return pooled, grad_features


def reference(features: torch.Tensor, cells: torch.Tensor, num_cells: int, grad: torch.Tensor):
    """The scatter reference on the kept points, its gradient 0 for the dropped ones."""
    kept = cells < num_cells
    features = features.detach().requires_grad_()
    pooled = reference_bev_pool(features[kept], cells[kept], num_cells)
    (grad_features,) = torch.autograd.grad(pooled, features, grad)
    return pooled, grad_features


def test_intervals_are_the_runs_of_sorted_kept_cells():
    _, cells, _ = make_points(300, 1, 37)
    intervals = bev_pool_intervals(cells, num_cells=37)
    counts = torch.bincount(cells, minlength=38)[:37]
    assert torch.equal(intervals.cells, counts.nonzero().squeeze(1))
    assert torch.equal(intervals.lengths, counts[counts > 0])
    assert torch.equal(intervals.starts, intervals.lengths.cumsum(0) - intervals.lengths)
    assert torch.equal(cells[intervals.order], cells.sort().values)
    assert intervals.num_points == 300


def test_intervals_keep_every_cell_without_num_cells():
    cells = torch.tensor([5, 2, 2, 9, 5, 2])
    intervals = bev_pool_intervals(cells)
    assert intervals.cells.tolist() == [2, 5, 9]
    assert intervals.lengths.tolist() == [3, 2, 1]
    assert intervals.starts.tolist() == [0, 3, 5]


def test_intervals_reject_bad_cell_ids():
    with pytest.raises(ValueError, match="int64"):
        bev_pool_intervals(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match=">= 0"):
        bev_pool_intervals(torch.tensor([3, -1]))


@pytest.mark.parametrize("channels", [5, 80, 200])  # 200: two blocks of channels
def test_float32_matches_reference_forward_and_backward(interpreter, channels):
    features, cells, grad = make_points(300, channels, 37)
    fast = pool_and_grad(triton_bev_pool, features, bev_pool_intervals(cells, 37), 37, grad)
    for actual, expected in zip(fast, reference(features, cells, 37, grad), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(interpreter, dtype):
    features, cells, grad = make_points(300, 80, 37, dtype)
    fast = pool_and_grad(triton_bev_pool, features, bev_pool_intervals(cells, 37), 37, grad)
    assert fast[0].dtype == fast[1].dtype == dtype
    for actual, expected in zip(
        fast, reference(features.float(), cells, 37, grad.float()), strict=True
    ):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2 * scale)


def test_empty_cells_are_zero(interpreter):
    features = torch.ones(4, 3)
    pooled = triton_bev_pool(features, bev_pool_intervals(torch.tensor([1, 1, 4, 6]), 6), 6)
    assert pooled[:, 0].tolist() == [0, 2, 0, 0, 1, 0]


def test_cells_past_the_grid_are_dropped_without_num_cells_in_intervals(interpreter):
    features, cells, grad = make_points(300, 5, 37)
    intervals = bev_pool_intervals(cells)  # keeps the runs of cell 37
    fast = pool_and_grad(triton_bev_pool, features, intervals, 37, grad)
    for actual, expected in zip(fast, reference(features, cells, 37, grad), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_features_must_match_the_intervals(interpreter):
    intervals = bev_pool_intervals(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"expected features \(2, C\)"):
        triton_bev_pool(torch.ones(3, 4), intervals, 4)
    assert isinstance(intervals, Intervals)


def test_importing_needs_no_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError now
    fresh = {}
    for name in ("geomim.kernels._triton", "geomim.kernels.triton_bev_pool"):
        spec = importlib.util.find_spec(name)
        fresh[name] = importlib.util.module_from_spec(spec)  # not in sys.modules
        spec.loader.exec_module(fresh[name])
    pool = fresh["geomim.kernels.triton_bev_pool"]
    intervals = pool.bev_pool_intervals(torch.tensor([0, 1, 1]))  # plain PyTorch: works
    with pytest.raises(ImportError, match="need the `triton` package"):
        pool.triton_bev_pool(torch.ones(3, 2), intervals, 2)


@pytest.mark.parametrize("kernel", ["_interval_sum_kernel", "_interval_copy_kernel"])
def test_kernels_compile_for_sm90(compiled, kernel):
    pointers = {f"{name}_ptr": "*i64" for name in ("order", "starts", "lengths", "cells")}
    pointers |= {f"{name}_ptr": "*bf16" for name in ("features", "pooled", "grad_features")}
    pointers["grad_pooled_ptr"] = "*bf16"
    constexprs = {"BLOCK_POINTS": 16, "BLOCK_CHANNELS": 128}
    compile_for_gpu(getattr(module._kernels(), kernel), pointers, constexprs)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(compiled, dtype):
    num_cells = 200 * 200
    features, cells, grad = make_points(200_000, 80, num_cells, dtype, "cuda")
    intervals = bev_pool_intervals(cells, num_cells)
    fast = pool_and_grad(triton_bev_pool, features, intervals, num_cells, grad)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for actual, expected in zip(
        fast, reference(features.float(), cells, num_cells, grad.float()), strict=True
    ):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.float(), expected, rtol=tolerance, atol=tolerance * scale)
