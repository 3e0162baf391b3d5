"""Patch embedding and merging against the official formulations, in both layouts: the merge's
position-major gather with reordered parameters equals `nn.Unfold`'s channel-major layout, in
values and gradients; the channels-last patch embedding equals the NCHW convolution; the
backbone's reference path switches the layouts to the official ones."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import geomim  # noqa: F401  (registers the models)
from geomim.layers import PatchEmbed, PatchMerging


def official_merge(merge: PatchMerging, x: torch.Tensor) -> torch.Tensor:
    """mmcv's PatchMerging: pad, `nn.Unfold(2, stride=2)` (channel-major), LayerNorm, Linear."""
    batch, height, width, _ = x.shape
    nchw = F.pad(x, (0, 0, 0, width % 2, 0, height % 2)).permute(0, 3, 1, 2)
    columns = F.unfold(nchw, kernel_size=2, stride=2)  # (B, C * 4, L), index c * 4 + k
    rows, cols = nchw.shape[2] // 2, nchw.shape[3] // 2
    tokens = columns.transpose(1, 2).reshape(batch, rows, cols, -1)
    return merge.reduction(merge.norm(tokens))


@pytest.mark.parametrize("fast_layout", [True, False])
@pytest.mark.parametrize("height, width", [(8, 12), (7, 9)])
def test_merging_equals_the_channel_major_official_merge(height, width, fast_layout):
    torch.manual_seed(0)
    merge = PatchMerging(dim=6, out_dim=10)
    merge.fast_layout = fast_layout
    with torch.no_grad():  # distinct per-channel affine parameters, so any misorder shows
        merge.norm.weight.uniform_(0.5, 1.5)
        merge.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, height, width, 6, requires_grad=True)
    ours = merge(x)
    official = official_merge(merge, x)
    assert ours.shape == (2, (height + 1) // 2, (width + 1) // 2, 10)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)

    upstream = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, *merge.parameters()], upstream)
    official_grads = torch.autograd.grad(official, [x, *merge.parameters()], upstream)
    for grad, official_grad in zip(grads, official_grads, strict=True):
        torch.testing.assert_close(grad, official_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast_layout", [True, False])
def test_embedding_equals_the_nchw_convolution(fast_layout):
    torch.manual_seed(0)
    embed = PatchEmbed(in_chans=3, embed_dim=8, patch_size=4)
    embed.fast_layout = fast_layout
    images = torch.randn(2, 3, 30, 41)  # not multiples of the patch: padded bottom/right
    projected = []
    embed.proj.register_forward_hook(lambda module, inputs, output: projected.append(output))
    ours = embed(images)
    # the fast layout writes (B, H, W, C) directly: no copy before the norm
    assert projected[0].permute(0, 2, 3, 1).is_contiguous() == fast_layout
    padded = F.pad(images, (0, 3, 0, 2))
    nchw = F.conv2d(padded, embed.proj.weight, embed.proj.bias, stride=4)
    official = embed.norm(nchw.permute(0, 2, 3, 1))
    assert ours.shape == (2, 8, 11, 8)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)


def test_the_reference_path_uses_the_official_layouts():
    model = timm.create_model("geomim_test")
    patch_layers = [m for m in model.modules() if isinstance(m, PatchEmbed | PatchMerging)]
    assert len(patch_layers) > 1 and all(layer.fast_layout for layer in patch_layers)
    model.set_fused_attn(False)
    assert not any(layer.fast_layout for layer in patch_layers)
