"""The torch (CPU) path and the dispatch points against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from eventrec.ops import (
    jagged_self_attention,
    jagged_self_attention_reference,
    keyed_pooling_attention,
    keyed_pooling_attention_reference,
)
from eventrec.ops.attention import _pick
from ops_cases import offsets_from, rel_err, skewed_lengths, sorted_timestamps

CPU = torch.device("cpu")


def _grads(out, inputs, grad_out):
    for x in inputs:
        x.grad = None
    out.backward(grad_out)
    return [x.grad.clone() for x in inputs]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_self_attention_torch_matches_reference(causal, with_bias):
    lengths = skewed_lengths(12, 48, include=(0, 1, 0, 2))
    off = offsets_from(lengths, CPU)
    total, h, d = int(off[-1]), 2, 16
    q, k, v = (torch.randn(total, h, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(h, 24, dtype=torch.float64, requires_grad=True) if with_bias else None
    ts = sorted_timestamps(off) if with_bias else None
    inputs = [q, k, v] + ([bias] if with_bias else [])
    grad_out = torch.randn(total, h, d, dtype=torch.float64)
    ref = jagged_self_attention(q, k, v, off, causal=causal, time_bias=bias, timestamps=ts, backend="reference")
    ref_grads = _grads(ref, inputs, grad_out)
    out = jagged_self_attention(q, k, v, off, causal=causal, time_bias=bias, timestamps=ts, backend="torch")
    grads = _grads(out, inputs, grad_out)
    assert rel_err(out, ref) < 1e-12
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-12


def test_reference_is_softmax_attention_per_sequence():
    """The reference itself, against a hand-written dense formula on one sequence with bias."""
    n, h, d = 7, 2, 4
    q, k, v = (torch.randn(n, h, d, dtype=torch.float64) for _ in range(3))
    ts = torch.tensor([0, 0, 1, 5, 100, 100, 4000])
    bias = torch.randn(h, 16, dtype=torch.float64)
    off = torch.tensor([0, n])
    out = jagged_self_attention_reference(q, k, v, off, causal=True, time_bias=bias, timestamps=ts)
    for head in range(h):
        for i in range(n):
            s = torch.stack([q[i, head] @ k[j, head] / d**0.5 + bias[head, (abs(int(ts[i] - ts[j])) + 1).bit_length() - 1]
                             for j in range(i + 1)])
            expected = torch.softmax(s, 0) @ v[: i + 1, head]
            assert torch.allclose(out[i, head], expected)


def test_padding_changes_nothing():
    """A sequence's output depends on nothing outside it."""
    lengths = [5, 9, 3]
    off = offsets_from(lengths, CPU)
    q, k, v = (torch.randn(17, 2, 8, dtype=torch.float64) for _ in range(3))
    out = jagged_self_attention(q, k, v, off, backend="torch")
    k2, v2 = k.clone(), v.clone()
    k2[:5] += 100.0
    v2[14:] -= 50.0
    out2 = jagged_self_attention(q, k2, v2, off, backend="torch")
    assert torch.allclose(out[5:14], out2[5:14])


