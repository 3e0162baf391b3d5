"""The teacher protocol: a frozen module mapping a batch's LiDAR points to a BEV feature map.

Every teacher is a `Teacher`: called as `teacher(points, meta)` with B point clouds (P_b, 5) in
the augmented LiDAR frame and the batch's `TeacherMeta`; returns (B, C, X, Y) in fp32 (x on dim
-2), computed in eval mode without gradients whatever mode its parent is in or autocast is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TeacherMeta:
    """What a teacher may need besides the points: which samples, and how they were augmented."""

    tokens: list[str]
    lidar_aug: Tensor  # (B, 4, 4) original -> augmented LiDAR frame (flips, rotation, scale)


class Teacher(nn.Module):
    """Base of every teacher: frozen (eval mode, no gradients, fp32); subclasses define bev_map."""

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: eval mode whatever the parent asks

    def forward(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
        if len(points) != len(meta.tokens):
            raise ValueError(f"{len(points)} point clouds for {len(meta.tokens)} samples")
        device_type = points[0].device.type if points else "cpu"
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            bev = self.bev_map([cloud.float() for cloud in points], meta)
        if bev.ndim != 4 or bev.shape[0] != len(points):
            raise ValueError(
                f"{type(self).__name__} returned {tuple(bev.shape)}, expected (B={len(points)}, "
                "C, X, Y)"
            )
        return bev.float()

    def bev_map(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
        """(B x (P_b, 5)) -> (B, C, X, Y); runs under no_grad in fp32."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What makes this teacher's maps what they are (class and config), for cache checks."""
        return {"class": type(self).__qualname__}


class ModuleTeacher(Teacher):
    """Any module as a teacher, e.g. an mmdet3d LiDAR detector's backbone + neck.

    `module(points)` (or `module(points, meta)` with `pass_meta=True`) must return (B, C, X, Y).
    Wrap the parts in a small `nn.Module` or pass a function of them as `fn` when the model's
    own call signature differs.
    """

    def __init__(
        self,
        module: nn.Module,
        fn: Callable[[nn.Module, list[Tensor], TeacherMeta], Tensor] | None = None,
        pass_meta: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.fn, self.pass_meta = fn, pass_meta
        self.name = name or type(module).__qualname__

    def bev_map(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
        if self.fn is not None:
            return self.fn(self.module, points, meta)
        return self.module(points, meta) if self.pass_meta else self.module(points)

    def identity(self) -> dict:
        return {"class": type(self).__qualname__, "module": self.name}


class HistogramTeacher(Teacher):
    """A stand-in teacher for tests, demos and benchmarks without the sparse-conv one: per-cell
    log point count and mean height on a square BEV grid, mapped to `channels` by a fixed random
    1x1 projection: (B x (P, >=3) points) -> (B, channels, cells, cells).

    It is not the paper's teacher (a BEVFusion LiDAR detector), only a fixed function of the
    points. Defaults: the official teacher's 180 x 180 grid of 0.6 m cells over +-54 m, 256
    channels.
    """

    def __init__(self, channels: int = 256, cells: int = 180, bound: float = 54.0) -> None:
        super().__init__()
        self.channels, self.cells, self.bound = channels, cells, bound
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(channels, 2, generator=generator))

    def bev_map(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
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

    def identity(self) -> dict:
        return {
            "class": type(self).__qualname__,
            "channels": self.channels,
            "cells": self.cells,
            "bound": self.bound,
        }


def teacher_meta(tokens: list[str], lidar_aug: Tensor | None = None) -> TeacherMeta:
    """Meta for points that were not augmented (identity LiDAR augmentation)."""
    if lidar_aug is None:
        lidar_aug = torch.eye(4).expand(len(tokens), 4, 4)
    return TeacherMeta(list(tokens), lidar_aug)
