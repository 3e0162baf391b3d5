"""The LiDAR teacher's sparse 3D encoder (BEVFusion's LiDAR-only `SparseEncoder`) on spconv 2.

voxels (V, 5) at (batch, x, y, z) -> stem: submanifold conv 3^3 -> four stages of two residual
basic blocks, the first three ending in a stride-2 sparse conv (16 -> 32 -> 64 -> 128 channels)
-> `to_bev`: a (1, 1, 3) stride (1, 1, 2) conv folding z -> dense (B, 128 * 2, X / 8, Y / 8).
Sparse shape (1440, 1440, 41) -> (720, 720, 21) -> (360, 360, 11) -> (180, 180, 5) -> (180, 180, 2).

spconv is imported when an encoder is built, so `import geomim` never needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from spconv.pytorch import SparseConvTensor

INSTALL_HINT = 'pip install "geomim[lidar]" (CPU) or the spconv-cuXXX wheel matching your CUDA'


def import_spconv() -> ModuleType:
    """`spconv.pytorch`, or an ImportError saying how to install it."""
    try:
        spconv = importlib.import_module("spconv.pytorch")
    except ImportError as error:
        raise ImportError(
            f"the LiDAR teacher needs spconv >= 2.3.6, which is not installed: {INSTALL_HINT}"
        ) from error
    layout = importlib.import_module("spconv.constants").SAVED_WEIGHT_LAYOUT
    if layout in ("RSKC", "RSCK"):
        # spconv's load hook would permute weights that geomim has already converted
        raise RuntimeError(
            f"SPCONV_SAVED_WEIGHT_LAYOUT={layout} is set; unset it: geomim converts official "
            "sparse conv weights to spconv 2's layout itself"
        )
    return spconv


def spconv_supports(device: torch.device) -> bool:
    """Whether the installed spconv has kernels for `device` (the PyPI `spconv` is CPU-only)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return not importlib.import_module("spconv.cppconstants").CPU_ONLY_BUILD
    return False


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads; restore the previous count, also on errors."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class SparseEncoderConfig:
    """The official teacher's encoder (pretrain_{base,large}_50ep.yaml)."""

    in_channels: int = 5
    sparse_shape: tuple[int, int, int] = (1440, 1440, 41)  # (X, Y, Z): voxel grid + 1 z layer
    widths: tuple[int, ...] = (16, 32, 64, 128)  # of each stage's basic blocks
    blocks_per_stage: int = 2
    # padding (x, y, z) of the stride-2 conv ending each stage but the last
    down_paddings: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 1, 1), (1, 1, 0))
    out_channels: int = 128
    norm_eps: float = 1e-3

    def __post_init__(self) -> None:
        if len(self.sparse_shape) != 3 or min(self.sparse_shape) < 1:
            raise ValueError(
                f"sparse_shape must be 3 positive sizes (X, Y, Z), got {self.sparse_shape}"
            )
        if len(self.down_paddings) != len(self.widths) - 1:
            raise ValueError(
                f"down_paddings needs one (x, y, z) padding per stage but the last: "
                f"{len(self.widths) - 1} for widths {self.widths}, got {len(self.down_paddings)}"
            )
        object.__setattr__(self, "sparse_shape", tuple(int(s) for s in self.sparse_shape))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        paddings = tuple(tuple(int(p) for p in padding) for padding in self.down_paddings)
        object.__setattr__(self, "down_paddings", paddings)
        shapes = self.stage_shapes()
        if min(shapes["to_bev"]) < 1:
            raise ValueError(
                f"sparse_shape {self.sparse_shape} is too small: the encoder leaves no cell "
                f"(shapes after each stage: {list(shapes.values())}); the teacher's is "
                "(1440, 1440, 41)"
            )

    def stage_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Sparse shape (X, Y, Z) after the stem, each stage and `to_bev`."""
        shape = self.sparse_shape
        shapes = {"stem": shape}
        for index in range(len(self.widths)):
            if index < len(self.down_paddings):
                padding = self.down_paddings[index]
                shape = tuple((n + 2 * p - 3) // 2 + 1 for n, p in zip(shape, padding, strict=True))
            shapes[f"stages.{index}"] = shape
        shapes["to_bev"] = (shape[0], shape[1], (shape[2] - 3) // 2 + 1)
        return shapes

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        """Shape (C, X, Y) of one sample's output map; C = out_channels * the z cells left."""
        x, y, z = self.stage_shapes()["to_bev"]
        return (self.out_channels * z, x, y)


class SparseConvNormAct(nn.Module):
    """A sparse conv (no bias), BatchNorm1d and ReLU on the active sites."""

    def __init__(self, conv: nn.Module, channels: int, eps: float) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        x = self.conv(x)
        return x.replace_feature(F.relu(self.norm(x.features)))


