"""The linear encoder (``SequenceModelConfig.encoder = "linear"``): appends from its fixed-size state equal a
full encode, histories do not see each other, the summary token's time is never read, and its config is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.encoder import JaggedTransformerEncoder
from eventrec.model.linear_encoder import time_gaps
from eventrec.training.factory import batch_function, build_model

SMALL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], encoder="linear")


def _encoder(**overrides) -> JaggedTransformerEncoder:
    torch.manual_seed(0)
    return JaggedTransformerEncoder(SequenceModelConfig(**(SMALL | overrides))).eval()


def _histories(lengths: list[int], seed: int = 0) -> tuple[JaggedTensor, torch.Tensor]:
    """Random events ``[sum(N), 16]`` and increasing times with gaps from 0 s to a month."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    total = int(offsets[-1])
    gaps = torch.exp(torch.rand(total, generator=generator) * np.log(3e6)).long()
    gaps[torch.rand(total, generator=generator) < 0.2] = 0
    return JaggedTensor(torch.randn(total, 16, generator=generator), offsets, max(lengths)), 10**9 + torch.cumsum(gaps, 0)


@pytest.mark.parametrize("summary_token", [False, True])
@pytest.mark.parametrize("step", [1, 5])
def test_appends_from_the_state_equal_a_full_encode(summary_token, step):
    """A history encoded up to P, then grown ``step`` positions at a time from its per-layer states,
    gives the full encode's outputs and final states within 1e-5; the state's size never changes."""
    encoder = _encoder(summary_token=summary_token)
    events, times = _histories([70])
    with torch.no_grad():
        full, full_states = encoder.encode(events, times, capture_kv=True)
        prefix = 1
        _, states = encoder.encode(JaggedTensor(events.values[:prefix], torch.tensor([0, prefix]), prefix), times[:prefix], capture_kv=True)
        grown = []
        for start in range(prefix, 70, step):
            end = min(70, start + step)
            out, states = encoder.extend(events.values[start:end], times[start:end], states, times[:start])
            grown.append(out)
            assert [tuple(s.shape) for (s,) in states] == [(1, 2, 8, 8)] * 2
    torch.testing.assert_close(torch.cat(grown), full.values[prefix:], rtol=0, atol=1e-5)
    for (got,), (expected,) in zip(states, full_states):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_histories_do_not_see_each_other():
    encoder = _encoder()
    events, times = _histories([0, 1, 33, 64, 65, 2])
    with torch.no_grad():
        together, states = encoder.encode(events, times, capture_kv=True)
        for b in range(6):
            start, end = int(events.offsets[b]), int(events.offsets[b + 1])
            alone, alone_states = encoder.encode(JaggedTensor(events.values[start:end], torch.tensor([0, end - start]), end - start),
                                                 times[start:end], capture_kv=True)
            torch.testing.assert_close(together.values[start:end], alone.values, rtol=0, atol=1e-5)
            torch.testing.assert_close(states[-1][0][b], alone_states[-1][0][0], rtol=0, atol=1e-5)


def test_the_summary_token_s_time_is_never_read():
    """Position 0 (the token) may carry the request time or 0: the encoded history is the same."""
    encoder = _encoder(summary_token=True)
    events, times = _histories([1, 20, 9])
    starts = events.offsets[:-1]
    with torch.no_grad():
        a = encoder(events, times.clone().index_fill_(0, starts, 0))
        b = encoder(events, times.clone().index_fill_(0, starts, 2 * 10**9))
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    assert not encoder.reads_summary_token_time and encoder.cache_kind == "recurrent"
    softmax = JaggedTransformerEncoder(SequenceModelConfig(model_dim=16, num_heads=2))
    assert softmax.reads_summary_token_time and softmax.cache_kind == "kv"


def test_time_gaps_restart_per_history_and_skip_the_summary_token():
    times = torch.tensor([100, 5, 7, 7, 50, 40, 45])  # histories [100, 5, 7], [7, 50], [40, 45]
    offsets = torch.tensor([0, 3, 5, 7])
    assert time_gaps(times, offsets, untimed=1).tolist() == [0, 0, 2, 0, 43, 0, 5]  # 5 - 100 < 0: clamped
    assert time_gaps(times, offsets, untimed=2).tolist() == [0, 0, 2, 0, 0, 0, 0]


def test_the_time_decay_forgets_across_long_gaps():
    """With time_bias, an old event weighs less the older it is (heads' half-lives: an hour to a year)."""
    encoder = _encoder(summary_token=False, num_layers=1)
    events, _ = _histories([6])
    later = JaggedTensor(events.values[1:], torch.tensor([0, 5]), 5)

    def weight_of_the_first_event(gap: int) -> float:
        times = torch.tensor([0, 10, 20, 30, 40, 50]) + 10**9
        times[1:] += gap  # the first event ``gap`` seconds before the rest
        with torch.no_grad():
            return float((encoder(events, times).values[-1] - encoder(later, times[1:]).values[-1]).norm())

    minute, year, decades = (weight_of_the_first_event(gap) for gap in (60, 365 * 86_400, 30 * 365 * 86_400))
    assert decades < 1e-3 * minute and year < 0.75 * minute


def test_every_linear_parameter_gets_a_gradient():
    encoder = _encoder()
    encoder.train()
    events, times = _histories([5, 40])
    encoder(events, times).values.square().sum().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_config_checks_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="encoder"):
        SequenceModelConfig(encoder="linear", causal=False)
    with pytest.raises(ValidationError, match="encoder"):
        SequenceModelConfig(encoder="mamba")
    assert SequenceModelConfig().encoder == "softmax"


def test_the_ranker_with_a_linear_encoder_scores_independently_of_the_batch(tiny_store):
    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(tiny_store), SequenceModelConfig(**SMALL)).eval()
    everything = np.arange(tiny_store.num_examples)
    with torch.no_grad():
        together = model(batch_function(model.config)(tiny_store, everything))
        for i in everything:
            torch.testing.assert_close(model(batch_function(model.config)(tiny_store, np.array([i])))[0], together[i], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(together).all()
