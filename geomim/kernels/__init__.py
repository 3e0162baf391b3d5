"""Fast ops behind one dispatch function each, with the plain PyTorch reference beside them."""

from geomim.kernels.attention import attention_with_bias, reference_attention_with_bias

__all__ = ["attention_with_bias", "reference_attention_with_bias"]
