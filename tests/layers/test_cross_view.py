"""Cross-View Attention: rows across views, view-order equivariance, row independence, and the
view-major block equal to the official formulation (regroup rows, timm's Block, regroup back)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from geomim.kernels import last_backend
from geomim.layers import CrossViewAttention
from geomim.layers.cross_view import _check_supported

VIEWS, HEIGHT, WIDTH, DIM = 6, 3, 5, 16


def rows_across_views(x: torch.Tensor, num_views: int, height: int, width: int) -> torch.Tensor:
    """The official regrouping: (B*N, H*W, C) -> (B*H, N*W, C), one sequence per sample and row."""
    channels = x.shape[-1]
    x = x.view(-1, num_views, height, width, channels)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, num_views * width, channels)


def views_from_rows(x: torch.Tensor, num_views: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `rows_across_views`: (B*H, N*W, C) -> (B*N, H*W, C)."""
    channels = x.shape[-1]
    x = x.view(-1, height, num_views, width, channels)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, height * width, channels)


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


def official_formulation(
    layer: CrossViewAttention, x: torch.Tensor, key_visible: torch.Tensor | None = None
) -> torch.Tensor:
    """The block as the official code runs it: (B*H, N*W, C) rows through timm's Block."""
    rows = rows_across_views(x, VIEWS, HEIGHT, WIDTH)
    attn_mask = None
    if key_visible is not None:
        keys = rows_across_views(key_visible[..., None], VIEWS, HEIGHT, WIDTH)[..., 0]
        itself = torch.eye(keys.shape[1], dtype=torch.bool)
        attn_mask = (keys[:, None, :] | itself)[:, None]  # (B*H, 1, N*W, N*W)
    rows = Block.forward(layer, rows, attn_mask=attn_mask)
    return views_from_rows(rows, VIEWS, HEIGHT, WIDTH)


def visible_keys(batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.rand(batch * VIEWS, HEIGHT * WIDTH, generator=generator) < 0.4


def outputs_and_gradients(layer: CrossViewAttention, run, x: torch.Tensor) -> list[torch.Tensor]:
    """`run(x)`'s output and the gradients of x and of every parameter for a fixed output grad."""
    x = x.detach().requires_grad_(True)
    out = run(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    inputs = [x, *layer.parameters()]
    return [out, *torch.autograd.grad(out, inputs, grad)]


@pytest.mark.parametrize("masked", [False, True], ids=["all keys", "key_visible"])
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "reference"])
def test_equals_the_official_formulation_forward_and_gradients(masked, fused):
    layer = block()
    layer.attn.fused_attn = fused  # the official side switches timm's attention the same way
    x, visible = tokens(), visible_keys() if masked else None
    ours = outputs_and_gradients(layer, lambda t: layer(t, (HEIGHT, WIDTH), None, visible), x)
    assert last_backend("row_attention") == ("sdpa" if fused else "reference")
    official = outputs_and_gradients(layer, lambda t: official_formulation(layer, t, visible), x)
    for actual, expected in zip(ours, official, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_drop_path_drops_the_same_rows_as_the_official_formulation():
    layer = block(drop_path=0.5).train()
    x = tokens()
    torch.manual_seed(7)
    ours = layer(x, (HEIGHT, WIDTH))
    torch.manual_seed(7)
    official = official_formulation(layer, x)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, layer.eval()(x, (HEIGHT, WIDTH)))  # something was dropped


@pytest.mark.usefixtures("interpreter")
def test_triton_backend_equals_the_official_formulation():
    layer = block()
    layer.backend = "triton"
    x, visible = tokens(batch=1), visible_keys(batch=1)
    ours = outputs_and_gradients(layer, lambda t: layer(t, (HEIGHT, WIDTH), None, visible), x)
    assert last_backend("row_attention") == "triton"
    official = outputs_and_gradients(layer, lambda t: official_formulation(layer, t, visible), x)
    for actual, expected in zip(ours, official, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_key_visible_is_accepted_in_both_layouts():
    layer = block()
    x, visible = tokens(), visible_keys()
    maps = layer(
        x.view(2, VIEWS, HEIGHT, WIDTH, DIM), key_visible=visible.view(2, VIEWS, HEIGHT, WIDTH)
    )
    torch.testing.assert_close(maps.reshape_as(x), layer(x, (HEIGHT, WIDTH), None, visible))
    with pytest.raises(
        ValueError, match=r"expected key_visible of shape \(12, 15\), got \(12, 14\)"
    ):
        layer(x, (HEIGHT, WIDTH), None, visible[:, 1:])


def test_timm_parts_the_view_major_block_does_not_run_are_refused():
    with pytest.raises(ValueError, match=r"got \['q_norm', 'k_norm'\] set"):
        _check_supported(Block(DIM, 4, qk_norm=True))


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
