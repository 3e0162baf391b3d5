"""Row attention (the attention of Cross-View Attention): every backend against the reference.

The Triton backend runs on Triton's CPU interpreter here (tiny shapes, a second or two each), on
the GPU in the CUDA-only tests, and is compiled for sm_90 on any machine where Triton has a CUDA
backend. The reference itself is checked against the definition, one image row at a time.
"""

from __future__ import annotations

import pytest
import torch

from geomim.kernels import last_backend, set_backend
from geomim.kernels import triton_row_attention as module
from geomim.kernels.dispatch import choose_backend, default_backend
from geomim.kernels.row_attention import reference_row_attention, row_attention
from tests.kernels.triton_compile import compile_for_gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMALL = (2, 3, 2, 5, 2, 8)  # batch, views, height, width, heads, head_dim: rows of 15 tokens
TWO_BLOCKS = (1, 3, 1, 25, 1, 8)  # rows of 75 tokens: two blocks of 64 queries and keys


def make_problem(
    shape: tuple[int, ...],
    mask: str,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """qkv (B, N, H, W, 3, heads, D), key_visible ("none", "random" or "hidden": all hidden), and
    an output gradient (B, N, H, W, heads * D)."""
    batch, views, height, width, heads, head_dim = shape
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, views, height, width, 3, heads, head_dim, generator=generator)
    grad = torch.randn(batch, views, height, width, heads * head_dim, generator=generator)
    visible = {
        "none": None,
        "random": torch.rand(batch, views, height, width, generator=generator) < 0.4,
        "hidden": torch.zeros(batch, views, height, width, dtype=torch.bool),
    }[mask]
    return {
        "qkv": qkv.to(device, dtype),
        "key_visible": None if visible is None else visible.to(device),
        "grad": grad.to(device, dtype),
    }


