"""The paper's teacher: BEVFusion's LiDAR-only sparse encoder on hard-voxelised points.

points B x (P_b, 5) -> hard voxelisation, mean of each voxel's points -> sparse encoder ->
(B, 256, 180, 180) BEV map over +-54 m in 0.6 m cells (x on dim -2), with the default config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call

from geomim.checkpoints import fit_to_model, read_checkpoint
from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig, spconv_supports
from geomim.lidar.voxelize import VoxelBatch, VoxelConfig, voxelize
from geomim.pretrain.teacher import Teacher, TeacherMeta

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from geomim.lidar.convert import ConversionReport


@dataclass(frozen=True)
class LiDARTeacherConfig:
    """The official teacher: 0.075 x 0.075 x 0.2 m voxels over +-54 m, sparse shape 1440^2 x 41."""

    voxels: VoxelConfig = field(default_factory=VoxelConfig)
    encoder: SparseEncoderConfig = field(default_factory=SparseEncoderConfig)

    def __post_init__(self) -> None:
        grid, sparse_shape = self.voxels.grid_size, self.encoder.sparse_shape
        if any(cells > size for cells, size in zip(grid, sparse_shape, strict=True)):
            raise ValueError(
                f"the voxel grid {grid} must fit in the encoder's sparse shape {sparse_shape}; "
                f"the official teacher uses the grid plus one z layer: {(*grid[:2], grid[2] + 1)}"
            )


class LiDARTeacher(Teacher):
    """Frozen LiDAR BEV teacher: `teacher(points, meta)` -> (B, 256, 180, 180) by default.

    Build it with `LiDARTeacher.from_checkpoint("lidar-only-det.pth")` (BEVFusion's LiDAR-only
    detector, or the safetensors `python -m geomim.lidar.convert` writes), or with random weights
    from a `LiDARTeacherConfig`. spconv's PyPI wheel runs on CPU only: on another device the
    encoder runs on CPU (a warning says so once) and the map comes back to the points' device.
    """

    def __init__(self, config: LiDARTeacherConfig | None = None) -> None:
        super().__init__()
        self.config = config or LiDARTeacherConfig()
        self.encoder = SparseEncoder(self.config.encoder)
        self.checkpoint_report: ConversionReport | None = None
        self.requires_grad_(False).eval()
        self._warned_cpu_fallback = False

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, config: LiDARTeacherConfig | None = None
    ) -> LiDARTeacher:
        """A teacher with the weights of an official or converted checkpoint; logs dropped keys."""
        teacher = cls(config)
        from geomim.lidar.convert import official_lidar_to_geomim  # (keeps `python -m` of it clean)

        converted, report = official_lidar_to_geomim(read_checkpoint(path))
        fitted = fit_to_model(converted, teacher.encoder, "LiDAR sparse encoder")
        teacher.encoder.load_state_dict(fitted, strict=True)
        teacher.checkpoint_report = report
        logger.info("LiDAR teacher from %s: %s", path, report)
        return teacher

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        """(C, X, Y) of one sample's map: (256, 180, 180) for the official teacher."""
        return self.config.encoder.bev_shape

    @property
    def bev_cell_size(self) -> tuple[float, float]:
        """Metres per map cell (x, y); cell (i, j) starts at point_range min + (i, j) * size."""
        stride = 2 ** (len(self.config.encoder.widths) - 1)
        return tuple(size * stride for size in self.config.voxels.voxel_size[:2])

    def bev_map(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
        """(B x (P_b, 5)) -> (B, C, X, Y); `meta` is unused: the points are already augmented."""
        self._check_points(points)
        batch = voxelize(points, self.config.voxels)
        device = batch.features.device
        if spconv_supports(device):
            return self.encoder(batch.features, batch.coords, batch.batch_size)
        return self._encode_on_cpu(batch).to(device)

    def identity(self) -> dict:
        """Class, config and a fingerprint of the weights, for teacher-feature cache checks."""
        config = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples -> lists
        return {"class": type(self).__qualname__, "config": config, "weights": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the encoder's tensors, names, shapes and dtypes."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.encoder.state_dict().items()):
            digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:16]

    def _encode_on_cpu(self, batch: VoxelBatch) -> Tensor:
        """Run the encoder on CPU copies of its weights (spconv has no kernel for the device)."""
        if not self._warned_cpu_fallback:
            warnings.warn(
                f"the installed spconv has no kernels for {batch.features.device.type}: the LiDAR "
                "teacher's sparse encoder runs on CPU (install the spconv-cuXXX wheel matching "
                "your CUDA to run it on the GPU)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_cpu_fallback = True
        tensors = {**dict(self.encoder.named_parameters()), **dict(self.encoder.named_buffers())}
        cpu = torch.device("cpu")
        inputs = (batch.features.to(cpu), batch.coords.to(cpu), batch.batch_size)
        return functional_call(self.encoder, {k: v.to(cpu) for k, v in tensors.items()}, inputs)

    def _check_points(self, points: list[Tensor]) -> None:
        channels = self.config.encoder.in_channels
        for index, cloud in enumerate(points):
            if not isinstance(cloud, Tensor) or cloud.ndim != 2 or cloud.shape[1] != channels:
                shape = tuple(cloud.shape) if isinstance(cloud, Tensor) else type(cloud).__name__
                raise ValueError(
                    f"LiDARTeacher expects B point clouds of shape (P, {channels}) (x, y, z, "
                    f"intensity, time lag); cloud {index} is {shape}"
                )
