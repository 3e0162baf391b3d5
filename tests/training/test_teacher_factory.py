"""`build_teacher`: the teacher a config's spec names, with the map shape the spec announces."""

from __future__ import annotations

import pytest
import torch

from geomim.pretrain.teacher import HistogramTeacher, teacher_meta
from geomim.pretrain.teacher_cache import CachedTeacher, CacheMismatchError, write_teacher_cache
from geomim.training.teacher_factory import (
    HistogramTeacherSpec,
    LiDARTeacherSpec,
    TeacherSpec,
    build_teacher,
)


def test_histogram_spec_builds_a_frozen_histogram_teacher_of_the_announced_shape():
    spec = HistogramTeacherSpec(channels=8, cells=32, bound=51.2)
    teacher = build_teacher(spec)
    assert isinstance(teacher, HistogramTeacher) and not teacher.training
    points = [torch.randn(100, 5) * 20, torch.randn(50, 5) * 20]
    bev = teacher(points, teacher_meta(["a", "b"]))
    assert bev.shape == (2, *spec.output_shape())


def test_unknown_spec_is_an_error():
    with pytest.raises(ValueError, match="no teacher for spec TeacherSpec"):
        build_teacher(TeacherSpec())


def test_a_cache_spec_serves_the_cached_maps_of_that_teacher_only(tmp_path):
    spec = HistogramTeacherSpec(channels=4, cells=8, bound=50.0)
    clouds = [torch.rand(100, 5) * 80 - 40]
    write_teacher_cache(
        build_teacher(spec), ["a"], clouds.__getitem__, tmp_path, {}, progress=False
    )
    cached = build_teacher(
        HistogramTeacherSpec(channels=4, cells=8, bound=50.0, cache=str(tmp_path))
    )
    assert isinstance(cached, CachedTeacher)
    meta = teacher_meta(["a"])
    assert torch.equal(cached(clouds, meta), build_teacher(spec)(clouds, meta))
    with pytest.raises(CacheMismatchError, match=r"teacher\.channels: cache has 4, this run 5"):
        build_teacher(HistogramTeacherSpec(channels=5, cells=8, bound=50.0, cache=str(tmp_path)))


def test_the_lidar_spec_builds_the_sparse_conv_teacher():
    pytest.importorskip("spconv")
    from geomim.lidar import LiDARTeacher

    teacher = build_teacher(LiDARTeacherSpec())
    assert (
        isinstance(teacher, LiDARTeacher) and teacher.bev_shape == LiDARTeacherSpec().output_shape()
    )
