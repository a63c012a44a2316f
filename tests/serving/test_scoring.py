"""The restructured keyed pooling of the serving path equals the model's own ``pool``."""

from __future__ import annotations

import pytest
import torch

from eventrec.jagged import JaggedTensor
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.serving.scoring import pool_candidates, prepare_user


@pytest.mark.parametrize("positions", [0, 1, 37, 600])
@pytest.mark.parametrize("match", [0, 2])
@pytest.mark.parametrize("fold_match", [False, True])
@pytest.mark.parametrize("chunk", [None, 100, 7])
def test_pool_candidates_equals_model_pool(positions, match, fold_match, chunk):
    """Also with the match embeddings folded into the keys (the bf16 layout), here in fp32; blocks of
    candidates that divide the 300 candidates (100) or leave a partial last block (7, the default)."""
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
        got = pool_candidates(pooling, prepare_user(pooling, keys, values, fold_match=fold_match), candidates, match_query, chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
