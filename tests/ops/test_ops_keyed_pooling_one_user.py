"""The one-user backend of keyed pooling (serving's path) equals the reference, and the model's pooling."""

from __future__ import annotations

import pytest
import torch

from eventrec.data.jagged import JaggedTensor
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.ops import keyed_pooling_attention
from eventrec.ops.keyed_pooling_one_user import EXP_SAFE_LOGIT, FactoredMatch, OneUserPlan, folded_match_queries, logit_bound, prepare_user


def _case(positions: int, vocabularies: int, candidates: int = 300, slots: int = 4, heads: int = 4, d: int = 16, key_scale: float = 1.0):
    q = torch.randn(1, candidates * slots, heads, d)
    k, v = torch.randn(positions, heads, d) * key_scale * 0.3, torch.randn(positions, heads, d)
    match = None
    if vocabularies:
        unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
        match = FactoredMatch(unit(candidates, vocabularies, 8), unit(positions, vocabularies, 8), torch.randn(heads, vocabularies))
    return q, k, v, match


@pytest.mark.parametrize("positions", [0, 1, 37, 600])
@pytest.mark.parametrize("vocabularies", [0, 2])
@pytest.mark.parametrize("fold_match", [False, True])
@pytest.mark.parametrize("chunk", [None, 100, 7])
@pytest.mark.parametrize("unshifted", [True, False])
@pytest.mark.parametrize("base2", [False, True])
def test_one_user_backend_equals_the_reference(positions, vocabularies, fold_match, chunk, unshifted, base2):
    """The match term folded into the keys (the bf16 layout) or separate; blocks that divide the 300
    candidates (100) or leave a partial last block (7); the unshifted exp with the denominators from the
    values product, or the row-max-shifted normalisation; logits in base-2 units or not."""
    torch.manual_seed(positions + vocabularies)
    q, k, v, match = _case(positions, vocabularies)
    offsets = torch.tensor([0, positions])
    expected = keyed_pooling_attention(q.double(), k.double(), v.double(), offsets, bias_group=4, backend="reference",
                                       match=None if match is None else FactoredMatch(match.queries.double(), match.keys.double(), match.weight.double()))
    plan = OneUserPlan(chunk, max_unshifted_logit=EXP_SAFE_LOGIT if unshifted else 0, fold_match=fold_match, base2=base2)
    if positions:
        user = prepare_user(k, v, 16**-0.5, match, q, fold_match, base2)
        queries = q.view(300, 4, 4, 16)
        folded = folded_match_queries(user, None if match is None else match.queries, 300) if user.match_folded else None
        assert logit_bound(user, queries, folded) < EXP_SAFE_LOGIT  # the fast path is taken
    got = keyed_pooling_attention(q, k, v, offsets, bias_group=4, match=match, plan=plan, backend="one_user")
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fold_match", [False, True])
def test_large_logits_fall_back_to_the_shifted_normalisation(fold_match):
    """Keys 20x larger: logits of several hundred, whose unshifted exp would overflow; the bound sees
    it and the backend still equals the reference (no inf / NaN)."""
    torch.manual_seed(7)
    q, k, v, match = _case(50, 2, candidates=20, key_scale=20.0)
    q = q * 5
    expected = keyed_pooling_attention(q, k, v, torch.tensor([0, 50]), bias_group=4, match=match, backend="torch")
    user = prepare_user(k, v, 16**-0.5, match, q, fold_match)
    folded = folded_match_queries(user, match.queries, 20) if user.match_folded else None
    assert logit_bound(user, q.view(20, 4, 4, 16), folded) > EXP_SAFE_LOGIT
    got = keyed_pooling_attention(q, k, v, torch.tensor([0, 50]), bias_group=4, match=match, backend="one_user",
                                  plan=OneUserPlan(max_unshifted_logit=EXP_SAFE_LOGIT, fold_match=fold_match))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_no_candidates_and_checks():
    q, k, v, _ = _case(5, 0, candidates=0)
    assert keyed_pooling_attention(q, k, v, torch.tensor([0, 5]), bias_group=4, backend="one_user").shape == (1, 0, 4, 16)
    with pytest.raises(ValueError, match="one user"):
        keyed_pooling_attention(q, k, v, torch.tensor([0, 2, 5]), bias_group=4, backend="one_user")


@pytest.mark.parametrize("match", [0, 2])
def test_model_pooling_through_the_backend_equals_its_own_pool(match):
    """``KeyedAttentionPooling.pool`` with a plan (serving) equals it without (training's path)."""
    torch.manual_seed(match)
    pooling = KeyedAttentionPooling(64, 48, num_slots=4, num_heads=4, match_vocabularies=match, match_dim=16 * match).eval()
    if match:
        pooling.match_weight.data = torch.randn(4, match) * 3
    match_keys = torch.nn.functional.normalize(torch.randn(40, match, 16), dim=-1).view(40, 16 * match) if match else None
    keys, values = pooling.keys_values(JaggedTensor(torch.randn(40, 64), torch.tensor([0, 40]), 40))
    candidates = torch.randn(300, 48)
    match_query = torch.nn.functional.normalize(torch.randn(300, match, 16), dim=-1).view(300, 16 * match) if match else None
    with torch.no_grad():
        expected = pooling.pool(keys, values, torch.tensor([0, 40]), 40, candidates, torch.zeros(300, dtype=torch.int64), match_query, match_keys)
        got = pooling.pool(keys, values, torch.tensor([0, 40]), 40, candidates, None, match_query, match_keys,
                           plan=OneUserPlan(max_unshifted_logit=EXP_SAFE_LOGIT, base2=True))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
