"""The per-sample index of a nuScenes dataset as flat numpy arrays.

Arrays, not lists of dicts: they load in a fraction of a second for the full trainval set, are
saved without pickle (`np.savez`, read with `allow_pickle=False`), and stay shared between
data-loader workers instead of being copied page by page as Python objects' reference counts change.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from geomim.checkpoints import write_atomic


@dataclass(frozen=True)
class SampleIndex:
    """S samples, up to K previous LiDAR sweeps each ('' paths pad), C cameras."""

    cameras: np.ndarray  # (C,) channel names
    tokens: np.ndarray  # (S,)
    timestamps: np.ndarray  # (S,) int64 microseconds, of the key-frame LiDAR
    lidar_paths: np.ndarray  # (S,) relative to the dataroot
    sweep_paths: np.ndarray  # (S, K)
    sweep_timestamps: np.ndarray  # (S, K)
    sweep_to_lidar: np.ndarray  # (S, K, 4, 4) sweep sensor -> key-frame LiDAR
    camera_paths: np.ndarray  # (S, C)
    intrinsics: np.ndarray  # (S, C, 3, 3)
    camera_to_ego: np.ndarray  # (S, C, 4, 4)
    camera_to_lidar: np.ndarray  # (S, C, 4, 4) camera -> key-frame LiDAR, ego motion included

    def __len__(self) -> int:
        return len(self.tokens)

    def entry(self, i: int) -> dict:
        """Sample `i` as plain values: token, timestamp, paths, sweeps and per-camera geometry."""
        sweeps = [
            {
                "path": str(self.sweep_paths[i, k]),
                "timestamp": int(self.sweep_timestamps[i, k]),
                "sensor_to_lidar": self.sweep_to_lidar[i, k],
            }
            for k in range(self.sweep_paths.shape[1])
            if self.sweep_paths[i, k]
        ]
        cameras = {
            str(channel): {
                "path": str(self.camera_paths[i, c]),
                "intrinsics": self.intrinsics[i, c],
                "camera_to_ego": self.camera_to_ego[i, c],
                "camera_to_lidar": self.camera_to_lidar[i, c],
            }
            for c, channel in enumerate(self.cameras)
        }
        return {
            "token": str(self.tokens[i]),
            "timestamp": int(self.timestamps[i]),
            "lidar_path": str(self.lidar_paths[i]),
            "sweeps": sweeps,
            "cameras": cameras,
        }

    def subset(self, keep: np.ndarray) -> SampleIndex:
        """The samples where `keep` (a boolean mask or indices) selects them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return SampleIndex(**{k: v if k == "cameras" else v[keep] for k, v in values.items()})

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as an uncompressed .npz (no pickled objects)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        write_atomic(path, lambda temp: _save_npz(temp, arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SampleIndex:
        """Read a `save`d index; a file that is not one (truncated, another format) is a
        ValueError naming it."""
        try:
            with np.load(Path(path), allow_pickle=False) as arrays:
                return cls(**{f.name: arrays[f.name] for f in fields(cls)})
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path} is not a readable sample index ({type(error).__name__}: {error})"
            ) from error

    @classmethod
    def from_entries(
        cls, entries: list[dict], cameras: tuple[str, ...], sweeps: int
    ) -> SampleIndex:
        """Pack `entry`-shaped dicts (as `build_index` reads them from the devkit)."""
        if not entries:
            raise ValueError("an index needs at least one sample")
        count = len(entries)
        sweep_paths = np.full((count, sweeps), "", dtype=object)
        sweep_timestamps = np.zeros((count, sweeps), dtype=np.int64)
        sweep_to_lidar = np.tile(np.eye(4), (count, sweeps, 1, 1))
        for i, entry in enumerate(entries):
            for k, sweep in enumerate(entry["sweeps"][:sweeps]):
                sweep_paths[i, k] = sweep["path"]
                sweep_timestamps[i, k] = sweep["timestamp"]
                sweep_to_lidar[i, k] = sweep["sensor_to_lidar"]

        def per_camera(key: str) -> np.ndarray:
            return np.array([[e["cameras"][c][key] for c in cameras] for e in entries])

        return cls(
            cameras=np.array(cameras),
            tokens=np.array([e["token"] for e in entries]),
            timestamps=np.array([e["timestamp"] for e in entries], dtype=np.int64),
            lidar_paths=np.array([e["lidar_path"] for e in entries]),
            sweep_paths=sweep_paths.astype(str),
            sweep_timestamps=sweep_timestamps,
            sweep_to_lidar=sweep_to_lidar,
            camera_paths=per_camera("path").astype(str),
            intrinsics=per_camera("intrinsics").astype(np.float64),
            camera_to_ego=per_camera("camera_to_ego").astype(np.float64),
            camera_to_lidar=per_camera("camera_to_lidar").astype(np.float64),
        )


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file object, so numpy does not append ".npz"
        np.savez(handle, **arrays)
