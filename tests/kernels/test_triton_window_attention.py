"""The Triton window attention against the explicit PyTorch reference, forward and backward.

CPU tests run the kernels on Triton's interpreter: the kernels are jitted on each call for the
mode current then (geomim.kernels._triton), so setting TRITON_INTERPRET inside a test works
whatever imported Triton or these modules before. GPU tests run the compiled kernels; a compile
test builds them for sm_90 on any machine (Triton bundles ptxas).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from geomim.kernels import triton_window_attention as module
from geomim.kernels.triton_window_attention import (
    triton_attention_with_bias,
    triton_window_attention,
)
from geomim.kernels.window_attention import window_attention, window_mask_from_groups
from geomim.layers.window_attention import relative_position_index
from tests.kernels.triton_compile import compile_for_gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference_window_attention(q, k, v, table, index, groups=None):
    """The dispatch's reference backend in the kernel's (B, heads, L, d) layout."""
    qkv = torch.stack((q, k, v), dim=2).permute(0, 3, 2, 1, 4)  # (B, L, 3, heads, d)
    mask = None if groups is None else window_mask_from_groups(groups)
    attended = window_attention(qkv, table, index, mask, backend="reference")
    return attended.unflatten(-1, (q.shape[1], -1)).transpose(1, 2)


def make_problem(
    windows: int,
    heads: int,
    window: int,
    head_dim: int,
    num_groups: int | None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """q, k, v, a bias table and index, token groups with hidden (padding) tokens, a gradient."""
    generator = torch.Generator().manual_seed(seed)
    tokens = window * window
    q, k, v, grad = torch.randn(4, windows, heads, tokens, head_dim, generator=generator)
    groups = None
    if num_groups is not None:
        groups = torch.randint(0, 2, (num_groups, tokens), generator=generator, dtype=torch.int8)
        groups[0, -window:] = -1  # a padded bottom row of tokens, hidden in both groups
    return {
        "q": q.to(device, dtype),
        "k": k.to(device, dtype),
        "v": v.to(device, dtype),
        "table": torch.randn((2 * window - 1) ** 2, heads, generator=generator).to(device),
        "index": relative_position_index(window).to(device),
        "groups": None if groups is None else groups.to(device),
        "grad": grad.to(device, dtype),
    }


def run(attend, problem, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """`attend`'s output and its gradients for q, k, v and the table (inputs cast to `dtype`)."""
    q, k, v, table = (
        problem[name].detach().to(dtype or problem[name].dtype).requires_grad_()
        for name in ("q", "k", "v", "table")
    )
    out = attend(q, k, v, table, problem["index"], problem["groups"])
    grads = torch.autograd.grad(out, (q, k, v, table), problem["grad"].to(out.dtype))
    return out, *grads


@pytest.mark.parametrize(
    "windows, heads, window, head_dim, num_groups",
    [
        (6, 2, 7, 32, 6),  # one group row per window, L = 49
        (6, 2, 4, 8, 3),  # group rows shared by two images, L = 16, head_dim padded to 16
        (6, 2, 7, 32, None),  # no groups
        (2, 1, 9, 16, 1),  # L = 81: two blocks of queries and of keys
    ],
)
def test_float32_matches_reference_forward_and_backward(
    interpreter, windows, heads, window, head_dim, num_groups
):
    problem = make_problem(windows, heads, window, head_dim, num_groups)
    fast = run(triton_window_attention, problem)
    reference = run(reference_window_attention, problem)
    for name, actual, expected in zip(
        ["out", "q", "k", "v", "table"], fast, reference, strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(interpreter, dtype):
    problem = make_problem(6, 2, 7, 32, 2)
    fast = run(triton_window_attention, problem, dtype)
    rounded = {**problem, **{n: problem[n].to(dtype).float() for n in ("q", "k", "v", "grad")}}
    reference = run(reference_window_attention, rounded)
    assert fast[0].dtype == dtype
    for name, actual, expected in zip(
        ["out", "q", "k", "v", "table"], fast, reference, strict=True
    ):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2 * scale, msg=name)


def test_deterministic_mode_matches_reference(interpreter):
    problem = make_problem(4, 2, 4, 8, 2)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # one bias-gradient slot per window
    try:
        fast = run(triton_window_attention, problem)
    finally:
        torch.use_deterministic_algorithms(previous)
    reference = run(reference_window_attention, problem)
    torch.testing.assert_close(fast[-1], reference[-1], rtol=1e-5, atol=1e-5)


