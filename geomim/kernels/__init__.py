"""Fast ops behind one dispatch function each, with the plain PyTorch reference beside them:
one file per op (`window_attention`, `row_attention`, `splat`, `bev_pool`), one per Triton
kernel (`triton_<op>`), shared Triton helpers in `_triton`.

`geomim.kernels.dispatch` picks the backend of each call (argument, `GEOMIM_KERNELS`, or the
device's default) and records it: `last_backend("window_attention")`.
"""

from geomim.kernels.bev_pool import bev_pool, reference_bev_pool
from geomim.kernels.dispatch import BACKENDS, last_backend, set_backend
from geomim.kernels.row_attention import reference_row_attention, row_attention
from geomim.kernels.splat import SplatPlan, splat, splat_plan
from geomim.kernels.window_attention import (
    WindowMask,
    reference_window_attention,
    window_attention,
    window_mask_from_groups,
)

__all__ = [
    "BACKENDS",
    "SplatPlan",
    "WindowMask",
    "bev_pool",
    "last_backend",
    "reference_bev_pool",
    "reference_row_attention",
    "reference_window_attention",
    "row_attention",
    "set_backend",
    "splat",
    "splat_plan",
    "window_attention",
    "window_mask_from_groups",
]
