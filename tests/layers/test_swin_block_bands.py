"""The Swin block's CPU inference path on bands of window rows against the whole-map path."""

from __future__ import annotations

import pytest
import torch

import geomim.layers.swin_block as swin_block
from geomim.kernels.window_attention import window_mask_from_groups
from geomim.layers import SwinBlock
from geomim.layers.windows import window_bands


@pytest.mark.parametrize(
    ("images", "height", "window", "max_rows"),
    [(3, 8, 4, 8), (2, 10, 4, 8), (2, 10, 4, 1), (1, 3, 4, 100), (4, 16, 4, 12)],
)
def test_bands_cover_every_row_once_in_whole_windows(images, height, window, max_rows):
    groups = window_bands(images, height, window, max_rows)
    rows = [row for start, stop, _ in groups for row in range(start, stop)]
    assert rows == list(range(images * height))
    for start, stop, band in groups:
        assert (stop - start) % band == 0
        assert band == window or band == height % window  # a short band only at an image's end
        assert start // height == (stop - 1) // height or band == window
        assert start % height % window == 0  # bands start on window rows
        assert stop - start <= max(max_rows, window) + window  # about max_rows, balanced


def test_short_last_bands_are_groups_of_their_own():
    assert window_bands(2, 10, 4, 100) == [(0, 8, 4), (8, 10, 2), (10, 18, 4), (18, 20, 2)]


@pytest.mark.parametrize(("height", "width"), [(8, 12), (7, 10), (3, 5)])
def test_band_path_equals_the_whole_map_path(monkeypatch, height, width):
    torch.manual_seed(0)
    block = SwinBlock(dim=16, num_heads=2, window=4).eval()
    x = torch.randn(3, height, width, 16)
    whole = block(x)  # autograd on: the whole-map path
    monkeypatch.setattr(swin_block, "BAND_BYTES", 4 * width * 16 * 4)  # one band per group
    calls = []
    monkeypatch.setattr(block, "_attend", _counting(block._attend, calls))
    with torch.inference_mode():
        banded = block(x)
    assert len(calls) == 3 * -(-height // 4)  # one attention call per band
    torch.testing.assert_close(banded, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("setting", ["training", "grad", "reference", "mask"])
def test_whole_map_path_where_bands_do_not_apply(monkeypatch, setting):
    block = SwinBlock(dim=8, num_heads=2, window=4).eval()
    x = torch.randn(2, 8, 8, 8)
    mask = None
    if setting == "training":
        block.train()
    elif setting == "reference":
        block.mlp.chunked = False
    elif setting == "mask":
        mask = window_mask_from_groups(torch.randint(0, 2, (4, 16)))
    monkeypatch.setattr(block, "_forward_in_bands", _failing)
    if setting == "grad":
        block(x)
    else:
        with torch.no_grad():
            block(x, mask)


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return function(*args, **kwargs)

    return counted


def _failing(*args, **kwargs):
    raise AssertionError("the band path ran")
