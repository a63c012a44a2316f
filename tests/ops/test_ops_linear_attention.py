"""Causal gated linear attention: the chunked form and the serving recurrence against the step-by-step
definition, forward and backward, on jagged batches with empty, length-1 and ragged sequences."""

from __future__ import annotations

import pytest
import torch

from eventrec.ops import causal_linear_attention, linear_attention_extend
from eventrec.ops.linear_attention_reference import causal_linear_attention_reference
from eventrec.ops.linear_attention_torch import pick_chunk

from ops_cases import offsets_from

LENGTHS = [0, 1, 5, 16, 17, 40, 3, 0]  # empty, length 1, multiples of the chunk and not


def inputs(lengths: list[int], heads: int = 2, d_k: int = 4, d_v: int = 3, dtype=torch.float64, big_gaps: bool = False, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    offsets = offsets_from(lengths, torch.device("cpu"))
    total = int(offsets[-1])
    q, k = (torch.randn(total, heads, d_k, generator=generator, dtype=dtype) for _ in range(2))
    v = torch.randn(total, heads, d_v, generator=generator, dtype=dtype)
    log_decay = -torch.rand(total, heads, generator=generator, dtype=dtype) * 0.7
    if big_gaps:  # a long time gap: a decay of thousands beside small ones (the state is wiped there)
        log_decay[torch.rand(total, heads, generator=generator) < 0.2] = -5000.0
    return q, k, v, log_decay, offsets


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_the_recurrence_forward(chunk, with_state):
    q, k, v, g, offsets = inputs(LENGTHS)
    state = torch.randn(len(LENGTHS), 2, 4, 3, dtype=torch.float64) if with_state else None
    expected, expected_final = causal_linear_attention_reference(q, k, v, g, offsets, initial_state=state)
    got, final = causal_linear_attention(q, k, v, g, offsets, initial_state=state, chunk_size=chunk)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, expected_final, rtol=0, atol=1e-12)
    if with_state:  # an empty sequence keeps its initial state
        torch.testing.assert_close(final[0], state[0], rtol=0, atol=0)


def test_chunked_equals_the_recurrence_backward():
    q, k, v, g, offsets = inputs(LENGTHS)
    state = torch.randn(len(LENGTHS), 2, 4, 3, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, state)]
    weights_out, weights_state = torch.randn(len(q), 2, 3, dtype=torch.float64), torch.randn_like(state)

    def grads(backend: str):
        out, final = causal_linear_attention(*leaves[:4], offsets, initial_state=leaves[4], chunk_size=8, backend=backend)
        return torch.autograd.grad((out * weights_out).sum() + (final * weights_state).sum(), leaves)

    for name, got, expected in zip("q k v log_decay state".split(), grads("torch"), grads("reference")):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-11, msg=f"gradient of {name}")


def test_chunked_form_passes_gradcheck():
    q, k, v, g, offsets = inputs([3, 0, 6, 1], d_k=3, d_v=2)
    state = torch.randn(4, 2, 3, 2, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, state)]

    def f(q, k, v, g, s):
        return causal_linear_attention(q, k, v, g, offsets, initial_state=s, chunk_size=4)

    assert torch.autograd.gradcheck(f, leaves)


def test_large_decays_stay_exact_in_float32():
    """Decays of thousands (long gaps) beside small ones: the chunked form's segment sums keep the small
    exponents (a difference of prefix sums would round them away)."""
    q, k, v, g, offsets = inputs([200, 77], big_gaps=True)
    expected, expected_final = causal_linear_attention_reference(q, k, v, g, offsets)
    got, final = causal_linear_attention(*(t.float() for t in (q, k, v, g)), offsets, chunk_size=64)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(final.double(), expected_final, rtol=0, atol=1e-5)


