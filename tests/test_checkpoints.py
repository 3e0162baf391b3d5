"""Weight files: safetensors and weights-only .pth reading, clear errors, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geomim.checkpoints import (
    CheckpointError,
    read_checkpoint,
    save_safetensors_atomic,
    unwrap_state_dict,
)


class NotATensor:
    """A class a weights-only unpickler must refuse."""


def test_pth_with_mmcv_style_meta_is_read(tmp_path):
    weights = {"a.weight": torch.randn(2, 3)}
    meta = {
        "epoch": 50,
        "best": np.float64(0.53),
        "dtype": np.dtype("float32"),
        "CLASSES": ("car",),
    }
    torch.save({"state_dict": weights, "meta": meta}, tmp_path / "official.pth")
    loaded = read_checkpoint(tmp_path / "official.pth")
    assert loaded.keys() == {"a.weight"}
    torch.testing.assert_close(loaded["a.weight"], weights["a.weight"])


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": NotATensor()}, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"weights_only=True.*NotATensor.*expected a checkpoint"
    ):
        read_checkpoint(tmp_path / "bad.pth")


def test_truncated_pth_is_a_clear_error(tmp_path):
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "cut.pth")


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100] if damage == "truncate" else b"\xff" * 64 + data[64:])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        read_checkpoint(tmp_path / "absent.pth")


def test_unwrap_prefers_state_dict_then_model():
    tensor = torch.zeros(1)
    assert unwrap_state_dict({"state_dict": {"a": tensor}, "model": {"b": tensor}}) == {"a": tensor}
    assert unwrap_state_dict({"model": {"b": tensor}}) == {"b": tensor}
    assert unwrap_state_dict({"c": tensor, "epoch": 3}) == {"c": tensor}
    with pytest.raises(CheckpointError, match="no tensors found"):
        unwrap_state_dict({"epoch": 3})
    with pytest.raises(CheckpointError, match="expected a dict of tensors, got list"):
        unwrap_state_dict([tensor])


def test_atomic_save_round_trips_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out" / "model.safetensors"
    tensors = {"w": torch.randn(3, 4).t()}  # non-contiguous is fine
    save_safetensors_atomic(tensors, path, metadata={"variant": "x"})
    torch.testing.assert_close(read_checkpoint(path)["w"], tensors["w"])
    with pytest.raises(Exception, match=r"[Ss]hared|share memory|same memory"):
        shared = torch.zeros(4)
        save_safetensors_atomic({"a": shared, "b": shared}, tmp_path / "out" / "second.safetensors")
    assert sorted(os.listdir(tmp_path / "out")) == ["model.safetensors"]
