"""timm's Mlp, run in row chunks at CPU inference so its hidden activations stay in cache."""

from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import Tensor

# Hidden activations per chunk. Fresh multi-MiB tensors cost page faults on every forward (the
# allocator hands them back to the OS); chunks this size are reused from the heap and stay in cache.
CHUNK_BYTES = 8 * 1024 * 1024


class ChunkedMlp(Mlp):
    """fc1 -> GELU -> fc2 (timm's `Mlp`, same parameters); on the CPU with autograd off and
    `chunked` set, large inputs go through in row chunks, with the unchunked forward's results
    up to float32 rounding (each chunk is a GEMM of another shape, which BLAS may sum in another
    order). Never under `torch.compile` (which fuses the whole map itself), nor on a GPU, where
    chunks only add launches (with them an H200 ran geomim_base's forward at 0.73x the official
    formulation's speed)."""

    def __init__(self, in_features: int, hidden_features: int, chunked: bool = True) -> None:
        super().__init__(in_features, hidden_features, act_layer=torch.nn.GELU)
        self.chunked = chunked

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1.out_features
        rows = max(1, CHUNK_BYTES // (hidden * x.element_size()))
        flat = x.reshape(-1, x.shape[-1])
        if (
            not self.chunked
            or x.device.type != "cpu"
            or torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or flat.shape[0] <= rows
        ):
            return super().forward(x)
        chunks = [super(ChunkedMlp, self).forward(part) for part in flat.split(rows)]
        return torch.cat(chunks).view(*x.shape[:-1], -1)
