"""Window attention: the relative position bias and both computation paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomim.layers import SwinBlock, WindowAttention, relative_position_index


def test_relative_position_index_follows_query_minus_key():
    window = 3
    index = relative_position_index(window)
    side = 2 * window - 1
    for i in range(window * window):
        for j in range(window * window):
            dy = i // window - j // window
            dx = i % window - j % window
            assert index[i, j] == (dy + window - 1) * side + (dx + window - 1)


def test_bias_table_entries_reach_the_matching_logits():
    attention = WindowAttention(dim=4, num_heads=2, window=2)
    with torch.no_grad():
        attention.relative_position_bias_table.copy_(torch.arange(18.0).view(9, 2))
    bias = attention.relative_position_bias()
    assert bias.shape == (2, 4, 4)
    # token 0 = (0, 0), token 3 = (1, 1): offset (-1, -1) -> row 0; offset (1, 1) -> row 8
    assert bias[1, 0, 3] == 1 and bias[1, 3, 0] == 17
    assert bias[0, 2, 2] == 8  # zero offset -> centre row 4, head 0


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fast_and_reference_paths_agree(dtype, tolerance):
    torch.manual_seed(0)
    attention = WindowAttention(dim=32, num_heads=4, window=4).to(dtype)
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
    x = torch.randn(6, 16, 32, dtype=dtype)
    fast = attention(x)
    attention.fused_attn = False
    reference = attention(x)
    assert (fast - reference).abs().max() < tolerance


def test_gradients_agree_between_paths():
    torch.manual_seed(0)
    attention = WindowAttention(dim=16, num_heads=2, window=4)
    x = torch.randn(3, 16, 16, requires_grad=True)
    grads = []
    for fused in (True, False):
        attention.fused_attn = fused
        (grad,) = torch.autograd.grad(attention(x).square().sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_block_pads_after_norm_attends_unmasked_and_crops():
    """Official behaviour: the zero-padded tokens are keys and values, with no mask."""
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window=4).eval()
    x = torch.randn(1, 3, 3, 8)  # one window, 7 of its 16 tokens are padding
    padded = F.pad(block.norm1(x), (0, 0, 0, 1, 0, 1))  # (1, 4, 4, 8)
    attended = block.attn(padded.reshape(1, 16, 8)).view(1, 4, 4, 8)[:, :3, :3]
    expected = x + attended
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(block(x), expected)


def test_dim_must_split_into_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WindowAttention(dim=10, num_heads=4, window=2)
