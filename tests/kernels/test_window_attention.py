"""window_attention: every CPU backend against the official formulation, forward and backward."""

from __future__ import annotations

import importlib

import pytest
import torch

from geomim.kernels import window_attention, window_mask_from_groups
from geomim.kernels.window_attention import _explicit_attention, attention_with_bias
from geomim.layers import relative_position_index

attention = importlib.import_module("geomim.kernels.window_attention")

CPU_BACKENDS = ["chunked", "sdpa", "flex"]
TRAINING_BACKENDS = ["chunked", "sdpa"]


def problem(windows: int, heads: int, window: int, head_dim: int, groups: int | None, seed: int):
    """qkv (B, L, 3, H, D), a bias table, its index and (optionally) a group mask."""
    generator = torch.Generator().manual_seed(seed)
    tokens = window * window
    qkv = torch.randn(windows, tokens, 3, heads, head_dim, generator=generator)
    table = torch.randn((2 * window - 1) ** 2, heads, generator=generator)
    mask = None
    if groups is not None:
        token_groups = torch.randint(-1, 2, (groups, tokens), generator=generator)
        token_groups[:, 0] = -1  # a padding token: attends nowhere, uniformly
        mask = window_mask_from_groups(token_groups)
    return qkv, table, relative_position_index(window), mask


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("groups", [None, 2, 6], ids=["no-mask", "mask-per-window", "per-image"])
def test_backends_match_the_official_formulation(backend, groups):
    qkv, table, index, mask = problem(6, 2, 4, 8, groups, seed=0)
    ours = window_attention(qkv, table, index, mask, backend=backend)
    official = window_attention(qkv, table, index, mask, backend="reference")
    assert official.shape == (6, 16, 16)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_a_gathered_bias_is_used_instead_of_the_table(backend):
    qkv, table, index, mask = problem(4, 2, 4, 8, 2, seed=1)
    gathered = attention.relative_bias(table, index)
    ours = window_attention(qkv, torch.zeros_like(table), index, mask, backend, gathered)
    official = window_attention(qkv, table, index, mask, backend="reference")
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
@pytest.mark.parametrize("groups", [None, 2, 6], ids=["no-mask", "mask-per-window", "per-image"])
def test_gradients_match_the_official_formulation(backend, groups):
    qkv, table, index, mask = problem(6, 2, 4, 8, groups, seed=0)
    qkv.requires_grad_(True)
    table.requires_grad_(True)
    grads = [
        torch.autograd.grad(
            window_attention(qkv, table, index, mask, backend=name).square().sum(), (qkv, table)
        )
        for name in ("reference", backend)
    ]
    for ours, official in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("chunk_windows", [1, 2, 5])
def test_chunked_attention_is_exact_whatever_the_chunking(monkeypatch, chunk_windows):
    """Chunks of 1, 2 or 5 windows over 12 windows whose masks repeat every 3 windows: chunks
    stop at every mask period, forward and backward agree with the official formulation."""
    qkv, table, index, mask = problem(12, 2, 4, 8, 3, seed=6)
    bytes_per_window = 2 * 16 * 16 * qkv.element_size()
    monkeypatch.setattr(attention, "CHUNK_BYTES", chunk_windows * bytes_per_window)
    qkv.requires_grad_(True)
    table.requires_grad_(True)
    results = []
    for name in ("reference", "chunked"):
        out = window_attention(qkv, table, index, mask, backend=name)
        results.append((out, *torch.autograd.grad(out.square().sum(), (qkv, table))))
    for ours, official in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-5)


def test_chunked_attention_runs_in_the_dtype_of_its_inputs_under_autocast():
    qkv, table, index, mask = problem(4, 2, 4, 8, 2, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = window_attention(qkv, table, index, mask, backend="chunked")
    assert out.dtype == torch.float32
    official = window_attention(qkv, table, index, mask, backend="reference")
    torch.testing.assert_close(out, official, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [2, 6], ids=["mask-per-window", "per-image"])
def test_flex_with_the_groups_as_a_block_mask_matches_the_official_formulation(groups):
    """The CUDA form of the flex backend (groups also as a block mask), run here on the CPU."""
    qkv, table, index, mask = problem(6, 2, 4, 8, groups, seed=8)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ours = attention._flex(q, k, v, table, index, mask, block_sparse=True)
    official = window_attention(qkv, table, index, mask, backend="reference")
    torch.testing.assert_close(ours.transpose(1, 2).flatten(2), official, atol=1e-5, rtol=1e-5)


def test_flex_on_the_cpu_refuses_training_clearly():
    qkv, table, index, mask = problem(2, 1, 2, 4, None, seed=5)
    with pytest.raises(NotImplementedError, match="no backward on the CPU"):
        window_attention(qkv.requires_grad_(True), table, index, mask, backend="flex")


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
def test_a_token_in_no_group_attends_uniformly_as_the_official_code(backend):
    qkv, table, index, mask = problem(2, 1, 2, 4, 2, seed=1)
    out = window_attention(qkv, table, index, mask, backend=backend)
    values = qkv[:, :, 2, 0]  # (B, L, D)
    torch.testing.assert_close(out[:, 0], values.mean(dim=1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_stays_within_two_percent(backend):
    qkv, table, index, mask = problem(4, 2, 4, 8, 4, seed=2)
    low = window_attention(qkv.bfloat16(), table, index, mask, backend=backend)
    assert low.dtype == torch.bfloat16
    official = window_attention(qkv, table, index, mask, backend="reference")
    torch.testing.assert_close(low.float(), official, atol=2e-2 * official.abs().max(), rtol=0)


def test_sdpa_with_a_bias_matches_the_explicit_computation():
    generator = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 5, 4, 16, 8, generator=generator).unbind(0)
    bias = torch.randn(4, 16, 16, generator=generator)
    torch.testing.assert_close(
        attention_with_bias(q, k, v, bias),
        _explicit_attention(q, k, v, bias),
        atol=1e-5,
        rtol=0,
    )


def test_mismatched_shapes_are_errors_naming_the_layouts():
    qkv, table, index, mask = problem(5, 2, 4, 8, 2, seed=4)
    with pytest.raises(ValueError, match=r"does not fit 5 windows of 16 tokens"):
        window_attention(qkv, table, index, mask)
    with pytest.raises(ValueError, match=r"expected qkv \(B, L, 3, H, D\)"):
        window_attention(qkv[:, :9], table, index)
