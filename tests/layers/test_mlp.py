"""The chunked inference MLP gives the unchunked results."""

from __future__ import annotations

import torch

from geomim.layers import ChunkedMlp
from geomim.layers import mlp as mlp_module


def test_chunked_inference_matches_whole_map(monkeypatch):
    torch.manual_seed(0)
    mlp = ChunkedMlp(8, 32)
    x = torch.randn(2, 5, 7, 8)
    expected = mlp(x)  # grad enabled: whole map
    monkeypatch.setattr(mlp_module, "CHUNK_BYTES", 32 * 4 * 6)  # 6 rows per chunk
    with torch.no_grad():
        chunked = mlp(x)
    # Not bit for bit: each chunk is a GEMM of another shape, and BLAS may block (and so sum)
    # rows differently by shape and by CPU (1.2e-7 apart with AVX2 on AMD); float32 rounding.
    torch.testing.assert_close(chunked, expected, atol=1e-6, rtol=1e-5)


def test_parameters_keep_timm_names():
    assert sorted(name for name, _ in ChunkedMlp(4, 8).named_parameters()) == [
        "fc1.bias",
        "fc1.weight",
        "fc2.bias",
        "fc2.weight",
    ]


def test_only_the_cpu_runs_in_chunks(monkeypatch):
    """On a GPU chunks only add launches (0.73x the official speed on an H200): one whole-map
    call there. The meta device stands in for any non-CPU device."""
    monkeypatch.setattr(mlp_module, "CHUNK_BYTES", 32 * 4 * 6)  # 6 rows per chunk
    calls = []

    def counting_fc1(module, inputs, output):
        calls.append(inputs[0].shape[0])

    for device in ("cpu", "meta"):
        mlp = ChunkedMlp(8, 32).to(device)
        mlp.fc1.register_forward_hook(counting_fc1)
        calls.clear()
        with torch.no_grad():
            mlp(torch.randn(70, 8, device=device))
        assert calls == ([6] * 11 + [4] if device == "cpu" else [70]), (device, calls)
