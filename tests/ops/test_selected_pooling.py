"""The selected-positions keyed pooling: the torch path against the per-candidate reference."""

from __future__ import annotations

import pytest
import torch

from eventrec.ops.selected_pooling import selected_pooling_attention
from ops_cases import assert_same_values_and_gradients


def _case(c=5, m=3, h=2, d=4, s=6, extras=(0, 3, 1, 0, 4), bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(extras)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    case = dict(q=rnd(c, m, h, d), shared_k=rnd(s, h, d), shared_v=rnd(s, h, d), extra_k=rnd(t, h, d), extra_v=rnd(t, h, d),
                extra_candidate=torch.repeat_interleave(torch.arange(c), torch.tensor(extras)))
    if bias:
        case |= dict(shared_bias=rnd(c, h, s), extra_bias=rnd(t, h))
    return case


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"s": 0}, {"s": 0, "extras": (0, 2, 0, 0, 1)}, {"extras": (0, 0, 0, 0, 0)}])
def test_torch_equals_reference_forward_and_backward(kwargs):
    case = _case(**kwargs)
    leaves = [v for v in case.values() if v.requires_grad]
    got = selected_pooling_attention(**case, scale=0.7)
    expected = selected_pooling_attention(**case, scale=0.7, backend="reference")
    assert_same_values_and_gradients(got, expected, leaves)


def test_a_candidate_without_keys_pools_to_zeros_and_large_scores_stay_finite():
    case = _case(s=0, extras=(0, 2, 0, 0, 1))
    out = selected_pooling_attention(**case)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    big = _case()
    big["shared_bias"] = big["shared_bias"].detach() * 1e4
    assert torch.isfinite(selected_pooling_attention(**big)).all()


def test_the_same_as_full_softmax_when_every_key_is_shared():
    case = _case(extras=(0, 0, 0, 0, 0))
    q, k, v, bias = case["q"], case["shared_k"], case["shared_v"], case["shared_bias"]
    scores = torch.einsum("cmhd,shd->cmhs", q, k) * 0.5 + bias.unsqueeze(1)
    expected = torch.einsum("cmhs,shd->cmhd", torch.softmax(scores, -1), v)
    torch.testing.assert_close(selected_pooling_attention(**case, scale=0.5), expected)


def test_bad_shapes_name_the_argument():
    case = _case()
    case["shared_bias"] = case["shared_bias"][:, :, :2]
    with pytest.raises(ValueError, match="shared_bias"):
        selected_pooling_attention(**case)
