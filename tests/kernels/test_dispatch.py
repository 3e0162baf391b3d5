"""Backend choice: argument, environment, process setting, device default; errors name choices."""

from __future__ import annotations

import importlib

import pytest
import torch

from geomim.kernels import bev_pool, last_backend, set_backend, window_attention
from geomim.kernels.dispatch import (
    BACKENDS,
    CUDA_DEFAULTS,
    KernelBackendError,
    choose_backend,
    default_backend,
    usable_backends,
)
from geomim.kernels.window_attention import window_mask_from_groups
from geomim.layers import WindowAttention

CPU = torch.device("cpu")
attention = importlib.import_module("geomim.kernels.window_attention")


def test_the_argument_beats_the_environment_which_beats_the_process_setting(monkeypatch):
    monkeypatch.delenv("GEOMIM_KERNELS", raising=False)
    assert choose_backend("window_attention", CPU) == "chunked"  # the CPU default
    set_backend("window_attention", "flex")
    try:
        assert choose_backend("window_attention", CPU) == "flex"
        monkeypatch.setenv("GEOMIM_KERNELS", "window_attention=reference,bev_pool=index_add")
        assert choose_backend("window_attention", CPU) == "reference"
        assert choose_backend("bev_pool", CPU) == "index_add"
        assert choose_backend("window_attention", CPU, "sdpa") == "sdpa"
        monkeypatch.setenv("GEOMIM_KERNELS", "reference")  # every op that has it
        assert choose_backend("bev_pool", CPU) == "reference"
    finally:
        set_backend("window_attention", None)


def test_the_backend_that_ran_can_be_asked_for(monkeypatch):
    monkeypatch.delenv("GEOMIM_KERNELS", raising=False)
    attention = WindowAttention(dim=8, num_heads=2, window=2)
    attention(torch.randn(3, 4, 8))
    assert last_backend("window_attention") == "chunked"
    attention.fused_attn = False
    attention(torch.randn(3, 4, 8))
    assert last_backend("window_attention") == "reference"


def test_unknown_ops_and_backends_are_errors_listing_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"has no backend 'cuda'; choose from \('triton'"):
        set_backend("window_attention", "cuda")
    with pytest.raises(ValueError, match="unknown op 'attention'"):
        last_backend("attention")
    monkeypatch.setenv("GEOMIM_KERNELS", "attention=sdpa")
    with pytest.raises(ValueError, match="GEOMIM_KERNELS: unknown op 'attention'"):
        choose_backend("window_attention", CPU)


def test_triton_without_a_gpu_or_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qkv = torch.randn(2, 4, 3, 1, 4)
    with pytest.raises(RuntimeError, match="needs a CUDA device and Triton"):
        window_attention(
            qkv, torch.randn(9, 1), torch.zeros(4, 4, dtype=torch.long), None, "triton"
        )


def test_the_triton_backends_run_through_the_dispatch_under_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, 16, 3, 2, 8, generator=generator)
    table = torch.randn(49, 2, generator=generator)
    index = torch.randint(0, 49, (16, 16), generator=generator)
    mask = window_mask_from_groups(torch.randint(-1, 2, (2, 16), generator=generator))
    fused = window_attention(qkv, table, index, mask, backend="triton")
    assert last_backend("window_attention") == "triton"
    official = window_attention(qkv, table, index, mask, backend="reference")
    torch.testing.assert_close(fused, official, atol=1e-5, rtol=1e-5)

    features = torch.randn(50, 3, generator=generator)
    cells = torch.randint(0, 9, (50,), generator=generator)
    pooled = bev_pool(features, cells, 8, backend="triton")  # cell 8 = dropped
    torch.testing.assert_close(pooled, bev_pool(features, cells, 9, "reference")[:8])


def test_cuda_defaults_are_pytorch_maintained_until_a_gpu_run_says_otherwise():
    assert "triton" not in CUDA_DEFAULTS.values()
    assert default_backend("window_attention", "cuda") == "reference"  # see CUDA_DEFAULTS
    assert set(CUDA_DEFAULTS) == set(BACKENDS)


def test_typos_in_the_environment_are_errors_listing_the_valid_names(monkeypatch):
    monkeypatch.setenv("GEOMIM_KERNELS", "refrence")
    with pytest.raises(ValueError, match=r"GEOMIM_KERNELS='refrence': no op has that backend"):
        choose_backend("window_attention", CPU)
    monkeypatch.setenv("GEOMIM_KERNELS", "window_attention=sdpa,bev_pool=scater")
    with pytest.raises(ValueError, match=r"bev_pool has no backend 'scater'; choose from"):
        choose_backend("window_attention", CPU)  # a typo for another op is caught too


def test_triton_is_usable_only_on_cuda_or_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in usable_backends("bev_pool", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if pytest.importorskip("triton"):
        assert "triton" in usable_backends("bev_pool", "cpu")


def test_a_backend_that_fails_to_run_names_the_op_backend_and_setting(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(attention, "_flex", broken)
    qkv = torch.randn(2, 4, 3, 1, 4)
    index = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(KernelBackendError) as raised:
        window_attention(qkv, torch.randn(9, 1), index, None, "flex")
    message = str(raised.value)
    assert "window_attention: backend 'flex' failed on cpu" in message
    assert "no kernel image" in message
    assert "GEOMIM_KERNELS=window_attention=chunked" in message
    assert "python -m geomim.check --device cpu" in message
