"""The teacher-feature cache: exact round trip, flips, refusal of other teachers, resuming."""

from __future__ import annotations

import json
import re

import pytest
import torch

from geomim.data import NuScenesMultiView
from geomim.data.geometry import lidar_aug_matrix
from geomim.data.nuscenes import POINTS_FORMAT
from geomim.data.synthetic import generate
from geomim.pretrain.teacher import HistogramTeacher, teacher_meta
from geomim.pretrain.teacher_cache import (
    CachedTeacher,
    CacheMismatchError,
    points_source,
    write_teacher_cache,
)
from geomim.teacher import main as teacher_cli


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, scenes=1, samples_per_scene=3, sweeps_per_sample=1, seed=2, progress=False)
    return NuScenesMultiView(root, "v1.0-mini", split=None, train=False, cache_dir=None)


def tokens_of(dataset) -> list[str]:
    return [str(token) for token in dataset.index.tokens]


def write(teacher, dataset, out, **kwargs):
    load = lambda index: dataset.sample_points(index)[1]  # noqa: E731
    source = points_source(dataset.version, dataset.seed, dataset.points)
    return write_teacher_cache(
        teacher, tokens_of(dataset), load, out, source, progress=False, **kwargs
    )


def small_teacher(channels: int = 4) -> HistogramTeacher:
    return HistogramTeacher(channels=channels, cells=16, bound=54.0)


def test_cached_maps_equal_the_live_teachers_maps_exactly(dataset, tmp_path):
    teacher = small_teacher()
    write(teacher, dataset, tmp_path, shard_size=2)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    cached = CachedTeacher(tmp_path, expect_teacher=teacher.identity())
    tokens = tokens_of(dataset)
    points = [dataset.sample_points(i)[1] for i in range(3)]
    meta = teacher_meta(tokens)
    assert torch.equal(cached(points, meta), teacher(points, meta))


def test_cached_maps_follow_each_samples_flips(tmp_path):
    generator = torch.Generator().manual_seed(0)
    clouds = [torch.rand(500, 5, generator=generator) * 100 - 50 for _ in range(3)]
    teacher, tokens = small_teacher(), ["a", "b", "c"]
    write_teacher_cache(teacher, tokens, clouds.__getitem__, tmp_path, {}, progress=False)
    flips = torch.stack(
        [torch.as_tensor(lidar_aug_matrix(fx, fy), dtype=torch.float32)
         for fx, fy in ((True, False), (False, True), (True, True))]
    )  # fmt: skip
    flipped = [
        torch.cat([p[:, :3] @ m[:3, :3].T, p[:, 3:]], 1) for p, m in zip(clouds, flips, strict=True)
    ]
    served = CachedTeacher(tmp_path)(flipped, teacher_meta(tokens, flips))
    # what the teacher makes of the flipped points (no point lies on a cell boundary here)
    torch.testing.assert_close(served, teacher(flipped, teacher_meta(tokens)))
    live = teacher(clouds, teacher_meta(tokens))
    assert torch.equal(served[0], live[0].flip(-2)) and torch.equal(served[1], live[1].flip(-1))


def test_a_cache_of_another_teacher_or_source_is_refused_naming_the_difference(dataset, tmp_path):
    write(small_teacher(channels=4), dataset, tmp_path)
    with pytest.raises(CacheMismatchError, match=r"teacher\.channels: cache has 4, this run 8"):
        CachedTeacher(tmp_path, expect_teacher=small_teacher(channels=8).identity())
    other_source = {**points_source(dataset.version, dataset.seed, dataset.points), "seed": 7}
    with pytest.raises(CacheMismatchError, match=r"source\.seed: cache has 0, this run 7"):
        CachedTeacher(tmp_path, expect_source=other_source)
    with pytest.raises(CacheMismatchError, match=r"teacher\.channels"):
        write(small_teacher(channels=8), dataset, tmp_path)  # resuming with another teacher


