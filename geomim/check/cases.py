"""The problems each fused op is checked on: geomim_base's real shapes, or tiny ones (`quick`).

A case holds an op's float inputs (fp32, on the device), the names of those that take gradients,
and a call `(inputs, backend) -> output`; everything else an op reads (indices, masks, cells) is
bound into the call. Every case is seeded, so two runs check the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geomim.data.rig import rig_cameras
from geomim.kernels import bev_pool, row_attention, splat, window_attention
from geomim.kernels.window_attention import window_mask_from_groups
from geomim.layers import relative_position_index
from geomim.pretrain.view_transform import DepthLSS, ViewTransformConfig

HEAD_DIM = 32
VIEWS = 6
# geomim_base at 6 x 256 x 704, per stage: windows, window side, heads (token maps 64 x 176,
# 32 x 88, 16 x 44 and 8 x 22, padded to whole windows of 16, 16, 16 and 8)
BASE_STAGES = ((6 * 4 * 11, 16, 4), (6 * 2 * 6, 16, 8), (6 * 1 * 3, 16, 16), (6 * 1 * 3, 8, 32))
QUICK_STAGES = ((2 * VIEWS, 4, 2), (VIEWS, 2, 4))
# the pretraining decoder's cross-view attention: 6 views x 16 x 44 tokens, 16 heads x 32
DECODER_ROWS = (16, 44, 16, HEAD_DIM)
QUICK_ROWS = (2, 5, 2, 8)
QUICK_VIEW_TRANSFORM = ViewTransformConfig(
    context_channels=8, image_size=(64, 176), xbound=(-51.2, 51.2, 3.2),
    ybound=(-51.2, 51.2, 3.2), dbound=(1.0, 60.0, 4.0),
)  # fmt: skip


@dataclass(frozen=True)
class OpCase:
    """One problem of one op; `low_precision` says whether the model runs it in bf16 / fp16;
    `defined` (boolean, the output's leading dims) marks the output rows every backend must
    agree on, where some rows are unspecified (a padding token's, which no caller reads)."""

    op: str
    shape: str
    inputs: dict[str, Tensor]
    differentiable: tuple[str, ...]
    call: Callable[[dict[str, Tensor], str], Tensor]
    low_precision: bool = True
    defined: Tensor | None = None


def op_cases(device: torch.device, quick: bool) -> list[OpCase]:
    """Every op's cases on `device`: window attention per stage, then the rest."""
    return [
        *window_attention_cases(device, quick),
        row_attention_case(device, quick),
        *pooling_cases(device, quick),
    ]


def window_attention_cases(device: torch.device, quick: bool) -> list[OpCase]:
    """Each stage's windows with the relative bias and a complementary-group mask (one mask per
    window of an image, shared by the views; one padding token per window, in no group: its
    output is unspecified, since fp16 cannot express the reference's uniform row)."""
    cases = []
    generator = torch.Generator().manual_seed(0)
    head_dim = 8 if quick else HEAD_DIM
    for stage, (windows, side, heads) in enumerate(QUICK_STAGES if quick else BASE_STAGES):
        tokens = side * side
        qkv = torch.randn(windows, tokens, 3, heads, head_dim, generator=generator)
        table = torch.randn((2 * side - 1) ** 2, heads, generator=generator)
        groups = torch.randint(0, 2, (windows // VIEWS, tokens), generator=generator)
        groups[:, -1] = -1
        mask = window_mask_from_groups(groups.to(device))
        index = relative_position_index(side).to(device)

        def call(inputs: dict[str, Tensor], backend: str, index=index, mask=mask) -> Tensor:
            return window_attention(inputs["qkv"], inputs["table"], index, mask, backend)

        cases.append(
            OpCase(
                "window_attention",
                f"stage {stage + 1}: {windows} windows of {side}x{side}, {heads} heads x "
                f"{head_dim}, group mask",
                {"qkv": qkv.to(device), "table": table.to(device)},
                ("qkv", "table"),
                call,
                defined=(groups >= 0).repeat(VIEWS, 1).to(device),  # window b reads b % G
            )
        )
    return cases


def row_attention_case(device: torch.device, quick: bool) -> OpCase:
    """Cross-view attention over the rows of 6 views, half the keys hidden (a group mask)."""
    height, width, heads, head_dim = QUICK_ROWS if quick else DECODER_ROWS
    generator = torch.Generator().manual_seed(1)
    qkv = torch.randn(1, VIEWS, height, width, 3, heads, head_dim, generator=generator)
    visible = (torch.rand(1, VIEWS, height, width, generator=generator) < 0.5).to(device)

    def call(inputs: dict[str, Tensor], backend: str) -> Tensor:
        return row_attention(inputs["qkv"], visible, backend)

    shape = f"{VIEWS} views x {height} x {width} tokens, {heads} heads x {head_dim}, keys masked"
    return OpCase("row_attention", shape, {"qkv": qkv.to(device)}, ("qkv",), call)


def pooling_cases(device: torch.device, quick: bool) -> list[OpCase]:
    """Lift-Splat pooling of the rig's frustum (`splat`) and of its materialised features
    (`bev_pool`); both run in fp32 in the model (autocast off, as the official force_fp32)."""
    config = QUICK_VIEW_TRANSFORM if quick else ViewTransformConfig()
    transform = DepthLSS(config)
    with torch.no_grad():
        points = transform.frustum_points(rig_cameras(config.image_size), torch.eye(4)[None])
        cells, num_cells = transform.cells(points)
    generator = torch.Generator().manual_seed(2)
    bins, (rows, cols) = config.depth_bins, config.feature_size
    depth = torch.randn(VIEWS, bins, rows, cols, generator=generator).softmax(dim=1)
    context = torch.randn(VIEWS, rows, cols, config.context_channels, generator=generator)
    cells = cells.to(device)
    grid = "x".join(str(n) for n in config.grid_size[:2])

    def splat_call(inputs: dict[str, Tensor], backend: str) -> Tensor:
        return splat(inputs["depth"], inputs["context"], cells, num_cells, None, backend)

    features = (depth[..., None] * context[:, None]).reshape(-1, config.context_channels)
    flat = cells.reshape(-1)

    def pool_call(inputs: dict[str, Tensor], backend: str) -> Tensor:
        return bev_pool(inputs["features"], flat, num_cells + 1, backend)

    points_label = f"{depth.numel()} frustum points x {config.context_channels} channels"
    return [
        OpCase(
            "splat", f"{points_label} into {grid} cells",
            {"depth": depth.to(device), "context": context.to(device)}, ("depth", "context"),
            splat_call, low_precision=False,
        ),
        OpCase(
            "bev_pool", f"{points_label} into {grid} cells (+1 for dropped points)",
            {"features": features.to(device)}, ("features",), pool_call, low_precision=False,
        ),
    ]  # fmt: skip
