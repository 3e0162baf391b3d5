"""The multi-view layout helpers."""

from __future__ import annotations

import pytest
import torch

from geomim.layers import fold_views, unfold_views


def test_fold_and_unfold_round_trip():
    images = torch.randn(2, 6, 3, 8, 8)
    folded, views = fold_views(images, in_chans=3)
    assert folded.shape == (12, 3, 8, 8) and views == 6
    torch.testing.assert_close(unfold_views(folded, views), images, atol=0, rtol=0)
    flat, none = fold_views(folded, in_chans=3)
    assert flat is folded and none is None and unfold_views(flat, none) is flat


def test_errors_name_the_expected_layout():
    with pytest.raises(ValueError, match=r"\(B\*N, C, H, W\) or \(B, N, C, H, W\)"):
        fold_views(torch.randn(8, 8), in_chans=3)
    with pytest.raises(
        ValueError, match=r"expected 3 image channels at dim -3, got shape \(1, 4, 8, 8\)"
    ):
        fold_views(torch.randn(1, 4, 8, 8), in_chans=3)
