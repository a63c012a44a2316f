"""transition_match: a directed item-to-item channel of the target attention.

The events' match keys end with their unit "from" embeddings, the candidates' match queries with
their unit "to" embeddings; the channel's logit for candidate c on event e is then
cos(from[e], to[c]) times a learned weight per head, which need not equal cos(from[c], to[e]).
"""

from __future__ import annotations

import pytest
import torch

from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.training.factory import build_model

CONFIG = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], transition_match=True)


def test_needs_the_match_attention():
    with pytest.raises(ValueError, match="transition_match"):
        SequenceModelConfig(transition_match=True, match_attention=False)
    with pytest.raises(ValueError, match="transition_match"):
        SequenceModelConfig(transition_match=True, pooling="mean")


def test_the_channel_is_directed(tiny_store):
    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(tiny_store), CONFIG)
    assert model.match_vocabularies == ["ad_id", "category"]
    dim = CONFIG.attribute_dim
    blocks = len(model.match_vocabularies)
    assert model.event_model.match_dim == 2 * blocks * dim  # learned embeddings, then "from" embeddings
    a, b = 3, 7  # two ad ids: a → b is a transition, b → a is not
    e1, e2, e3 = torch.eye(dim)[:3]
    with torch.no_grad():
        model.transition_from["ad_id"].weight[a] = 5 * e1  # the cosine ignores the scale
        model.transition_to["ad_id"].weight[b] = e1
        model.transition_from["ad_id"].weight[b] = e3
        model.transition_to["ad_id"].weight[a] = e2
    ads, category = torch.tensor([a, b]), torch.tensor([1, 1])
    keys = model.event_model.match_keys("click", {"ad_id": ads, "category": category}, 2, "cpu")  # events a, b
    queries = model.match_queries({"ad_id": ads, "category": category})  # candidates a, b
    assert keys.shape == queries.shape == (2, 2 * blocks * dim)
    transition = keys[:, blocks * dim : (blocks + 1) * dim] @ queries[:, blocks * dim : (blocks + 1) * dim].T  # [event, candidate]
    torch.testing.assert_close(transition, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # a → b only
    # the learned-embedding block stays symmetric: cos(E[a], E[b]) both ways
    similarity = keys[:, :dim] @ queries[:, :dim].T
    torch.testing.assert_close(similarity, similarity.T)
    # a stream without the vocabulary (views carry no ad id) has a zero block: it matches nothing
    views = model.event_model.match_keys("view", {"category": category}, 2, "cpu")
    assert torch.equal(views[:, blocks * dim : (blocks + 1) * dim], torch.zeros(2, dim))


def test_the_channel_moves_the_score(tiny_store):
    """Through the whole model: a candidate's logit changes when only its "to" embedding does."""
    from eventrec.data.gather import make_batch

    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(tiny_store), CONFIG).eval()
    batch = make_batch(tiny_store, torch.arange(tiny_store.num_examples).numpy())
    with torch.no_grad():
        before = model(batch)
        items = batch.item["ad_id"].unique()
        model.transition_to["ad_id"].weight[items] = torch.randn(len(items), CONFIG.attribute_dim)
        after = model(batch)
    has_clicks = batch.streams["click"].jagged().lengths()[batch.history_index] > 0
    assert has_clicks.any() and not torch.allclose(before[has_clicks], after[has_clicks])
