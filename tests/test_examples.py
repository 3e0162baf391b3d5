"""The quickstart runs as the README shows it, with official weights, images, or neither."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TESTS

QUICKSTART = TESTS.parent / "examples" / "quickstart.py"


def run_quickstart(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [str(QUICKSTART), "--model", "geomim_test", *args])
    runpy.run_path(str(QUICKSTART), run_name="__main__")
    return capsys.readouterr().out


def test_quickstart_with_official_weights_and_images(tmp_path, swin_fixture, monkeypatch, capsys):
    weights = tmp_path / "geomim_test.pth"
    torch.save({"state_dict": swin_fixture["state_dict"]}, weights)
    images = []
    for index in range(6):
        path = tmp_path / f"cam{index}.jpg"
        pixels = np.random.default_rng(index).integers(0, 255, (90, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        images.append(str(path))
    out = run_quickstart(monkeypatch, capsys, "--weights", str(weights), "--images", *images)
    assert f"weights from {weights}" in out
    assert "CAM_BACK_RIGHT" in out
    assert "feature stride 16: (1, 6, 64, 8, 22)" in out
    assert "feature stride 32: (1, 6, 128, 4, 11)" in out


def test_quickstart_says_plainly_when_weights_are_random(hf_cache, monkeypatch, capsys):
    out = run_quickstart(monkeypatch, capsys)
    assert "RANDOM weights" in out
    assert "six synthetic camera images" in out
    assert "forward of 6 views" in out


def test_quickstart_rejects_a_wrong_image_count(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_quickstart(monkeypatch, capsys, "--images", "a.jpg", "b.jpg")


FINETUNE = TESTS.parent / "examples" / "finetune_bev.py"


def run_finetune(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [str(FINETUNE), *args])
    runpy.run_path(str(FINETUNE), run_name="__main__")
    return capsys.readouterr().out


def test_finetune_example_trains_both_backbones_and_plots(
    tmp_path, swin_fixture, monkeypatch, capsys
):
    pytest.importorskip("nuscenes")
    weights = tmp_path / "geomim_test.pth"  # official format, as the release
    torch.save({"state_dict": swin_fixture["state_dict"]}, weights)
    out = tmp_path / "finetune"
    tiny = ["--steps", "2", "--eval-every", "1", "--train-scenes", "1", "--val-scenes", "1"]
    printed = run_finetune(
        monkeypatch, capsys, "--out", str(out), "--pretrained", str(weights),
        "--samples-per-scene", "2", *tiny,
    )  # fmt: skip
    assert "fine-tuning geomim_test from random weights" in printed
    assert f"fine-tuning geomim_test from {weights}" in printed
    assert "random loss  val IoU | geomim loss  val IoU" in printed
    assert "(a location prior without images: val IoU" in printed
    curves = json.loads((out / "curves.json").read_text())
    assert list(curves) == ["random", "geomim", "prior_val_iou"]
    for curve in (curves["random"], curves["geomim"]):
        assert curve["step"] == [1, 2]
        assert all(0.0 <= iou <= 1.0 for iou in curve["val_iou"])
    assert curves["random"]["train_loss"] != curves["geomim"]["train_loss"]
    assert (out / "finetune_bev.png").stat().st_size > 0


def test_finetune_example_pretraining_overrides_are_a_valid_config(tmp_path):
    from geomim.training.config import load_config

    namespace = runpy.run_path(str(FINETUNE))
    args = namespace["argparse"].Namespace(
        model="geomim_test", image_size=(64, 176), pretrain_steps=7
    )
    overrides = namespace["pretraining_overrides"](args, tmp_path / "data", tmp_path / "run")
    config = load_config("tiny_synthetic", overrides)
    assert config.train.max_steps == 7
    assert tuple(config.model.view_transform.image_size) == (64, 176)
    assert config.data.root == str(tmp_path / "data")
