"""attention_with_bias against the explicit reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from geomim.kernels import attention_with_bias, reference_attention_with_bias


@pytest.mark.parametrize("batch, heads, tokens, head_dim", [(5, 4, 16, 8), (2, 1, 49, 32)])
def test_matches_reference(batch, heads, tokens, head_dim):
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, batch, heads, tokens, head_dim, generator=generator).unbind(0)
    bias = torch.randn(heads, tokens, tokens, generator=generator)
    fast = attention_with_bias(q, k, v, bias)
    assert fast.shape == (batch, tokens, heads * head_dim)
    torch.testing.assert_close(
        fast, reference_attention_with_bias(q, k, v, bias), atol=1e-5, rtol=0
    )


def test_bias_gradients_match_reference():
    generator = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 3, 2, 16, 8, generator=generator).unbind(0)
    bias = torch.randn(2, 16, 16, generator=generator, requires_grad=True)
    grads = [
        torch.autograd.grad(attend(q, k, v, bias).square().sum(), bias)[0]
        for attend in (attention_with_bias, reference_attention_with_bias)
    ]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_bf16_inputs_stay_close():
    generator = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 4, 2, 16, 8, generator=generator).unbind(0)
    bias = torch.randn(2, 16, 16, generator=generator)
    low = attention_with_bias(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(
        low.float(), reference_attention_with_bias(q, k, v, bias), atol=5e-2, rtol=0
    )
