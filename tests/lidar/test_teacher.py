"""The LiDAR teacher end to end: raw points -> the official BEV map; construction, errors."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from geomim.lidar.convert import OFFICIAL_PREFIX
from geomim.lidar.sparse_encoder import SparseEncoderConfig
from geomim.lidar.teacher import LiDARTeacher, LiDARTeacherConfig
from geomim.lidar.voxelize import VoxelConfig
from geomim.pretrain.teacher import teacher_meta
from tests.helpers import FIXTURES

pytest.importorskip("spconv.pytorch")

FOLDER = FIXTURES / "official-teacher-tiny"
# The fixture's end-to-end teacher: 0.15 m cells over +-3 m, sparse shape (40, 40, 41).
E2E = LiDARTeacherConfig(
    voxels=VoxelConfig((0.15, 0.15, 0.2), (-3.0, -3.0, -5.0, 3.0, 3.0, 3.0), 10, 200),
    encoder=SparseEncoderConfig(sparse_shape=(40, 40, 41)),
)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FOLDER / "io.safetensors")


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    """The fixture's weights inside a BEVFusion-style detector checkpoint."""
    encoder = load_file(FOLDER / "state_dict.safetensors")
    state_dict = {OFFICIAL_PREFIX + key: value for key, value in encoder.items()}
    state_dict["heads.object.heatmap_head.1.bias"] = torch.zeros(10)
    path = tmp_path_factory.mktemp("lidar") / "lidar-only-det.pth"
    torch.save({"meta": {"epoch": 20}, "state_dict": state_dict}, path)
    return path


@pytest.fixture(scope="module")
def e2e_teacher(official_pth) -> LiDARTeacher:
    return LiDARTeacher.from_checkpoint(official_pth, E2E)


def test_raw_points_give_the_official_bev_map(e2e_teacher, io):
    points = [io["e2e_points_0"], io["e2e_points_1"]]
    bev = e2e_teacher(points, teacher_meta(["a", "b"]))
    assert bev.shape == (2, *e2e_teacher.bev_shape) == (2, 256, 5, 5)
    assert (bev - io["output_e2e"]).abs().max() <= 1e-4


def test_from_checkpoint_reports_the_dropped_detector_keys(e2e_teacher):
    report = e2e_teacher.checkpoint_report
    assert report.kept == 126 and report.dropped == {"heads.object.": 1}


def test_the_default_teacher_maps_a_synthetic_sweep_to_256_by_180_by_180(tmp_path):
    from geomim.data import NuScenesMultiView
    from geomim.data.synthetic import generate

    generate(tmp_path, scenes=1, samples_per_scene=1, sweeps_per_sample=1, width=160, height=90,
             progress=False)  # fmt: skip
    data = NuScenesMultiView(tmp_path, "v1.0-mini", split=None, train=False, cache_dir=None,
                             image_size=(160, 96))  # fmt: skip
    item = data[0]
    torch.manual_seed(0)
    teacher = LiDARTeacher()
    bev = teacher([item["points"]], teacher_meta([item["token"]]))
    assert teacher.bev_shape == (256, 180, 180) and teacher.bev_cell_size == (0.6, 0.6)
    assert bev.shape == (1, 256, 180, 180) and bev.dtype == torch.float32
    assert torch.isfinite(bev).all() and bev.abs().sum() > 0


def test_identity_names_the_config_and_the_weights(e2e_teacher, official_pth):
    identity = e2e_teacher.identity()
    assert json.loads(json.dumps(identity)) == identity
    assert identity["class"] == "LiDARTeacher"
    assert identity["config"]["encoder"]["sparse_shape"] == [40, 40, 41]
    assert LiDARTeacher.from_checkpoint(official_pth, E2E).identity() == identity
    other_weights = LiDARTeacher(E2E)
    assert other_weights.identity()["weights"] != identity["weights"]
    other_config = LiDARTeacher.from_checkpoint(official_pth, LiDARTeacherConfig())
    assert other_config.identity()["config"] != identity["config"]


def test_an_unsupported_device_runs_on_cpu_with_one_warning(io, official_pth, monkeypatch):
    teacher = LiDARTeacher.from_checkpoint(official_pth, E2E)
    points, meta = [io["e2e_points_0"], io["e2e_points_1"]], teacher_meta(["a", "b"])
    expected = teacher(points, meta)
    monkeypatch.setattr("geomim.lidar.teacher.spconv_supports", lambda device: False)
    with pytest.warns(RuntimeWarning, match="no kernels for cpu.*spconv-cuXXX"):
        fallback = teacher(points, meta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = teacher(points, meta)
    assert not [w for w in caught if "no kernels" in str(w.message)]  # warned once only
    assert torch.equal(fallback, expected) and torch.equal(again, expected)


def test_missing_spconv_is_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "geomim\[lidar\]"'):
        LiDARTeacher(E2E)


def test_wrong_points_are_clear_errors(e2e_teacher):
    meta = teacher_meta(["a"])
    with pytest.raises(ValueError, match=r"shape \(P, 5\).*cloud 0 is \(10, 4\)"):
        e2e_teacher([torch.zeros(10, 4)], meta)
    with pytest.raises(ValueError, match=r"cloud 0 is \(10,\)"):
        e2e_teacher([torch.zeros(10)], meta)
    with pytest.raises(ValueError, match="2 point clouds for 1 samples"):
        e2e_teacher([torch.zeros(10, 5), torch.zeros(10, 5)], meta)


def test_a_voxel_grid_larger_than_the_sparse_shape_is_an_error():
    with pytest.raises(ValueError, match=r"grid \(1440, 1440, 40\) must fit.*\(1440, 1440, 41\)"):
        LiDARTeacherConfig(encoder=SparseEncoderConfig(sparse_shape=(1440, 1440, 39)))
