"""The restructured keyed pooling of the serving path equals the model's own ``pool``."""

from __future__ import annotations

import pytest
import torch

from eventrec.data.jagged import JaggedTensor
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.serving.scoring import EXP_SAFE_LOGIT, folded_match_queries, logit_bound, pool_candidates, prepare_user


@pytest.mark.parametrize("positions", [0, 1, 37, 600])
@pytest.mark.parametrize("match", [0, 2])
@pytest.mark.parametrize("fold_match", [False, True])
@pytest.mark.parametrize("chunk", [None, 100, 7])
@pytest.mark.parametrize("unshifted", [True, False])
@pytest.mark.parametrize("base2", [False, True])
def test_pool_candidates_equals_model_pool(positions, match, fold_match, chunk, unshifted, base2):
    """Also with the match embeddings folded into the keys (the bf16 layout), here in fp32; blocks of
    candidates that divide the 300 candidates (100) or leave a partial last block (7, the default);
    the unshifted exp with the denominators from the values product, and the softmax; logits in
    base-2 units (exp2, and the softmax's rescaling back to base e)."""
    torch.manual_seed(positions + match)
    pooling = KeyedAttentionPooling(64, 48, num_slots=4, num_heads=4, match_vocabularies=match, match_dim=16 * match).eval()
    if match:
        pooling.match_weight.data = torch.randn(4, match) * 3
    encoded = torch.randn(positions, 64)
    match_keys = torch.nn.functional.normalize(torch.randn(positions, match, 16), dim=-1).view(positions, 16 * match) if match else None
    keys, values = pooling.keys_values(JaggedTensor(encoded, torch.tensor([0, positions]), positions), match_keys)
    candidates = torch.randn(300, 48)
    match_query = torch.nn.functional.normalize(torch.randn(300, match, 16), dim=-1).view(300, 16 * match) if match else None
    with torch.no_grad():
        expected = pooling.pool(keys, values, torch.tensor([0, positions]), positions, candidates, torch.zeros(300, dtype=torch.int64), match_query)
        user = prepare_user(pooling, keys, values, fold_match=fold_match, base2=base2)
        if positions:
            assert logit_bound(user, *query_parts(pooling, user, candidates, match_query)) < EXP_SAFE_LOGIT  # the fast path is taken
        got = pool_candidates(pooling, user, candidates, match_query, chunk, max_unshifted_logit=EXP_SAFE_LOGIT if unshifted else 0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def query_parts(pooling: KeyedAttentionPooling, user, candidates: torch.Tensor, match_query):
    """The content queries ``[B, M, H, d]`` and folded match queries of :func:`pool_candidates`."""
    b = len(candidates)
    q = (pooling.query(candidates).view(b, pooling.num_slots, -1) + pooling.slots).view(b, pooling.num_slots, pooling.num_heads, -1)
    return q, folded_match_queries(user, match_query, b) if user.match_folded else None


@pytest.mark.parametrize("fold_match", [False, True])
def test_large_logits_fall_back_to_the_softmax(fold_match):
    """Keys 20x larger: logits of several hundred, whose unshifted exp would overflow; the bound
    sees it, the softmax runs, and the result still equals the model's pooling (no inf / NaN)."""
    torch.manual_seed(7)
    pooling = KeyedAttentionPooling(64, 48, num_slots=4, num_heads=4, match_vocabularies=2, match_dim=32).eval()
    pooling.key_value.weight.data *= 20
    encoded = torch.randn(50, 64)
    match_keys = torch.nn.functional.normalize(torch.randn(50, 2, 16), dim=-1).view(50, 32)
    keys, values = pooling.keys_values(JaggedTensor(encoded, torch.tensor([0, 50]), 50), match_keys)
    candidates = torch.randn(20, 48) * 5
    match_query = torch.nn.functional.normalize(torch.randn(20, 2, 16), dim=-1).view(20, 32)
    with torch.no_grad():
        expected = pooling.pool(keys, values, torch.tensor([0, 50]), 50, candidates, torch.zeros(20, dtype=torch.int64), match_query)
        user = prepare_user(pooling, keys, values, fold_match=fold_match)
        assert logit_bound(user, *query_parts(pooling, user, candidates, match_query)) > EXP_SAFE_LOGIT
        got = pool_candidates(pooling, user, candidates, match_query)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_no_candidates_pool_to_an_empty_batch():
    """Zero candidates against a non-empty history: ``[0, M, D]``, no error."""
    pooling = KeyedAttentionPooling(64, 48, num_slots=4, num_heads=4).eval()
    keys, values = pooling.keys_values(JaggedTensor(torch.randn(5, 64), torch.tensor([0, 5]), 5))
    with torch.no_grad():
        got = pool_candidates(pooling, prepare_user(pooling, keys, values), torch.randn(0, 48), None, max_unshifted_logit=EXP_SAFE_LOGIT)
    assert got.shape == (0, 4, 64)
