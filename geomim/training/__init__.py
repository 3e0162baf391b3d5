"""Pretraining runs: the config, the loop, checkpoints, distributed execution, what a user sees.

`python -m geomim.train --config CONFIG [key=value ...]` runs one; `python -m geomim.export`
turns its checkpoint into a timm-loadable backbone folder.
"""

from geomim.training.config import ConfigError, TrainConfig, load_config
from geomim.training.teacher_factory import build_teacher

__all__ = ["ConfigError", "TrainConfig", "build_teacher", "load_config"]
