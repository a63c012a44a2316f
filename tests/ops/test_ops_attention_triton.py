"""The Triton kernels against the float64 reference, forward and backward.

On a machine without a GPU they run in Triton's interpreter (tiny shapes, float32 and float16; the
interpreter mishandles bfloat16). On a GPU the same tests run compiled, at larger shapes and in
bfloat16 and float16 too. Inputs are fresh random numbers on every run and the kernels' output
buffers are poisoned with NaN (``POISON_OUTPUTS``), so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import pytest
import torch

from eventrec.ops.attention_reference import jagged_self_attention_reference, keyed_pooling_attention_reference
from eventrec.ops.time_buckets import relative_timestamps_int32
from ops_cases import DEVICE, ON_GPU, offsets_from, rel_err, skewed_lengths, sorted_timestamps

if ON_GPU:
    DTYPES = [torch.bfloat16, torch.float16]
    MAX_LEN, BATCH, HEAD_DIMS = 700, 24, [64, 128, 32, 96]
else:
    DTYPES = [torch.float32, torch.float16]
    MAX_LEN, BATCH, HEAD_DIMS = 37, 7, [32, 48]

TOL = {torch.float32: 2e-3 if ON_GPU else 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _run(fn, inputs, grad_out):
    for x in inputs:
        x.grad = None
    out = fn(*inputs)
    out.backward(grad_out)
    return [out] + [x.grad.clone() for x in inputs]


def _check(got, want, dtype, names):
    for g, w, name in zip(got, want, names):
        err = rel_err(g, w)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e} over {TOL[dtype]:.0e}"


CASES = [(c, b, dt) for c in (False, True) for b in (False, True) for dt in DTYPES]


@pytest.mark.parametrize("causal,with_bias,dtype", CASES)
def test_self_attention_kernels(triton_ops, causal, with_bias, dtype):
    idx = CASES.index((causal, with_bias, dtype))
    head_dim = HEAD_DIMS[idx % len(HEAD_DIMS)]
    lengths = skewed_lengths(BATCH, MAX_LEN, include=(0, 1, 0, 2))
    off = offsets_from(lengths, DEVICE)
    total, h = int(off[-1]), 2
    q, k, v = (torch.randn(total, h, head_dim, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    num_buckets = 20
    bias = torch.randn(h, num_buckets, device=DEVICE, requires_grad=True) if with_bias else None
    ts = sorted_timestamps(off) if with_bias else None
    ts32 = relative_timestamps_int32(ts) if with_bias else None
    inputs = [q, k, v] + ([bias] if with_bias else [])
    grad_out = torch.randn(total, h, head_dim, device=DEVICE, dtype=dtype)

    def kernel(q, k, v, bias=None):
        return triton_ops.triton_jagged_attention(q, k, v, off, off, causal=causal, time_bias=bias,
                                                  timestamps_int32=ts32)

    def reference(q, k, v, bias=None):
        return jagged_self_attention_reference(q, k, v, off.cpu(), causal, bias, ts)

    got = _run(kernel, inputs, grad_out)
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    want = _run(reference, ref_inputs, grad_out.double())
    _check(got, want, dtype, ["out", "dq", "dk", "dv", "dbias"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_queries", [4, 40] if not ON_GPU else [4, 300])
def test_keyed_pooling_kernels(triton_ops, dtype, num_queries):
    lengths = skewed_lengths(BATCH // 2 + 2, MAX_LEN, include=(0, 1))
    off = offsets_from(lengths, DEVICE)
    b, h, d = len(lengths), 2, HEAD_DIMS[0]
    q = torch.randn(b, num_queries, h, d, device=DEVICE, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(int(off[-1]), h, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    q_off = torch.arange(b + 1, device=DEVICE, dtype=torch.int64) * num_queries
    grad_out = torch.randn(q.shape, device=DEVICE, dtype=dtype)

    def kernel(q, k, v):
        return triton_ops.triton_jagged_attention(q.reshape(-1, h, d), k, v, q_off, off,
                                                  max_q_len=num_queries).view(q.shape)

    def reference(q, k, v):
        return keyed_pooling_attention_reference(q, k, v, off.cpu())

    got = _run(kernel, [q, k, v], grad_out)
    want = _run(reference, [x.detach().double().requires_grad_() for x in (q, k, v)], grad_out.double())
    _check(got, want, dtype, ["out", "dq", "dk", "dv"])
    empty = [i for i, n in enumerate(lengths) if n == 0]
    assert torch.all(got[0][empty] == 0) and torch.all(got[1][empty] == 0)


def test_keyed_pooling_jagged_queries(triton_ops):
    dtype = DTYPES[-1]
    lengths = skewed_lengths(6, MAX_LEN, include=(0, 1))
    off = offsets_from(lengths, DEVICE)
    q_off = offsets_from([0, 5, 3, 17, 1, 8][: len(lengths)] + [4] * (len(lengths) - 6), DEVICE)
    h, d = 2, HEAD_DIMS[0]
    q = torch.randn(int(q_off[-1]), h, d, device=DEVICE, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(int(off[-1]), h, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    grad_out = torch.randn(q.shape, device=DEVICE, dtype=dtype)
    got = _run(lambda q, k, v: triton_ops.triton_jagged_attention(q, k, v, q_off, off), [q, k, v], grad_out)
    want = _run(lambda q, k, v: keyed_pooling_attention_reference(q, k, v, off.cpu(), q_offsets=q_off.cpu()),
                [x.detach().double().requires_grad_() for x in (q, k, v)], grad_out.double())
    _check(got, want, dtype, ["out", "dq", "dk", "dv"])


def test_single_and_max_length_only(triton_ops):
    """A batch of one 1-event sequence and one at the maximum length, no other sequence."""
    dtype = DTYPES[0]
    off = offsets_from([1, MAX_LEN], DEVICE)
    h, d = 1, HEAD_DIMS[0]
    q, k, v = (torch.randn(MAX_LEN + 1, h, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(q.shape, device=DEVICE, dtype=dtype)
    got = _run(lambda q, k, v: triton_ops.triton_jagged_attention(q, k, v, off, off, causal=True), [q, k, v],
               grad_out)
    want = _run(lambda q, k, v: jagged_self_attention_reference(q, k, v, off.cpu(), True),
                [x.detach().double().requires_grad_() for x in (q, k, v)], grad_out.double())
    _check(got, want, dtype, ["out", "dq", "dk", "dv"])
    # a 1-event sequence attends only to itself
    assert torch.allclose(got[0][0].float(), v[0].float(), atol=1e-3)


def test_dispatch_backend_triton(triton_ops, monkeypatch):
    """The public dispatch functions with the kernels forced (as on CUDA), incl. the jagged-q block hint."""
    from eventrec.ops import jagged_self_attention, keyed_pooling_attention

    monkeypatch.setitem(__import__("sys").modules, "eventrec.ops.attention_triton", triton_ops)
    dtype = DTYPES[0]
    lengths = skewed_lengths(5, MAX_LEN, include=(0, 1))
    off = offsets_from(lengths, DEVICE)
    h, d = 2, HEAD_DIMS[0]
    k, v = (torch.randn(int(off[-1]), h, d, device=DEVICE, dtype=dtype) for _ in range(2))
    ts = sorted_timestamps(off)
    bias = torch.randn(h, 32, device=DEVICE)
    got = jagged_self_attention(k, k, v, off, causal=True, time_bias=bias, timestamps=ts, backend="triton")
    want = jagged_self_attention_reference(k.double(), k.double(), v.double(), off.cpu(), True, bias.double(), ts)
    assert rel_err(got, want) < TOL[dtype]
    q_off = offsets_from(torch.randint(0, 6, (len(lengths),)).tolist(), DEVICE)
    q = torch.randn(int(q_off[-1]), h, d, device=DEVICE, dtype=dtype)
    got = keyed_pooling_attention(q, k, v, off, q_offsets=q_off, backend="triton")
    want = keyed_pooling_attention_reference(q.double(), k.double(), v.double(), off.cpu(), q_offsets=q_off.cpu())
    assert rel_err(got, want) < TOL[dtype]