def test_padding_rows_attend_uniformly_like_the_reference(interpreter):
    problem = make_problem(2, 1, 4, 16, 1)
    problem["groups"][0, :] = -1  # every token hidden: all logits -1e30
    out = triton_window_attention(
        problem["q"], problem["k"], problem["v"], problem["table"], problem["index"],
        problem["groups"],
    )  # fmt: skip
    mean = problem["v"].mean(dim=2, keepdim=True).expand_as(out)
    torch.testing.assert_close(out, mean, rtol=1e-5, atol=1e-6)


def test_output_is_a_free_transpose_of_windows_tokens_heads(interpreter):
    problem = make_problem(2, 2, 4, 8, None)
    bias = problem["table"][problem["index"]].permute(2, 0, 1)
    out = triton_attention_with_bias(problem["q"], problem["k"], problem["v"], bias)
    assert out.shape == (2, 2, 16, 8)
    assert out.transpose(1, 2).is_contiguous()


def test_strided_qkv_from_one_projection_match_reference(interpreter):
    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn(
        4, 16, 3, 2, 8, generator=generator
    )  # (B, L, 3, heads, d), as WindowAttention
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    table = torch.randn(49, 2, generator=generator)
    index = relative_position_index(4)
    torch.testing.assert_close(
        triton_window_attention(q, k, v, table, index),
        reference_window_attention(q, k, v, table, index),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_inputs_raise_with_expected_and_actual(interpreter):
    problem = make_problem(6, 2, 4, 8, None)
    q, k, v, table, index = (problem[n] for n in ("q", "k", "v", "table", "index"))
    with pytest.raises(ValueError, match=r"\(R, 2\) bias table"):
        triton_window_attention(q, k, v, table[:, :1], index)
    with pytest.raises(ValueError, match="multiple of G"):
        triton_window_attention(q, k, v, table, index, torch.zeros(4, 16, dtype=torch.int8))
    with pytest.raises(TypeError, match="one float dtype"):
        triton_window_attention(q, k.double(), v, table, index)


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    problem = make_problem(2, 1, 4, 8, None)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        triton_window_attention(*(problem[n] for n in ("q", "k", "v", "table", "index")))


def test_importing_needs_no_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError now
    fresh = {}
    for name in ("geomim.kernels._triton", "geomim.kernels.triton_window_attention"):
        spec = importlib.util.find_spec(name)
        fresh[name] = importlib.util.module_from_spec(spec)  # not in sys.modules
        spec.loader.exec_module(fresh[name])
    problem = make_problem(1, 1, 2, 8, None)
    with pytest.raises(ImportError, match="need the `triton` package"):
        fresh["geomim.kernels.triton_window_attention"].triton_window_attention(
            *(problem[n] for n in ("q", "k", "v", "table", "index"))
        )


@pytest.mark.parametrize(
    "kernel", ["_forward_kernel", "_backward_query_kernel", "_backward_key_kernel"]
)
def test_kernels_compile_for_sm90(compiled, kernel):
    constexprs = {"HAS_GROUPS": True, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32,
                  "PRECISION": "tf32", "UPCAST_DOT": False}  # fmt: skip
    if kernel == "_backward_query_kernel":
        constexprs["BIAS_GRAD"] = True
    bf16 = ("q", "k", "v", "out", "grad_out", "grad_q", "grad_k", "grad_v")
    pointers = {f"{name}_ptr": "*bf16" for name in bf16} | {"groups_ptr": "*i32"}
    compile_for_gpu(getattr(module._kernels(), kernel), pointers, constexprs)


@cuda
@pytest.mark.parametrize("window, num_groups", [(16, 12), (8, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(compiled, window, num_groups, dtype):
    problem = make_problem(96, 4, window, 32, num_groups, device="cuda")
    fast = run(triton_window_attention, problem, dtype)
    rounded = {**problem, **{n: problem[n].to(dtype).float() for n in ("q", "k", "v", "grad")}}
    reference = run(reference_window_attention, rounded)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for name, actual, expected in zip(
        ["out", "q", "k", "v", "table"], fast, reference, strict=True
    ):
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            actual.float(), expected, rtol=tolerance, atol=tolerance * scale, msg=name
        )