@pytest.mark.parametrize("jagged_q", [False, True])
def test_keyed_pooling_torch_matches_reference(jagged_q):
    lengths = skewed_lengths(6, 40, include=(0, 1))
    off = offsets_from(lengths, CPU)
    b, h, d = len(lengths), 2, 16
    k, v = (torch.randn(int(off[-1]), h, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    if jagged_q:
        q_off = offsets_from(torch.randint(0, 9, (b,)).tolist(), CPU)
        q = torch.randn(int(q_off[-1]), h, d, dtype=torch.float64, requires_grad=True)
    else:
        q_off = None
        q = torch.randn(b, 12, h, d, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(q.shape, dtype=torch.float64)
    ref = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, backend="reference")
    ref_grads = _grads(ref, [q, k, v], grad_out)
    out = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, backend="torch")
    grads = _grads(out, [q, k, v], grad_out)
    assert rel_err(out, ref) < 1e-12
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-12
    if not jagged_q:
        empty = [i for i, n in enumerate(lengths) if n == 0]
        assert torch.all(out[empty] == 0) and torch.all(q.grad[empty] == 0)


def _biased_case(group: int = 3):
    """Jagged keyed pooling with a score bias shared by ``group`` consecutive query rows."""
    lengths = skewed_lengths(6, 40, include=(0, 1))
    off = offsets_from(lengths, CPU)
    b, h, d = len(lengths), 2, 16
    k, v = (torch.randn(int(off[-1]), h, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    q_off = offsets_from([group * n for n in torch.randint(0, 4, (b,)).tolist()], CPU)
    q = torch.randn(int(q_off[-1]), h, d, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(int(q_off[-1]) // group, h, max(lengths) + 2, dtype=torch.float64, requires_grad=True)
    return q, k, v, off, q_off, bias


def test_keyed_pooling_bias_torch_matches_reference():
    q, k, v, off, q_off, bias = _biased_case()
    grad_out = torch.randn(q.shape, dtype=torch.float64)
    ref = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias, bias_group=3, backend="reference")
    ref_grads = _grads(ref, [q, k, v, bias], grad_out)
    out = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias, bias_group=3, backend="torch")
    grads = _grads(out, [q, k, v, bias], grad_out)
    assert rel_err(out, ref) < 1e-12
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-12
    assert torch.all(bias.grad[:, :, max(off.diff().tolist()):] == 0)  # entries past every history: unused


def test_keyed_pooling_bias_is_an_additive_score():
    """A bias that is a dot product of extra query and key dimensions equals appending them to q and k."""
    q, k, v, off, q_off, _ = _biased_case(group=1)
    extra_q, extra_k = torch.randn(q.shape[0], 2, 5, dtype=torch.float64), torch.randn(k.shape[0], 2, 5, dtype=torch.float64)
    scale = 0.25
    rows = []  # bias[i, h, j] = scale * <extra_q[i, h], extra_k[j-th event of i's user, h]>
    width = max(off.diff().tolist())
    for user in range(len(off) - 1):
        keys = extra_k[off[user]:off[user + 1]]  # [N, H, 5]
        for i in range(int(q_off[user]), int(q_off[user + 1])):
            score = scale * torch.einsum("hx,nhx->hn", extra_q[i], keys)
            rows.append(torch.nn.functional.pad(score, (0, width - score.shape[1])))
    bias = torch.stack(rows)
    folded = keyed_pooling_attention(torch.cat([q, extra_q], -1), torch.cat([k, extra_k], -1), torch.cat([v, torch.zeros_like(extra_k)], -1),
                                     off, q_offsets=q_off, scale=scale, backend="torch")[..., :16]
    biased = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, scale=scale, bias=bias, backend="torch")
    assert rel_err(biased, folded) < 1e-12


def test_keyed_pooling_bias_is_checked():
    q, k, v, off, q_off, bias = _biased_case()
    with pytest.raises(ValueError, match="bias must be"):
        keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias[:, :, :1], bias_group=3)
    with pytest.raises(ValueError, match="bias_group"):
        keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias, bias_group=0)
    with pytest.raises(ValueError, match="dtype"):
        keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias.float(), bias_group=3)
    with pytest.raises(ValueError, match="jagged q"):
        keyed_pooling_attention(q[:6].view(6, 1, 2, 16), k, v, off, bias=bias, bias_group=3)
    with pytest.raises(ValueError, match="Triton"):
        keyed_pooling_attention(q, k, v, off, q_offsets=q_off, bias=bias, bias_group=3, backend="triton")


def test_dispatch_picks_torch_on_cpu():
    x = torch.zeros(1, 1, 1)
    assert _pick("auto", x) == "torch"
    assert _pick("reference", x) == "reference"


def test_all_sequences_empty():
    off = torch.zeros(4, dtype=torch.int64)
    q = torch.zeros(0, 2, 8, requires_grad=True)
    out = jagged_self_attention(q, q, q, off)
    assert out.shape == (0, 2, 8)
    out.sum().backward()
