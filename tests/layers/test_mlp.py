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
    torch.testing.assert_close(chunked, expected, atol=0, rtol=0)


def test_parameters_keep_timm_names():
    assert sorted(name for name, _ in ChunkedMlp(4, 8).named_parameters()) == [
        "fc1.bias",
        "fc1.weight",
        "fc2.bias",
        "fc2.weight",
    ]
