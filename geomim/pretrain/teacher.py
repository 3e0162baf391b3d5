"""A stand-in for the LiDAR teacher, for tests, demos and benchmarks without the sparse-conv one.

It is not the paper's teacher (a BEVFusion LiDAR detector): its BEV map is a fixed, untrained
function of the points, enough to exercise and benchmark the pretraining pipeline end to end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class HistogramTeacher(nn.Module):
    """Per-cell log point count and mean height on a square BEV grid, mapped to `channels` by a
    fixed random 1x1 projection: (B x (P, >=3) points) -> (B, channels, cells, cells).

    Defaults: the official teacher's 180 x 180 grid of 0.6 m cells over +-54 m, 256 channels.
    """

    def __init__(self, channels: int = 256, cells: int = 180, bound: float = 54.0) -> None:
        super().__init__()
        self.cells, self.bound = cells, bound
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(channels, 2, generator=generator))

    def forward(self, points: list[Tensor]) -> Tensor:
        maps = []
        for cloud in points:
            scaled = (cloud[:, :2] + self.bound) / (2 * self.bound) * self.cells
            cell = scaled.floor().long()
            inside = ((cell >= 0) & (cell < self.cells)).all(dim=1)
            flat = cell[inside, 0] * self.cells + cell[inside, 1]
            ones = torch.ones(len(flat), device=cloud.device)
            count = cloud.new_zeros(self.cells**2).index_add_(0, flat, ones)
            height = cloud.new_zeros(self.cells**2).index_add_(0, flat, cloud[inside, 2])
            features = torch.stack([count.log1p(), height / count.clamp(min=1)])
            maps.append(features.view(2, self.cells, self.cells))
        return torch.einsum("ck,bkxy->bcxy", self.weight, torch.stack(maps))