@pytest.mark.parametrize("step", [1, 16])
def test_serving_recurrence_equals_the_training_form(step):
    """A sequence encoded in the chunked form up to P, then grown ``step`` positions at a time from its
    ``[H, d_k, d_v]`` state (the serving path), gives the chunked outputs over the whole sequence (float32)."""
    n, prefix = 150, 37
    q, k, v, g, _ = inputs([n], heads=4, d_k=8, d_v=8, dtype=torch.float32, seed=3)
    whole = torch.tensor([0, n])
    expected, expected_final = causal_linear_attention(q, k, v, g, whole)
    _, state = causal_linear_attention(q[:prefix], k[:prefix], v[:prefix], g[:prefix], torch.tensor([0, prefix]))
    state = state[0]
    assert state.shape == (4, 8, 8)
    outs = []
    for start in range(prefix, n, step):
        end = min(n, start + step)
        out, state = linear_attention_extend(q[start:end], k[start:end], v[start:end], g[start:end], state, backend="recurrent")
        outs.append(out)
        assert state.shape == (4, 8, 8)  # the state does not grow with the sequence
    torch.testing.assert_close(torch.cat(outs), expected[prefix:], rtol=0, atol=1e-5)
    torch.testing.assert_close(state, expected_final[0], rtol=0, atol=1e-5)


def test_extend_backends_agree():
    q, k, v, g, _ = inputs([90], dtype=torch.float64)
    state = torch.randn(2, 4, 3, dtype=torch.float64)
    recurrent = linear_attention_extend(q, k, v, g, state, backend="recurrent")
    for backend in ("torch", "auto"):
        got = linear_attention_extend(q, k, v, g, state, backend=backend, chunk_size=32)
        torch.testing.assert_close(got, recurrent, rtol=0, atol=1e-12)


def test_the_chunk_follows_the_lengths():
    """Short histories get small chunks (less padding), one long history larger ones (fewer steps); the
    automatic choice gives the forced chunks' result."""
    assert pick_chunk([3, 5, 12, 1] * 100) == 16
    assert pick_chunk([100_000]) > 16
    assert pick_chunk([100_000], limit=16) == 16
    assert pick_chunk([]) == 16
    q, k, v, g, offsets = inputs(LENGTHS)
    automatic, _ = causal_linear_attention(q, k, v, g, offsets)
    torch.testing.assert_close(automatic, causal_linear_attention(q, k, v, g, offsets, chunk_size=64)[0], rtol=0, atol=1e-12)


def test_empty_batches_and_all_empty_sequences():
    q, k, v, g, offsets = inputs([0, 0, 0])
    state = torch.randn(3, 2, 4, 3, dtype=torch.float64)
    out, final = causal_linear_attention(q, k, v, g, offsets, initial_state=state)
    assert out.shape == (0, 2, 3)
    torch.testing.assert_close(final, state, rtol=0, atol=0)
    out, final = causal_linear_attention(q, k, v, g, offsets)
    assert final.shape == (3, 2, 4, 3) and not final.any()
    out, after = linear_attention_extend(q, k, v, g, state[0])
    assert out.shape == (0, 2, 3)
    torch.testing.assert_close(after, state[0], rtol=0, atol=0)


def test_one_sequence_s_result_does_not_depend_on_the_batch():
    q, k, v, g, offsets = inputs(LENGTHS, dtype=torch.float32)
    together, _ = causal_linear_attention(q, k, v, g, offsets, chunk_size=8)
    b = 5  # the 40-position sequence
    start, end = int(offsets[b]), int(offsets[b + 1])
    alone, _ = causal_linear_attention(q[start:end], k[start:end], v[start:end], g[start:end], torch.tensor([0, end - start]), chunk_size=8)
    torch.testing.assert_close(together[start:end], alone, rtol=0, atol=1e-6)


def test_bad_input_is_refused_naming_what_is_wrong():
    q, k, v, g, offsets = inputs([3, 2])
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        causal_linear_attention(q, k, v, -g, offsets)
    with pytest.raises(ValueError, match="log_decay must be"):
        causal_linear_attention(q, k, v, g[:, :1], offsets)
    with pytest.raises(ValueError, match="v must be"):
        causal_linear_attention(q, k, v[:-1], g, offsets)
    with pytest.raises(ValueError, match="state must be"):
        causal_linear_attention(q, k, v, g, offsets, initial_state=torch.zeros(1, 2, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="state must be"):
        linear_attention_extend(q, k, v, g, torch.zeros(2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="offsets"):
        causal_linear_attention(q, k, v, g, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="dtype"):
        causal_linear_attention(q.float(), k, v, g, offsets)
    with pytest.raises(ValueError, match="backend"):
        causal_linear_attention(q, k, v, g, offsets, backend="triton")
