"""Weight files: safetensors and weights-only .pth reading, clear errors, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geomim.checkpoints import (
    CheckpointError,
    fit_to_model,
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


def test_legacy_pickle_pth_is_still_read(tmp_path):
    weights = {"a.weight": torch.randn(2, 3)}
    torch.save(weights, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(
        read_checkpoint(tmp_path / "old.pth")["a.weight"], weights["a.weight"]
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (b"<html><body>404 Not Found</body></html>\n", r"is a text file \(it starts '<html>"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n",
            r"Git LFS pointer",
        ),
        (b"", r"is empty"),
    ],
    ids=["text", "lfs-pointer", "empty"],
)
def test_a_pth_that_is_not_a_checkpoint_names_the_file_and_what_was_expected(
    tmp_path, content, message
):
    path = tmp_path / "geomim_base.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    assert "expected a PyTorch checkpoint" in str(error.value)


def test_safetensors_named_pth_says_to_rename_it(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "model.pth")
    with pytest.raises(
        CheckpointError,
        match=r"model\.pth is a safetensors file, but its name says a PyTorch checkpoint.*"
        r"rename it to end in \.safetensors",
    ):
        read_checkpoint(tmp_path / "model.pth")


def test_pth_named_safetensors_says_to_rename_it(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors is a PyTorch checkpoint .* but its name says a safetensors "
        r"file: rename it to end in \.pth",
    ):
        read_checkpoint(tmp_path / "model.safetensors")


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 4, 2)
        self.norm = torch.nn.LayerNorm(4)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_weights_of_another_dtype_kind_are_refused(dtype):
    state = TwoLayers().state_dict()
    state["proj.weight"] = torch.ones(state["proj.weight"].shape, dtype=dtype)
    with pytest.raises(
        CheckpointError,
        match=rf"1 tensors cannot be the trained weights.*proj\.weight: found {dtype}, "
        r"expected torch\.float32",
    ):
        fit_to_model(state, TwoLayers(), "test model")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_of_another_float_precision_are_accepted(dtype):
    state = {k: v.to(dtype) for k, v in TwoLayers().state_dict().items()}
    model = TwoLayers()
    model.load_state_dict(fit_to_model(state, model, "test model"))
    torch.testing.assert_close(model.proj.weight, state["proj.weight"].float())