class SparseBasicBlock(nn.Module):
    """ReLU(BN(SubM(ReLU(BN(SubM(x))))) + x), both convs sharing the stage's rulebook."""

    def __init__(self, channels: int, indice_key: str, eps: float) -> None:
        super().__init__()
        spconv = import_spconv()
        self.conv1 = _submanifold(spconv, channels, channels, indice_key)
        self.norm1 = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)
        self.conv2 = _submanifold(spconv, channels, channels, indice_key)
        self.norm2 = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(F.relu(self.norm1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(F.relu(self.norm2(out.features) + x.features))


class SparseStage(nn.Module):
    """Basic blocks at one resolution, then (optionally) a stride-2 sparse conv to the next."""

    def __init__(
        self,
        width: int,
        blocks: int,
        index: int,
        eps: float,
        next_width: int | None = None,
        padding: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        spconv = import_spconv()
        key = f"subm{index + 1}"  # the official keys; stage 1 shares its rulebook with the stem
        self.blocks = nn.ModuleList(SparseBasicBlock(width, key, eps) for _ in range(blocks))
        self.downsample = None
        if next_width is not None:
            conv = spconv.SparseConv3d(
                width, next_width, 3, stride=2, padding=padding, bias=False,
                indice_key=f"spconv{index + 1}",
            )  # fmt: skip
            self.downsample = SparseConvNormAct(conv, next_width, eps)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class SparseEncoder(nn.Module):
    """Voxel features at (batch, x, y, z) -> BEV map (B, C * D, X', Y'), channel = c * D + d."""

    def __init__(self, config: SparseEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SparseEncoderConfig()
        spconv = import_spconv()
        widths, eps = config.widths, config.norm_eps
        stem = _submanifold(spconv, config.in_channels, widths[0], "subm1")
        self.stem = SparseConvNormAct(stem, widths[0], eps)
        self.stages = nn.ModuleList()
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            self.stages.append(
                SparseStage(
                    width, config.blocks_per_stage, index, eps,
                    next_width=None if last else widths[index + 1],
                    padding=None if last else config.down_paddings[index],
                )
            )  # fmt: skip
        to_bev = spconv.SparseConv3d(
            widths[-1], config.out_channels, (1, 1, 3), stride=(1, 1, 2), padding=0, bias=False,
            indice_key="spconv_down2",
        )  # fmt: skip
        self.to_bev = SparseConvNormAct(to_bev, config.out_channels, eps)

    def forward(self, features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """(V, C_in) features at (V, 4) (batch, x, y, z) coords -> (B, C * D, X', Y')."""
        self._check_inputs(features, coords, batch_size)
        if len(features) == 0:
            return features.new_zeros(batch_size, *self.config.bev_shape)
        sparse = self._run_stages(features, coords, batch_size)["to_bev"]
        return bev_from_sparse(sparse.features, sparse.indices, batch_size, sparse.spatial_shape)

    def forward_stages(
        self, features: Tensor, coords: Tensor, batch_size: int
    ) -> dict[str, SparseConvTensor]:
        """Each sparse output (`SparseConvTensor`): "stem", "stages.0", ..., "to_bev"."""
        self._check_inputs(features, coords, batch_size)
        return self._run_stages(features, coords, batch_size)

    def _run_stages(
        self, features: Tensor, coords: Tensor, batch_size: int
    ) -> dict[str, SparseConvTensor]:
        spconv = import_spconv()
        x = spconv.SparseConvTensor(
            features, coords.int().contiguous(), list(self.config.sparse_shape), batch_size
        )
        with _single_threaded_on_cpu(features.device):
            outputs = {"stem": (x := self.stem(x))}
            for index, stage in enumerate(self.stages):
                outputs[f"stages.{index}"] = x = stage(x)
            outputs["to_bev"] = self.to_bev(x)
        return outputs

    def _check_inputs(self, features: Tensor, coords: Tensor, batch_size: int) -> None:
        channels = self.config.in_channels
        if features.ndim != 2 or features.shape[1] != channels:
            raise ValueError(f"features must be (V, {channels}), got {tuple(features.shape)}")
        if coords.shape != (len(features), 4) or coords.is_floating_point():
            raise ValueError(
                f"coords must be integer (V={len(features)}, 4) (batch, x, y, z), got "
                f"{tuple(coords.shape)} {coords.dtype}"
            )
        if len(coords) == 0:
            return
        upper = torch.tensor([batch_size, *self.config.sparse_shape], device=coords.device)
        lowest, highest = coords.amin(dim=0), coords.amax(dim=0)
        if (lowest < 0).any() or (highest >= upper).any():
            raise ValueError(
                f"coords (batch, x, y, z) must lie in [0, {upper.tolist()}) (batch_size and the "
                f"sparse shape), got minima {lowest.tolist()} and maxima {highest.tolist()}"
            )


def bev_from_sparse(
    features: Tensor, coords: Tensor, batch_size: int, shape: Sequence[int]
) -> Tensor:
    """(N, C) at (batch, x, y, z) in a (X, Y, D) grid -> (B, C * D, X, Y), channel = c * D + d."""
    x, y, depth = shape
    dense = features.new_zeros(batch_size, x, y, depth, features.shape[1])
    batch, cx, cy, cz = coords.long().unbind(dim=1)
    dense[batch, cx, cy, cz] = features  # empty cells stay 0
    return dense.permute(0, 4, 3, 1, 2).reshape(batch_size, -1, x, y)  # (B, C, D, X, Y) folded


def _single_threaded_on_cpu(device: torch.device) -> AbstractContextManager:
    # spconv 2's CPU conv returns wrong rows at random when torch runs it on several threads
    return torch_threads(1) if device.type == "cpu" else nullcontext()


def _submanifold(spconv: ModuleType, in_channels: int, out_channels: int, key: str) -> nn.Module:
    return spconv.SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=key)
