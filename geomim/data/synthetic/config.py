"""What `generate` writes (`SyntheticConfig`), and the clock its key frames and sweeps follow."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from geomim.data.cameras import CAMERAS

# Time: microseconds, like nuScenes.
KEY_FRAME_US = 500_000  # 2 Hz samples
SWEEP_US = 50_000  # 20 Hz LiDAR
MAX_SWEEPS = KEY_FRAME_US // SWEEP_US - 1  # sweeps that fit between two key frames


@dataclass(frozen=True)
class SyntheticConfig:
    """What `generate` writes: how many scenes and frames, the seed, the sensor resolutions."""

    scenes: int = 2
    samples_per_scene: int = 4
    sweeps_per_sample: int = 2
    seed: int = 0
    width: int = 1600
    height: int = 900
    beams: int = 32

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{spec.name} must be an int, got {type(value).__name__}")
            lowest = 0 if spec.name in ("sweeps_per_sample", "seed") else 1
            if value < lowest:
                raise ValueError(f"{spec.name} must be >= {lowest}, got {value}")
            object.__setattr__(self, spec.name, int(value))  # numpy integers -> JSON-able ints
        if self.sweeps_per_sample > MAX_SWEEPS:
            raise ValueError(
                f"sweeps_per_sample must be <= {MAX_SWEEPS} (20 Hz sweeps between 2 Hz key "
                f"frames), got {self.sweeps_per_sample}"
            )

    @property
    def frames_per_sample(self) -> int:
        """Sensor files written per sample: the cameras, the key-frame LiDAR and its sweeps."""
        return len(CAMERAS) + 1 + self.sweeps_per_sample