def run(backend: str, problem: dict, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """The output of `backend` and the gradient of qkv (inputs cast to `dtype`)."""
    qkv = problem["qkv"].detach().to(dtype or problem["qkv"].dtype).requires_grad_()
    if backend == "definition":
        out = per_row_definition(qkv, problem["key_visible"])
    else:
        out = row_attention(qkv, problem["key_visible"], backend)
    (grad,) = torch.autograd.grad(out, qkv, problem["grad"].to(out.dtype))
    return out, grad


def per_row_definition(qkv: torch.Tensor, key_visible: torch.Tensor | None) -> torch.Tensor:
    """For each sample and image row: concatenate that row of every view, attend, put back."""
    batch, views, height, width, _, heads, head_dim = qkv.shape
    rows = []
    for sample in range(batch):
        for row in range(height):
            sequence = qkv[sample, :, row].reshape(views * width, 3, heads, head_dim)
            q, k, v = sequence.permute(1, 2, 0, 3)  # each (heads, N*W, D)
            logits = q @ k.transpose(-2, -1) * head_dim**-0.5
            if key_visible is not None:
                itself = torch.eye(views * width, dtype=torch.bool)
                allowed = key_visible[sample, :, row].reshape(1, -1) | itself
                logits = logits.masked_fill(~allowed, float("-inf"))
            attended = (logits.softmax(-1) @ v).transpose(0, 1)  # (N*W, heads, D)
            rows.append(attended.reshape(views, width, heads * head_dim))
    return torch.stack(rows).view(batch, height, views, width, -1).transpose(1, 2)


def on_the_interpreter_for_triton(request: pytest.FixtureRequest, backend: str) -> None:
    if backend == "triton":
        request.getfixturevalue("interpreter")


def assert_matches(fast: tuple, reference: tuple, tolerance: float) -> None:
    for name, actual, expected in zip(["out", "grad qkv"], fast, reference, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            actual.float(), expected, rtol=tolerance, atol=tolerance * scale, msg=name
        )


@pytest.mark.parametrize("mask", ["none", "random", "hidden"])
def test_reference_is_attention_within_each_row_across_views(mask):
    problem = make_problem(SMALL, mask)
    assert_matches(run("reference", problem), run("definition", problem), 1e-5)


@pytest.mark.parametrize("mask", ["none", "random", "hidden"])
def test_sdpa_matches_reference_forward_and_backward(mask):
    problem = make_problem(SMALL, mask)
    assert_matches(run("sdpa", problem), run("reference", problem), 1e-5)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize(
    "shape, mask",
    [(SMALL, "none"), (SMALL, "random"), (SMALL, "hidden"), (TWO_BLOCKS, "random")],
    ids=["all-keys", "random-keys", "no-keys", "two-blocks"],
)
def test_triton_matches_reference_forward_and_backward(shape, mask):
    problem = make_problem(shape, mask)
    assert_matches(run("triton", problem), run("reference", problem), 1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_bfloat16_stays_close_to_float32(request, backend):
    on_the_interpreter_for_triton(request, backend)
    problem = make_problem(SMALL, "random")
    rounded = {**problem, **{n: problem[n].bfloat16().float() for n in ("qkv", "grad")}}
    fast = run(backend, problem, torch.bfloat16)
    assert fast[0].dtype == fast[1].dtype == torch.bfloat16
    assert_matches(fast, run("reference", rounded), 2e-2)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_a_query_that_sees_no_key_attends_to_itself(request, backend):
    on_the_interpreter_for_triton(request, backend)
    problem = make_problem(TWO_BLOCKS, "hidden")  # queries 64-74: every key of block 1 hidden
    out = row_attention(problem["qkv"], problem["key_visible"], backend)
    values = problem["qkv"][..., 2, :, :].flatten(-2)
    torch.testing.assert_close(out, values, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("interpreter")
def test_triton_reads_and_writes_the_view_major_layout():
    qkv = make_problem(SMALL, "none")["qkv"].requires_grad_()
    out = row_attention(qkv, backend="triton")
    assert out.shape == (2, 3, 2, 5, 16) and out.is_contiguous()
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    assert grad.shape == qkv.shape and grad.stride() == qkv.stride()


@pytest.mark.usefixtures("interpreter")
def test_triton_accepts_the_projection_of_view_major_tokens():
    generator = torch.Generator().manual_seed(2)
    projection = torch.nn.Linear(16, 48)
    tokens = torch.randn(2, 3, 2, 5, 16, generator=generator)
    qkv = projection(tokens).unflatten(-1, (3, 2, 8))  # a view, as CrossViewAttention makes it
    visible = torch.rand(2, 3, 2, 5, generator=generator) < 0.5
    torch.testing.assert_close(
        row_attention(qkv, visible, "triton"),
        reference_row_attention(qkv, visible),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_inputs_raise_with_expected_and_actual():
    qkv = torch.randn(2, 3, 2, 5, 3, 2, 8)
    with pytest.raises(ValueError, match=r"expected qkv \(B, N, H, W, 3, heads, D\), got shape"):
        row_attention(qkv.flatten(-2))
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 5\), got \(2, 3, 2, 4\)"):
        row_attention(qkv, torch.ones(2, 3, 2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"expected a bool key_visible, got torch\.float32"):
        row_attention(qkv, torch.ones(2, 3, 2, 5))
    with pytest.raises(TypeError, match="floating-point qkv"):
        row_attention(qkv.long())


def test_dispatch_defaults_and_choices(monkeypatch):
    monkeypatch.delenv("GEOMIM_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qkv = torch.randn(1, 2, 1, 3, 3, 1, 4)
    row_attention(qkv)
    assert last_backend("row_attention") == "sdpa"  # the CPU default
    monkeypatch.setenv("GEOMIM_KERNELS", "row_attention=reference")
    row_attention(qkv)
    assert last_backend("row_attention") == "reference"
    set_backend("row_attention", "sdpa")
    try:
        monkeypatch.delenv("GEOMIM_KERNELS")
        assert choose_backend("row_attention", qkv.device) == "sdpa"
    finally:
        set_backend("row_attention", None)
    with pytest.raises(RuntimeError, match="needs a CUDA device and Triton"):
        row_attention(qkv, backend="triton")
    with pytest.raises(ValueError, match=r"has no backend 'flex'; choose from \('triton'"):
        row_attention(qkv, backend="flex")


@pytest.mark.parametrize(
    "kernel", ["_forward_kernel", "_backward_query_kernel", "_backward_key_kernel"]
)
@pytest.mark.usefixtures("compiled")
def test_kernels_compile_for_sm90(kernel):
    constexprs = {"HAS_MASK": True, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32,
                  "PRECISION": "tf32", "UPCAST_DOT": False}  # fmt: skip
    pointers = {f"{name}_ptr": "*bf16" for name in ("qkv", "out", "grad_out", "grad_qkv")}
    pointers["visible_ptr"] = "*i8"
    compile_for_gpu(getattr(module._kernels(), kernel), pointers, constexprs)


@cuda
@pytest.mark.parametrize("mask", ["none", "random"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.usefixtures("compiled")
def test_gpu_matches_reference_at_the_decoder_size(mask, dtype):
    problem = make_problem((2, 6, 16, 44, 16, 32), mask, device="cuda")
    fast = run("triton", problem, dtype)
    rounded = {**problem, **{n: problem[n].to(dtype).float() for n in ("qkv", "grad")}}
    assert_matches(fast, run("reference", rounded), 1e-5 if dtype == torch.float32 else 2e-2)


@cuda
@pytest.mark.usefixtures("compiled")
def test_cuda_calls_run_the_cuda_default(monkeypatch):
    monkeypatch.delenv("GEOMIM_KERNELS", raising=False)
    row_attention(torch.randn(1, 2, 1, 3, 3, 1, 16, device="cuda"))
    assert last_backend("row_attention") == default_backend("row_attention", "cuda") == "sdpa"
