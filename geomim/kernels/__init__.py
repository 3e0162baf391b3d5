"""Fast ops behind one dispatch function each, with the plain PyTorch reference beside them.

`geomim.kernels.dispatch` picks the backend of each call (argument, `GEOMIM_KERNELS`, or the
device's default) and records it: `last_backend("window_attention")`.
"""

from geomim.kernels.attention import (
    WindowMask,
    attention_with_bias,
    reference_attention_with_bias,
    window_attention,
)
from geomim.kernels.bev_pool import bev_pool, reference_bev_pool
from geomim.kernels.cross_view import row_attention
from geomim.kernels.dispatch import BACKENDS, last_backend, set_backend
from geomim.kernels.splat import SplatPlan, splat, splat_plan

__all__ = [
    "BACKENDS",
    "SplatPlan",
    "WindowMask",
    "attention_with_bias",
    "bev_pool",
    "last_backend",
    "reference_attention_with_bias",
    "reference_bev_pool",
    "row_attention",
    "set_backend",
    "splat",
    "splat_plan",
    "window_attention",
]
