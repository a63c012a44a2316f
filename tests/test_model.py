"""Model correctness: padding and batch composition change nothing, truncation is exact, every
parameter learns, empty histories work, checkpoints round-trip and training resumes after a kill."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from eventrec.data.gather import make_batch
from eventrec.model.config import CandidateSearchConfig, DlrmConfig, ExperimentalModelConfig, SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.training.objectives.losses import multitask_loss
from eventrec.training.factory import batch_function, build_model

CONFIGS = {
    "causal": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8]),
    "bidirectional": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, causal=False, time_bias=False, mlp_dims=[8]),
    "identity_match": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8],
                                          experimental=ExperimentalModelConfig(identity_match=True)),
    "dot_term": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8],
                                    experimental=ExperimentalModelConfig(dot_term=True)),
    "match_count": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8],
                                       experimental=ExperimentalModelConfig(match_count=True, identity_match=True)),
    "no_match_features": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], match_features=False),
    "no_match": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], match_attention=False),
    "low_rank_cross": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], cross_rank=3),
    "recency_encoder": SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], recency="encoder"),
}


def _model(store, config):
    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(store), config)
    model.eval()
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_scores_do_not_depend_on_batch_composition(tiny_store, name):
    model = _model(tiny_store, CONFIGS[name])
    everything = np.arange(tiny_store.num_examples)
    with torch.no_grad():
        together = model(batch_function(model.config)(tiny_store, everything))
        for i in everything:
            alone = model(batch_function(model.config)(tiny_store, np.array([i])))
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-6)
        # other users around it, in another order, and the same example twice
        mixed = model(batch_function(model.config)(tiny_store, np.array([6, 5, 0, 5, 2])))
        torch.testing.assert_close(mixed[1], together[5], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed[3], together[5], rtol=1e-5, atol=1e-6)


def test_empty_histories_give_finite_scores(tiny_store):
    model = _model(tiny_store, CONFIGS["causal"])
    batch = batch_function(model.config)(tiny_store, np.array([4]))  # user 3 has no events at all
    assert all(s.lengths().sum() == 0 for s in batch.streams.values())
    with torch.no_grad():
        assert torch.isfinite(model(batch)).all()


def test_truncation_is_exact(tiny_store):
    """A history longer than max_history scores exactly as the same model on the truncated one."""
    config = CONFIGS["causal"].model_copy(update={"max_history": 2})
    model = _model(tiny_store, config)
    batch = make_batch(tiny_store, np.array([5]))
    events, _, _, _ = model.event_model(batch)
    assert events.lengths().tolist() == [2 + 1]  # the two most recent events after the summary token
    # the kept events are the two most recent of the merged timeline
    with torch.no_grad():
        full = _model(tiny_store, CONFIGS["causal"]).event_model(batch)[1]
    kept = model.event_model(batch)[1]
    assert kept[1:].tolist() == full[-2:].tolist()
    from eventrec.model.event_model import SUMMARY_TIME

    assert kept[0].item() == SUMMARY_TIME  # the summary token's time (recency: pooling; the request's with recency: encoder)


@pytest.mark.parametrize("config", [CONFIGS["causal"], CONFIGS["bidirectional"], DlrmConfig(attribute_dim=4, bottom_mlp=[8, 4], top_mlp=[8])])
def test_every_parameter_receives_gradient(tiny_store, config):
    model = _model(tiny_store, config)
    model.train()
    everything = np.arange(tiny_store.num_examples)
    batch = batch_function(config)(tiny_store, everything)
    loss, per_task = multitask_loss(model(batch), batch.labels)
    loss.backward()
    def nonzero(grad: torch.Tensor) -> bool:
        values = grad.coalesce().values() if grad.is_sparse else grad
        return bool(torch.any(values != 0))

    silent = [n for n, p in model.named_parameters() if p.grad is None or not nonzero(p.grad)]
    assert silent == []
    assert per_task.shape == (2,)


def test_multitask_loss_masks_missing_labels():
    logits = torch.zeros(3, 2)
    labels = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [1.0, 1.0]])
    total, per_task = multitask_loss(logits, labels)
    assert torch.isfinite(total)
    torch.testing.assert_close(per_task, torch.tensor([np.log(2), np.log(2)], dtype=torch.float32))
    _, none = multitask_loss(logits, torch.full((3, 2), float("nan")))
    assert none.tolist() == [0.0, 0.0]


def test_model_config_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="model_dim"):
        SequenceModelConfig(model_dim=30, num_heads=4)
    with pytest.raises(ValidationError, match="bottom_mlp"):
        DlrmConfig(attribute_dim=8, bottom_mlp=[16, 4])


def test_encoder_dropout_acts_in_training_only():
    """``dropout`` drops event embeddings and sublayer outputs while training; in eval the encoder is deterministic."""
    from eventrec.data.jagged import JaggedTensor
    from eventrec.model.encoder import JaggedTransformerEncoder

    torch.manual_seed(0)
    encoder = JaggedTransformerEncoder(SequenceModelConfig(dropout=0.5))
    events = JaggedTensor(torch.randn(7, 64), torch.tensor([0, 3, 7]), 4)
    timestamps = torch.arange(7)
    encoder.train()
    assert not torch.equal(encoder(events, timestamps).values, encoder(events, timestamps).values)
    encoder.eval()
    torch.testing.assert_close(encoder(events, timestamps).values, encoder(events, timestamps).values, rtol=0, atol=0)
    assert not encoder.input_dropout.training


def test_low_rank_cross_equals_a_full_rank_cross_with_the_product_weight():
    from eventrec.model.heads import CrossNetwork

    torch.manual_seed(0)
    low = CrossNetwork(12, 2, rank=3)
    assert sum(p.numel() for p in low.parameters()) == 2 * (12 * 3 + 3 * 12 + 12)
    for layer in low.layers:  # starts as the identity
        assert torch.count_nonzero(layer[1].weight) == 0
        torch.nn.init.normal_(layer[1].weight)
        torch.nn.init.normal_(layer[1].bias)
    full = CrossNetwork(12, 2)
    with torch.no_grad():
        for f, (down, up) in zip(full.layers, low.layers):
            f.weight.copy_(up.weight @ down.weight)  # W = U V
            f.bias.copy_(up.bias)
    x = torch.randn(5, 12)
    torch.testing.assert_close(low(x), full(x))
    assert isinstance(CrossNetwork(12, 1, rank=12).layers[0], torch.nn.Linear)  # rank >= F: full rank
    with pytest.raises(ValueError, match="rank"):
        CrossNetwork(12, 1, rank=0)


def test_cross_rank_is_validated_and_builds_the_low_rank_head():
    from pydantic import ValidationError

    from eventrec.model.config import SequenceModelConfig

    with pytest.raises(ValidationError, match="cross_rank"):
        SequenceModelConfig(cross_rank=0)
    assert SequenceModelConfig().cross_rank is None


@pytest.mark.parametrize("name", ["causal", "identity_match", "match_count"])
def test_match_term_as_score_bias_equals_the_folded_form(tiny_store, name, monkeypatch):
    """On the CPU the target-attention term enters the keyed pooling as a score bias per candidate;
    the Triton kernels get it folded into more query and key dimensions. Same scores and gradients."""
    batch = batch_function(CONFIGS[name])(tiny_store, np.arange(tiny_store.num_examples))

    def run(form: str):
        model = _model(tiny_store, CONFIGS[name].model_copy(update={"dropout": 0.0}))
        monkeypatch.setattr(model.pooling, "pool", functools.partial(model.pooling.pool, match_form=form))  # the torch path either way
        logits = model(batch)
        loss, _ = multitask_loss(logits, batch.labels)
        loss.backward()
        return logits.detach(), {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}

    folded, folded_grads = run("folded")
    biased, biased_grads = run("bias")
    torch.testing.assert_close(biased, folded, rtol=1e-5, atol=1e-6)
    assert biased_grads.keys() == folded_grads.keys()
    for n in folded_grads:
        torch.testing.assert_close(biased_grads[n], folded_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_experimental_variants_sit_in_their_section():
    """identity_match / dot_term live under ``experimental`` (read-only properties at the top); a config
    written before that (a checkpoint's) still loads; the removed variants are refused, field named."""
    from pydantic import ValidationError

    default = SequenceModelConfig()
    assert default.experimental is None and not default.dot_term and not default.identity_match
    legacy = SequenceModelConfig.model_validate({"dot_term": True, "identity_match": False, "pooling": "keyed_attention", "transition_match": False})
    assert legacy.experimental == ExperimentalModelConfig(dot_term=True) and legacy.dot_term
    assert default.model_copy(update={"experimental": ExperimentalModelConfig(dot_term=True)}).dot_term
    for removed in ({"pooling": "mean"}, {"transition_match": True}):
        with pytest.raises(ValidationError, match=next(iter(removed))):
            SequenceModelConfig(**removed)


READS_TIME = {"causal": False, "recency_encoder": True, "bidirectional": False, "invariant": False, "invariant_token": False,
              "no_summary": True, "no_summary_pooling": False}
TIME_CONFIGS = {
    "invariant": dict(timestamp_encoding=False, time_bias=True, summary_token=False),
    "invariant_token": dict(timestamp_encoding=False, time_bias=False, summary_token=True),
    "no_summary": dict(summary_token=False, recency="encoder"),
    "no_summary_pooling": dict(summary_token=False),
}


@pytest.mark.parametrize("name", list(READS_TIME))
def test_reads_request_time_and_extendable(tiny_store, name):
    config = CONFIGS[name] if name in CONFIGS else CONFIGS["causal"].model_copy(update=TIME_CONFIGS[name])
    model = _model(tiny_store, config)
    assert model.reads_request_time == READS_TIME[name]
    assert model.extendable == (config.causal and not READS_TIME[name])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_score_over_embedded_candidates_equals_forward(tiny_store, name):
    """The serving steps (encode_user, embed_candidates, embed_context, score) give forward's logits."""
    model = _model(tiny_store, CONFIGS[name])
    batch = batch_function(model.config)(tiny_store, np.arange(tiny_store.num_examples))
    with torch.no_grad():
        expected = model(batch)
        user = model.encode_user(batch)
        ids = model.candidate_ids(batch.item) if model.reads_match_ids else None
        got = model.score(user, model.embed_candidates(batch.item), model.embed_context(batch.context), batch.history_index, candidate_ids=ids,
                          item_counts=batch.item_counts)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("update", [TIME_CONFIGS["invariant"], TIME_CONFIGS["invariant_token"], dict(recency="pooling"),
                                    dict(recency="pooling", candidate_search=CandidateSearchConfig(recent=1, per_match=1))])
def test_extend_user_equals_encoding_everything(tiny_store, update):
    """A user side grown one event at a time (the encoder layers' delta attention over their cached
    keys and values; each batch holds only the new event) equals all the events encoded at once."""
    from eventrec.serving.state import UserEvents
    from eventrec.serving.user_states import window_batch

    model = _model(tiny_store, CONFIGS["causal"].model_copy(update=update))
    users = [UserEvents.from_store(tiny_store, row) for row in range(len(tiny_store.user_ids))]
    events, stream = max(((u, s) for u in users for s in range(len(u.streams))), key=lambda us: list(us[0].counts().values())[us[1]])
    data = list(events.streams.values())[stream]
    count = min(len(data.timestamps), data.max_length)  # a window starting at the stream's first event
    assert count >= 3

    def window(covered: int, end: int):
        return tuple((covered, end) if i == stream else (0, 0) for i in range(len(events.streams)))

    def batch(w):
        return window_batch(events, w, 10**9, 2, ["a", "b"])

    with torch.no_grad():
        full = model.encode_user(batch(window(0, count)), capture_kv=True)
        grown = model.encode_user(batch(window(0, 0)), capture_kv=True)
        for end in range(1, count + 1):
            grown = model.encode_user(batch(window(end - 1, end)), cache=grown)
    torch.testing.assert_close(grown.timestamps, full.timestamps)
    if full.match_ids is not None:
        torch.testing.assert_close(grown.match_ids, full.match_ids)
    if full.match_keys is not None:
        torch.testing.assert_close(grown.match_keys, full.match_keys, atol=1e-6, rtol=0)
    for got, expected in [(grown.encoded, full.encoded), (grown.keys, full.keys), (grown.values, full.values)] + \
            [pair for kv_grown, kv_full in zip(grown.layer_kv, full.layer_kv) for pair in zip(kv_grown, kv_full)]:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="extend_user"):
        _model(tiny_store, CONFIGS["recency_encoder"]).extend_user(full, batch(window(0, 0)))


def test_a_recorded_config_without_recency_means_the_encoder():
    """A checkpoint or run recorded before ``recency`` existed trained with the recency in the encoder."""
    from eventrec.model.config import as_recorded
    from eventrec.training.factory import parse_model_config

    data = SequenceModelConfig(recency="encoder").model_dump(mode="json")
    data.pop("recency")
    assert parse_model_config(as_recorded(data)).recency == "encoder"
    assert parse_model_config(as_recorded({**data, "recency": "pooling"})).recency == "pooling"
    assert as_recorded({"kind": "dlrm"}) == {"item_counters": False, "kind": "dlrm"} and as_recorded({}) == {}