def test_an_interrupted_cache_resumes_without_redoing_finished_shards(
    dataset, tmp_path, monkeypatch
):
    calls = []
    bev_map = HistogramTeacher.bev_map

    def crash_on_third(self, points, meta):
        calls.append(meta.tokens[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped while computing the second shard
        return bev_map(self, points, meta)

    monkeypatch.setattr(HistogramTeacher, "bev_map", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write(small_teacher(), dataset, tmp_path, shard_size=2)
    assert [p.name for p in tmp_path.glob("shard-*")] == ["shard-00000.safetensors"]
    (tmp_path / ".shard-00001.safetensors.killed.tmp").write_bytes(b"half")  # a killed write

    def counting(self, points, meta):
        calls.append(meta.tokens[0])
        return bev_map(self, points, meta)

    calls.clear()
    monkeypatch.setattr(HistogramTeacher, "bev_map", counting)
    write(small_teacher(), dataset, tmp_path, shard_size=2)
    assert calls == tokens_of(dataset)[2:]  # only the unfinished shard's sample
    assert not list(tmp_path.glob(".*.tmp"))
    cached = CachedTeacher(tmp_path)
    assert cached.load(tokens_of(dataset)[0]).shape == (4, 16, 16)


def test_the_command_line_caches_a_dataset_and_names_missing_samples(dataset, tmp_path, capsys):
    out = tmp_path / "cache"
    teacher_cli(
        ["cache", str(dataset.dataroot), str(out), "--teacher", "histogram", "--version",
         "v1.0-mini", "--split", "None", "--shard-size", "2", "--quiet"]
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"] == HistogramTeacher().identity()
    assert sum(len(shard) for shard in manifest["shards"]) == 3
    cached = CachedTeacher(
        out,
        HistogramTeacher().identity(),
        points_source(dataset.version, dataset.seed, dataset.points),
    )
    assert cached.load(tokens_of(dataset)[1]).shape == (256, 180, 180)
    with pytest.raises(KeyError, match="sample nope is not in the teacher cache"):
        cached.load("nope")
    with pytest.raises(SystemExit) as exit_info:
        teacher_cli(["cache", str(dataset.dataroot), str(out), "--teacher", "lidar"])
    assert exit_info.value.code == 2  # one line, no traceback
    assert "needs --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        teacher_cli(["cache", str(dataset.dataroot / "nope"), str(out), "--teacher", "histogram"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_only_flips_can_be_applied_to_a_cached_map(dataset, tmp_path):
    write(small_teacher(), dataset, tmp_path)
    cached = CachedTeacher(tmp_path)
    token = tokens_of(dataset)[0]
    scaled = torch.diag(torch.tensor([1.1, 1.0, 1.0, 1.0]))[None]
    with pytest.raises(ValueError, match=r"only follow LiDAR flips"):
        cached([torch.zeros(1, 5)], teacher_meta([token], scaled))


def test_the_lidar_teachers_maps_round_trip_exactly(dataset, tmp_path):
    pytest.importorskip("spconv")
    from geomim.lidar import LiDARTeacher

    torch.manual_seed(0)
    teacher = LiDARTeacher()
    for module in teacher.modules():  # random statistics, so that maps are not all positive
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
    write(teacher, dataset, tmp_path)
    cached = CachedTeacher(tmp_path, expect_teacher=teacher.identity())
    points = [dataset.sample_points(0)[1]]
    meta = teacher_meta(tokens_of(dataset)[:1])
    live = teacher(points, meta)
    assert live.shape == (1, 256, 180, 180) and 0 < (live != 0).float().mean() < 1
    assert torch.equal(cached(points, meta), live)


def test_a_damaged_shard_is_named_with_its_rebuild_command_and_rewritten_on_resume(
    dataset, tmp_path
):
    teacher = small_teacher()
    write(teacher, dataset, tmp_path, shard_size=2)
    shard = tmp_path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated after it was written
    token = tokens_of(dataset)[2]
    cached = CachedTeacher(tmp_path)
    with pytest.raises(
        OSError,
        match=rf"sample {token} from the teacher-cache shard {re.escape(str(shard))} .*"
        rf"python -m geomim.teacher cache DATAROOT {re.escape(str(tmp_path))} --teacher "
        r"histogram --version v1.0-mini --split SPLIT --shard-size 2 --dtype float32",
    ):
        cached.load(token)
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(shard))} cannot be read"):
        write(teacher, dataset, tmp_path, shard_size=2)
    points = [dataset.sample_points(2)[1]]
    assert torch.equal(cached.load(token)[None], teacher(points, teacher_meta([token])))


def test_a_damaged_manifest_is_named_when_served_and_when_resumed(dataset, tmp_path):
    write(small_teacher(), dataset, tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    message = rf"manifest {re.escape(str(manifest))} cannot be read \(JSONDecodeError"
    with pytest.raises(ValueError, match=message):
        CachedTeacher(tmp_path)
    with pytest.raises(ValueError, match=message):
        write(small_teacher(), dataset, tmp_path)


def test_a_cache_made_by_another_point_loading_version_is_refused(dataset, tmp_path):
    write(small_teacher(), dataset, tmp_path)
    source = points_source(dataset.version, dataset.seed, dataset.points)
    assert source["points_format"] == POINTS_FORMAT
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["source"]["points_format"]  # as made before the key frame kept close points
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match=r"source\.points_format: cache has None"):
        CachedTeacher(tmp_path, expect_source=source)
