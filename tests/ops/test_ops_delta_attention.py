"""Causal delta attention: the torch path against the reference, and both against a full causal pass."""

from __future__ import annotations

import pytest
import torch

from eventrec.ops import causal_delta_attention, jagged_self_attention


@pytest.mark.parametrize("cached", [0, 1, 9])
@pytest.mark.parametrize("new", [1, 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_delta_attention_equals_the_full_causal_pass(cached, new, with_bias):
    torch.manual_seed(cached * 10 + new)
    n, h, d = cached + new, 2, 8
    q, k, v = (torch.randn(n, h, d, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(h, 16, dtype=torch.float64) if with_bias else None
    times = torch.sort(torch.randint(0, 5000, (n,))).values
    full = jagged_self_attention(q, k, v, torch.tensor([0, n]), causal=True, time_bias=bias, timestamps=times if with_bias else None,
                                 backend="reference")[cached:]
    kwargs = dict(time_bias=bias, timestamps=times[cached:] if with_bias else None, cached_timestamps=times[:cached] if with_bias else None)
    for backend in ("reference", "torch"):
        got = causal_delta_attention(q[cached:], k[cached:], v[cached:], k[:cached], v[:cached], backend=backend, **kwargs)
        torch.testing.assert_close(got, full, atol=1e-10, rtol=0)


def test_torch_path_float32_and_checks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 8) for _ in range(3))
    ck, cv = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    torch.testing.assert_close(causal_delta_attention(q, k, v, ck, cv), causal_delta_attention(q, k, v, ck, cv, backend="reference"),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="time_bias"):
        causal_delta_attention(q, k, v, ck, cv, time_bias=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="cached_k"):
        causal_delta_attention(q, k, v, ck[:, :1], cv)
