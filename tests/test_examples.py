"""The quickstart runs as the README shows it, with official weights, images, or neither."""

from __future__ import annotations

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
