"""Window partitioning and padding."""

from __future__ import annotations

import torch

from geomim.layers import pad_to_multiple, window_merge, window_partition


def test_partition_then_merge_is_identity():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    torch.testing.assert_close(window_merge(windows, 4, 8, 12), x, atol=0, rtol=0)


def test_partition_orders_windows_row_major_and_tokens_row_major():
    x = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6, 1)
    windows = window_partition(x, 2)
    assert windows[1, :, 0].tolist() == [2, 3, 8, 9]  # second window of the first row
    assert windows[3, :, 0].tolist() == [12, 13, 18, 19]  # first window of the second row


def test_padding_is_zero_at_bottom_right_only():
    x = torch.ones(1, 5, 7, 2)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 8, 8, 2)
    assert (
        padded[:, :5, :7].eq(1).all() and padded[:, 5:].eq(0).all() and padded[:, :, 7:].eq(0).all()
    )
    assert pad_to_multiple(padded, 4) is padded
