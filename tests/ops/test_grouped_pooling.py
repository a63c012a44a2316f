"""Keyed pooling over shared positions plus each candidate's group: the torch path against the
per-candidate reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from eventrec.ops.grouped_pooling import GroupMatch, grouped_pooling_attention
from ops_cases import assert_same_values_and_gradients


def _case(c=40, m=3, h=2, d=4, s=5, groups=4, p=6, match=True, bias=True, no_group=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    valid = torch.rand(groups, p, generator=g) < 0.7
    if groups:
        valid[0] = False  # a group whose list is empty
    candidate_group = torch.randint(-1 if no_group else 0, max(groups, 1), (c,), generator=g) if groups else torch.full((c,), -1)
    case = dict(q=rnd(c, m, h, d), shared_k=rnd(s, h, d), shared_v=rnd(s, h, d), group_k=rnd(groups, p, h, d), group_v=rnd(groups, p, h, d),
                group_valid=valid, candidate_group=candidate_group)
    if bias:
        case["shared_bias"] = rnd(c, h, s)
    if match:
        case["match"] = GroupMatch(rnd(c, 2, 3), rnd(groups, p, 2, 3), rnd(h, 2))
    return case


def _leaves(case: dict) -> list[torch.Tensor]:
    leaves = [v for v in case.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    if "match" in case:
        leaves += [case["match"].queries, case["match"].keys, case["match"].weight]
    return leaves


@pytest.mark.parametrize("kwargs", [{}, {"bias": False, "match": False}, {"s": 0}, {"s": 0, "no_group": False}, {"groups": 0, "p": 0},
                                    {"c": 300, "groups": 3}, {"c": 1, "groups": 1}, {"c": 130, "groups": 2, "no_group": False}])
def test_torch_equals_reference_forward_and_backward(kwargs):
    case = _case(**kwargs)
    got = grouped_pooling_attention(**case, scale=0.7)
    expected = grouped_pooling_attention(**case, scale=0.7, backend="reference")
    assert_same_values_and_gradients(got, expected, _leaves(case))


def test_a_candidate_without_keys_pools_to_zeros_and_large_scores_stay_finite():
    case = _case(s=0)
    out = grouped_pooling_attention(**case)
    alone = (case["candidate_group"] < 0) | (case["candidate_group"] == 0)  # no group, or the group with an empty list
    assert alone.any() and torch.equal(out[alone], torch.zeros_like(out[alone]))
    big = _case(seed=1)
    big["q"] = big["q"].detach() * 1e4
    assert torch.isfinite(grouped_pooling_attention(**big)).all()


def test_shapes_are_checked():
    case = _case()
    with pytest.raises(ValueError, match="candidate_group"):
        grouped_pooling_attention(**{**case, "candidate_group": case["candidate_group"][:-1]})
    with pytest.raises(ValueError, match="candidate_group"):
        grouped_pooling_attention(**{**case, "candidate_group": torch.full_like(case["candidate_group"], 4)})
    with pytest.raises(ValueError, match="shared_bias"):
        grouped_pooling_attention(**{**case, "shared_bias": case["shared_bias"][:, :, :-1]})
    with pytest.raises(ValueError, match="backend"):
        grouped_pooling_attention(**case, backend="triton")
