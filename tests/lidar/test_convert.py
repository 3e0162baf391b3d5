"""Official LiDAR teacher checkpoints -> our encoder: every key, the spconv 2 weight layout."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from geomim.checkpoints import CheckpointError
from geomim.lidar.convert import (
    OFFICIAL_PREFIX,
    convert_lidar_checkpoint,
    lidar_checkpoint_filter_fn,
    official_lidar_to_geomim,
)
from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig
from tests.helpers import FIXTURES, official_state_dict

pytest.importorskip("spconv.pytorch")

TINY = SparseEncoderConfig(sparse_shape=(70, 46, 41))


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "official-teacher-tiny" / "state_dict.safetensors")


def bevfusion_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """`lidar-only-det.pth` as BEVFusion saves it: the whole detector under 'state_dict'."""
    state_dict = {OFFICIAL_PREFIX + key: value for key, value in encoder.items()}
    state_dict |= {
        "decoder.backbone.blocks.0.0.weight": torch.zeros(128, 256, 3, 3),
        "decoder.backbone.blocks.1.0.weight": torch.zeros(256, 128, 3, 3),
        "decoder.neck.deblocks.0.0.weight": torch.zeros(128, 256, 1, 1),
        "heads.object.shared_conv.weight": torch.zeros(128, 512, 3, 3),
    }
    return {"meta": {"epoch": 20}, "state_dict": state_dict}


def test_the_official_tiny_state_dict_loads_with_no_missing_or_unexpected_keys(official):
    model = SparseEncoder(TINY)
    result = model.load_state_dict(lidar_checkpoint_filter_fn(official, model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_the_full_size_key_list_converts_to_the_full_size_encoder():
    official = official_state_dict("official-keys-teacher.txt", prefix=OFFICIAL_PREFIX)
    checkpoint = bevfusion_checkpoint({})["state_dict"] | official
    converted, report = official_lidar_to_geomim(checkpoint)
    model = SparseEncoder()
    model.load_state_dict(lidar_checkpoint_filter_fn(checkpoint, model), strict=True)
    assert len(converted) == report.kept == 126
    assert sum(p.numel() for p in model.parameters()) == 2_694_352
    assert report.dropped == {"decoder.backbone.": 2, "decoder.neck.": 1, "heads.object.": 1}


def test_conv_weights_are_permuted_to_spconv2_without_a_flip(official):
    converted, _ = official_lidar_to_geomim(official)
    source = official["conv_out.0.weight"]  # (k0, k1, k2, in, out) = (1, 1, 3, 128, 128)
    target = converted["to_bev.conv.weight"]  # (out, k0, k1, k2, in)
    assert target.shape == (128, 1, 1, 3, 128)
    assert target[7, 0, 0, 2, 5] == source[0, 0, 2, 5, 7]
    stem = converted["stem.conv.weight"]
    assert stem.shape == (16, 3, 3, 3, 5)
    assert torch.equal(stem, official["conv_input.0.weight"].permute(4, 0, 1, 2, 3))


def test_official_names_map_to_ours_by_the_rename_table(official):
    converted, _ = official_lidar_to_geomim(official)
    renamed = {
        "conv_input.1.running_var": "stem.norm.running_var",
        "encoder_layers.encoder_layer1.0.bn1.weight": "stages.0.blocks.0.norm1.weight",
        "encoder_layers.encoder_layer2.1.conv2.weight": "stages.1.blocks.1.conv2.weight",
        "encoder_layers.encoder_layer3.2.0.weight": "stages.2.downsample.conv.weight",
        "encoder_layers.encoder_layer3.2.1.bias": "stages.2.downsample.norm.bias",
        "encoder_layers.encoder_layer4.1.bn2.bias": "stages.3.blocks.1.norm2.bias",
        "conv_out.1.num_batches_tracked": "to_bev.norm.num_batches_tracked",
    }
    for official_name, ours in renamed.items():
        tensor = official[official_name]
        tensor = tensor.permute(4, 0, 1, 2, 3) if tensor.ndim == 5 else tensor
        assert torch.equal(converted[ours], tensor), official_name


def test_a_converted_state_dict_passes_through_unchanged(official):
    converted, _ = official_lidar_to_geomim(official)
    again, report = official_lidar_to_geomim(converted)
    assert again.keys() == converted.keys() and report.dropped == {}
    assert all(torch.equal(again[key], converted[key]) for key in converted)


def test_a_bevfusion_pth_converts_to_safetensors_that_load_back(official, tmp_path):
    source, target = tmp_path / "lidar-only-det.pth", tmp_path / "teacher.safetensors"
    torch.save(bevfusion_checkpoint(official), source)
    report = convert_lidar_checkpoint(source, target, TINY)
    assert report.kept == 126 and sum(report.dropped.values()) == 4
    assert "dropped 4: decoder.backbone.* (2)" in str(report)
    model = SparseEncoder(TINY)
    model.load_state_dict(lidar_checkpoint_filter_fn(load_file(target), model), strict=True)
    expected, _ = official_lidar_to_geomim(official)
    assert all(torch.equal(model.state_dict()[key], expected[key]) for key in expected)


def test_mismatching_keys_are_named_in_the_error(official):
    broken = dict(official)
    del broken["encoder_layers.encoder_layer2.0.conv1.weight"]
    broken["encoder_layers.encoder_layer5.0.conv1.weight"] = torch.zeros(1)
    model = SparseEncoder(TINY)
    with pytest.raises(
        CheckpointError, match=r"1 missing keys \[stages\.1\.blocks\.0\.conv1"
    ) as error:
        lidar_checkpoint_filter_fn(broken, model)
    assert "1 unexpected keys [stages.4.blocks.0.conv1.weight]" in str(error.value)


def test_a_wrongly_shaped_weight_is_an_error(official):
    model = SparseEncoder(SparseEncoderConfig(sparse_shape=(70, 46, 41), in_channels=4))
    with pytest.raises(CheckpointError, match=r"stem\.conv\.weight: checkpoint \(16, 3, 3, 3, 5\)"):
        lidar_checkpoint_filter_fn(official, model)


def test_the_command_line_help_is_clean():
    run = subprocess.run(
        [sys.executable, "-m", "geomim.lidar.convert", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m geomim.lidar.convert")
    assert "RuntimeWarning" not in run.stderr  # the module is not imported twice


def test_a_missing_or_wrong_checkpoint_is_one_line_and_exit_2(tmp_path):
    def convert(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "geomim.lidar.convert", *args]
        return subprocess.run(command, capture_output=True, text=True)

    missing = convert(str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "missing.pth" in missing.stderr
    debug = convert(str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
