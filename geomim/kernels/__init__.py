"""Fast ops behind one dispatch function each, with the plain PyTorch reference beside them."""

from geomim.kernels.attention import attention_with_bias, reference_attention_with_bias
from geomim.kernels.bev_pool import bev_pool, reference_bev_pool

__all__ = ["attention_with_bias", "bev_pool", "reference_attention_with_bias", "reference_bev_pool"]
