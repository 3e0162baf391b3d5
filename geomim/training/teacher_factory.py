"""The teacher a config names: one spec dataclass per kind, and `build_teacher(spec)`.

In a config: `teacher: {kind: lidar, checkpoint: lidar-only-det.pth}` (the paper's teacher),
`teacher: {kind: histogram, channels: 256, cells: 180, bound: 54.0}` (a stand-in), either with
`cache: FOLDER` to read the maps `python -m geomim.teacher cache` stored instead of computing
them (the cache must have been made with the same teacher: checked). Each kind's spec holds its
own fields, so the config validation names unknown keys per kind. A new kind is a spec dataclass
(with a `kind` class variable) in `TEACHER_SPECS` and a branch in `build_teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from geomim.pretrain.teacher import HistogramTeacher, Teacher
from geomim.pretrain.teacher_cache import CachedTeacher


@dataclass(frozen=True)
class TeacherSpec:
    """Base of the teacher specs; `kind` names the spec in configs."""

    kind: ClassVar[str]
    # a teacher-feature cache folder made with this teacher ("" = compute the maps live)
    cache: str = field(default="", kw_only=True)

    def output_shape(self) -> tuple[int, int, int] | None:
        """(C, X, Y) of the teacher's maps where the spec alone tells, else None."""
        return None


@dataclass(frozen=True)
class HistogramTeacherSpec(TeacherSpec):
    """`HistogramTeacher`: a fixed stand-in for the LiDAR teacher (tests, demos, benchmarks).
    Defaults: the official teacher's 256 channels on 180 x 180 cells over +-54 m."""

    kind: ClassVar[str] = "histogram"
    channels: int = 256
    cells: int = 180
    bound: float = 54.0

    def __post_init__(self) -> None:
        for name in ("channels", "cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bound <= 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")

    def output_shape(self) -> tuple[int, int, int]:
        return self.channels, self.cells, self.cells


@dataclass(frozen=True)
class LiDARTeacherSpec(TeacherSpec):
    """`LiDARTeacher`: BEVFusion's LiDAR-only sparse encoder (needs `geomim[lidar]`), from
    `checkpoint` (its `lidar-only-det.pth` or the converted safetensors); "" = random weights,
    for smoke tests only. Its maps are (256, 180, 180)."""

    kind: ClassVar[str] = "lidar"
    checkpoint: str = ""

    def output_shape(self) -> tuple[int, int, int]:
        return 256, 180, 180


TEACHER_SPECS: dict[str, type[TeacherSpec]] = {
    spec.kind: spec for spec in (HistogramTeacherSpec, LiDARTeacherSpec)
}


def build_teacher(spec: TeacherSpec, source: dict | None = None) -> Teacher:
    """The frozen teacher (eval mode, no gradients) a spec describes; with `spec.cache`, the
    cache of it (refused if made with another teacher, or from another data `source`)."""
    teacher = _live_teacher(spec)
    if spec.cache:
        teacher = CachedTeacher(spec.cache, expect_teacher=teacher.identity(), expect_source=source)
    return teacher.eval().requires_grad_(False)


def _live_teacher(spec: TeacherSpec) -> Teacher:
    if isinstance(spec, HistogramTeacherSpec):
        return HistogramTeacher(spec.channels, spec.cells, spec.bound)
    if isinstance(spec, LiDARTeacherSpec):
        from geomim.lidar import LiDARTeacher  # needs spconv: pip install "geomim[lidar]"

        if spec.checkpoint:
            return LiDARTeacher.from_checkpoint(spec.checkpoint)
        return LiDARTeacher()
    raise ValueError(
        f"no teacher for spec {type(spec).__name__}: expected one of "
        f"{[cls.__name__ for cls in TEACHER_SPECS.values()]}"
    )
