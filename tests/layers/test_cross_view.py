"""Cross-View Attention: rows across views, view-order equivariance, row independence."""

from __future__ import annotations

import pytest
import torch

from geomim.layers import CrossViewAttention, rows_across_views, views_from_rows

VIEWS, HEIGHT, WIDTH, DIM = 6, 3, 5, 16


def block(**kwargs) -> CrossViewAttention:
    torch.manual_seed(0)
    layer = CrossViewAttention(DIM, num_heads=4, num_views=VIEWS, **kwargs).eval()
    with torch.no_grad():
        for parameter in layer.parameters():  # break the identity of fresh LayerNorms
            parameter.add_(0.1 * torch.randn_like(parameter))
    return layer


def tokens(batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch * VIEWS, HEIGHT * WIDTH, DIM, generator=generator)


def naive_loop(layer: CrossViewAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition: per sample and row, concatenate that row of every view, run the block."""
    maps = x.view(-1, VIEWS, HEIGHT, WIDTH, DIM)
    out = torch.empty_like(maps)
    for sample in range(maps.shape[0]):
        for row in range(HEIGHT):
            sequence = maps[sample, :, row].reshape(1, VIEWS * WIDTH, DIM)
            result = super(CrossViewAttention, layer).forward(sequence)
            out[sample, :, row] = result.view(VIEWS, WIDTH, DIM)
    return out.view_as(x)


def test_regrouping_round_trips_and_groups_rows():
    x = tokens()
    rows = rows_across_views(x, VIEWS, HEIGHT, WIDTH)
    assert rows.shape == (2 * HEIGHT, VIEWS * WIDTH, DIM)
    # sequence (sample 1, row 2) holds row 2 of view 4 at positions [4W, 5W)
    view4_row2 = x.view(2, VIEWS, HEIGHT, WIDTH, DIM)[1, 4, 2]
    torch.testing.assert_close(rows[1 * HEIGHT + 2, 4 * WIDTH : 5 * WIDTH], view4_row2)
    torch.testing.assert_close(views_from_rows(rows, VIEWS, HEIGHT, WIDTH), x, atol=0, rtol=0)


def test_matches_the_naive_per_row_loop():
    layer = block()
    x = tokens()
    torch.testing.assert_close(layer(x, (HEIGHT, WIDTH)), naive_loop(layer, x), atol=1e-5, rtol=0)


def test_permuting_cameras_permutes_outputs():
    layer = block()
    x = tokens()
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = x.view(2, VIEWS, -1, DIM)[:, order].reshape_as(x)
    out = layer(x, (HEIGHT, WIDTH)).view(2, VIEWS, -1, DIM)[:, order].reshape_as(x)
    torch.testing.assert_close(layer(permuted, (HEIGHT, WIDTH)), out, atol=1e-5, rtol=0)


def test_rows_never_influence_each_other():
    layer = block()
    x = tokens(batch=1).requires_grad_(True)
    out = layer(x, (HEIGHT, WIDTH)).view(VIEWS, HEIGHT, WIDTH, DIM)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    grad = grad.view(VIEWS, HEIGHT, WIDTH, DIM)
    assert grad[:, [0, 2]].abs().max() == 0  # exactly zero, not small
    assert grad[:, 1].abs().max() > 0


def test_samples_never_influence_each_other():
    layer = block()
    x = tokens(batch=2).requires_grad_(True)
    out = layer(x, (HEIGHT, WIDTH))
    (grad,) = torch.autograd.grad(out[:VIEWS].sum(), x)
    assert grad[VIEWS:].abs().max() == 0


def test_zero_initialised_block_is_the_identity():
    layer = CrossViewAttention(DIM, num_heads=4, num_views=VIEWS, zero_init=True)
    x = tokens()
    torch.testing.assert_close(layer(x, (HEIGHT, WIDTH)), x, atol=0, rtol=0)


def test_five_dimensional_maps_are_accepted():
    layer = block()
    x = tokens()
    maps = x.view(2, VIEWS, HEIGHT, WIDTH, DIM)
    out = layer(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out.reshape_as(x), layer(x, (HEIGHT, WIDTH)), atol=1e-6, rtol=0)


def test_view_count_is_explicit_and_checked():
    layer = CrossViewAttention(DIM, num_heads=4)
    x = tokens()
    with pytest.raises(ValueError, match="number of views is needed"):
        layer(x, (HEIGHT, WIDTH))
    assert layer(x, (HEIGHT, WIDTH), num_views=3).shape == x.shape  # a 3-camera rig
    with pytest.raises(ValueError, match="12 images does not split into whole rigs of 5 views"):
        layer(x, (HEIGHT, WIDTH), num_views=5)
    with pytest.raises(ValueError, match=r"expected 4x4 = 16 tokens per image, got 15"):
        layer(x, (4, 4), num_views=6)
    with pytest.raises(ValueError, match=r"size=\(H, W\)"):
        layer(x)


def test_parameter_names_match_the_official_cross_view_blocks():
    names = {name for name, _ in CrossViewAttention(DIM, num_heads=4).named_parameters()}
    assert names == {
        f"{layer}.{kind}"
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for kind in ("weight", "bias")
    }
