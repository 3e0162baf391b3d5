"""Sum-pooling of frustum features into BEV cells: out[cell] = sum of the features landing there.

The fast path is one `index_add_` of whole feature rows; its backward is an `index_select` of
rows, the exact transpose, so gradients need no custom autograd. Measured on 2 CPU cores at the
official size (498k frustum points x 80 channels into 360 x 360 cells, real camera geometry),
forward plus backward: `index_add_` 80-110 ms and `scatter_add_` with the index broadcast over
channels 90-110 ms, a tie (on uniformly random cells `index_add_` wins, 144 vs 161 ms); sorting
first, then `index_add_` / `scatter_add_` / `segment_reduce`, 390-510 ms (the sort and the
permuted copy cost more than locality saves); a sparse CSR matmul 170-200 ms; the cumsum trick
of the original LSS 1.3 s, and its float32 running sum over 500k rows is off by 3e-3.
`index_add_` is also the one CUDA makes deterministic under `torch.use_deterministic_algorithms`;
by default CUDA adds atomically, so the last bits of a sum may vary from run to run there.

Dropped points are cheapest sent to a spare cell past the end (pool into num_cells + 1, cut the
last row off): ~3x faster forward plus backward than selecting the kept rows first, which
copies (P, C).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bev_pool(features: Tensor, cells: Tensor, num_cells: int) -> Tensor:
    """(P, C) features and (P,) int64 flat cell indices in [0, num_cells) -> (num_cells, C) sums."""
    _check(features, cells)
    return features.new_zeros(num_cells, features.shape[1]).index_add_(0, cells, features)


def reference_bev_pool(features: Tensor, cells: Tensor, num_cells: int) -> Tensor:
    """The definition, element by element: out[cells[p], c] += features[p, c]."""
    _check(features, cells)
    index = cells[:, None].expand_as(features)
    return features.new_zeros(num_cells, features.shape[1]).scatter_add_(0, index, features)


def _check(features: Tensor, cells: Tensor) -> None:
    if features.ndim != 2 or cells.shape != features.shape[:1]:
        raise ValueError(
            f"expected features (P, C) and cells (P,), got {tuple(features.shape)} and "
            f"{tuple(cells.shape)}"
        )
    if cells.dtype != torch.int64:
        raise TypeError(f"expected int64 cell indices, got {cells.dtype}")
