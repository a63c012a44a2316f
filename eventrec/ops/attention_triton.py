"""Triton kernels for attention over jagged batches (forward and backward), wrapped in autograd.

One kernel family serves both ops of this package:

* jagged self-attention: queries and keys are the same jagged sequences (``q_offsets is kv_offsets``),
  causal or not, with an optional learned ``[H, num_buckets]`` bias indexed in the kernel by the
  log-bucketed time gap of the two events (:mod:`eventrec.ops.time_buckets`);
* keyed pooling: each user's queries (dense ``[B, Q, H, d]`` viewed as jagged with ``Q`` rows per user,
  or jagged) over that user's jagged keys and values, never causal, no bias.

Layout: every tensor is ``[rows, H, d]`` with unit stride on ``d``. A program takes one block of rows of
one sequence and one head; programs come from a work list (:func:`eventrec.ops.jagged_helpers.block_table`)
built on the device, longest sequences first, so there is no host sync and no ``B x max_len`` grid.

Forward: FlashAttention-2 style online softmax in the log2 domain, fp32 accumulators, the log-sum-exp
of each row kept for the backward. Backward: one kernel per key block for dK and dV (loops over query
blocks), one per query block for dQ (loops over key blocks), each recomputing the probabilities from
the saved log-sum-exp; the dQ kernel also reduces dS into the bias table's gradient (a per-program
histogram over the buckets present in each tile, added with one atomic per bucket per program).

Inputs may be float16, bfloat16 or float32 (float32 uses TF32 matrix products on the GPU); head dims
up to 128 (any size: non-powers of two are padded in registers).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from eventrec.ops.jagged_helpers import block_table

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _patch_interpreter_for_numpy2() -> None:
    """Triton 3.6's interpreter keeps scalars as shape-(1,) arrays and converts them with ``int(array)``,
    which numpy >= 2.3 refuses ("only 0-dimensional arrays can be converted"): loops such as
    ``range(0, n, BLOCK)`` with a loaded ``n`` then fail. Replace that one conversion. CPU tests only."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_eventrec_index_patch", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._eventrec_index_patch = True


if _interpreting():
    _patch_interpreter_for_numpy2()

POISON_OUTPUTS = False
"""Tests set this: fresh output buffers are then filled with NaN, so an unwritten element shows."""


def _new_buffer(shape: tuple[int, ...] | torch.Size, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    out = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _gap_bucket(t_row, t_col, NUM_BUCKETS: tl.constexpr):
    """Bucket of |t_row[i] - t_col[j]| (int32 seconds): exponent of float32(1 + gap), capped."""
    dt = t_row[:, None] - t_col[None, :]
    dt = tl.where(dt < 0, -dt, dt) + 1
    e = (dt.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127
    return tl.minimum(e, NUM_BUCKETS - 1)


@triton.jit
def _load_rows(ptr, offs_r, offs_d, stride_r, n_rows, HEAD_DIM: tl.constexpr, D_P2: tl.constexpr,
               MASK_ROWS: tl.constexpr):
    ptrs = ptr + offs_r[:, None] * stride_r + offs_d[None, :]
    if MASK_ROWS:
        return tl.load(ptrs, mask=(offs_r < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif HEAD_DIM != D_P2:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt, qk_scale,
              bias_h, tq, TS_kv,
              HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_BIAS: tl.constexpr, NUM_BUCKETS: tl.constexpr, MASKED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_P2)
    k = _load_rows(K_h, offs_n, offs_d, stride_kt, Nk, HEAD_DIM, D_P2, MASKED)
    v = _load_rows(V_h, offs_n, offs_d, stride_vt, Nk, HEAD_DIM, D_P2, MASKED)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if HAS_BIAS:
        if MASKED:
            tk = tl.load(TS_kv + offs_n, mask=offs_n < Nk, other=0)
        else:
            tk = tl.load(TS_kv + offs_n)
        s += tl.load(bias_h + _gap_bucket(tq, tk, NUM_BUCKETS))
    if MASKED:
        valid = (offs_n < Nk)[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, BIAS, TS,
    q_offsets, kv_offsets, work_seq, work_blk,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_heads, qk_scale,
    HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, NUM_BUCKETS: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(work_seq + pid)
    if seq < 0:
        return
    mblk = tl.load(work_blk + pid)
    q_start = tl.load(q_offsets + seq)
    Nq = (tl.load(q_offsets + seq + 1) - q_start).to(tl.int32)
    kv_start = tl.load(kv_offsets + seq)
    Nk = (tl.load(kv_offsets + seq + 1) - kv_start).to(tl.int32)

    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_P2)
    row_ok = offs_m < Nq
    q = _load_rows(Q + q_start * stride_qt + h * stride_qh, offs_m, offs_d, stride_qt, Nq, HEAD_DIM, D_P2, True)
    K_h = K + kv_start * stride_kt + h * stride_kh
    V_h = V + kv_start * stride_vt + h * stride_vh
    if HAS_BIAS:
        tq = tl.load(TS + q_start + offs_m, mask=row_ok, other=0)
        bias_h = BIAS + h * NUM_BUCKETS
        TS_kv = TS + kv_start
    else:
        tq = offs_m
        bias_h = BIAS
        TS_kv = TS

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_P2], dtype=tl.float32)
    if CAUSAL:
        full_end = mblk * BLOCK_M  # every row of this block sees every column below it
        hi = tl.minimum(Nk, (mblk + 1) * BLOCK_M)
    else:
        full_end = (Nk // BLOCK_N) * BLOCK_N
        hi = Nk
    for start_n in range(0, full_end, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt,
                                  qk_scale, bias_h, tq, TS_kv, HEAD_DIM, D_P2, BLOCK_N, CAUSAL, HAS_BIAS,
                                  NUM_BUCKETS, False)
    for start_n in range(full_end, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt,
                                  qk_scale, bias_h, tq, TS_kv, HEAD_DIM, D_P2, BLOCK_N, CAUSAL, HAS_BIAS,
                                  NUM_BUCKETS, True)

    l_ok = l_i > 0.0
    l_safe = tl.where(l_ok, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(l_ok, m_i + tl.math.log2(l_safe), float("inf"))
    o_ptrs = O + q_start * stride_ot + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    tl.store(LSE + (q_start + offs_m) * num_heads + h, lse, mask=row_ok)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q_h, DO_h, LSE_h, DELTA_h, start_m, offs_n, Nq, stride_qt, stride_dot,
               num_heads, qk_scale, bias_h, tk, TS_q,
               HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_M: tl.constexpr,
               HAS_BIAS: tl.constexpr, NUM_BUCKETS: tl.constexpr, DIAGONAL: tl.constexpr):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_P2)
    m_ok = offs_m < Nq
    q = _load_rows(Q_h, offs_m, offs_d, stride_qt, Nq, HEAD_DIM, D_P2, True)
    do = _load_rows(DO_h, offs_m, offs_d, stride_dot, Nq, HEAD_DIM, D_P2, True)
    # rows past the sequence get lse = +inf, hence probability 0: no mask on the scores needed
    lse = tl.load(LSE_h + offs_m * num_heads, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA_h + offs_m * num_heads, mask=m_ok, other=0.0)
    s_t = tl.dot(k, tl.trans(q)) * qk_scale  # [BLOCK_N, BLOCK_M]
    if HAS_BIAS:
        tq = tl.load(TS_q + offs_m, mask=m_ok, other=0)
        s_t += tl.load(bias_h + _gap_bucket(tk, tq, NUM_BUCKETS))
    p_t = tl.math.exp2(s_t - lse[None, :])
    if DIAGONAL:
        p_t = tl.where(offs_m[None, :] >= offs_n[:, None], p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, BIAS, TS,
    q_offsets, kv_offsets, work_seq, work_blk,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    num_heads, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, NUM_BUCKETS: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(work_seq + pid)
    if seq < 0:
        return
    nblk = tl.load(work_blk + pid)
    q_start = tl.load(q_offsets + seq)
    Nq = (tl.load(q_offsets + seq + 1) - q_start).to(tl.int32)
    kv_start = tl.load(kv_offsets + seq)
    Nk = (tl.load(kv_offsets + seq + 1) - kv_start).to(tl.int32)

    offs_n = nblk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_P2)
    n_ok = offs_n < Nk
    k = _load_rows(K + kv_start * stride_kt + h * stride_kh, offs_n, offs_d, stride_kt, Nk, HEAD_DIM, D_P2, True)
    v = _load_rows(V + kv_start * stride_vt + h * stride_vh, offs_n, offs_d, stride_vt, Nk, HEAD_DIM, D_P2, True)
    Q_h = Q + q_start * stride_qt + h * stride_qh
    DO_h = DO + q_start * stride_dot + h * stride_doh
    LSE_h = LSE + q_start * num_heads + h
    DELTA_h = DELTA + q_start * num_heads + h
    if HAS_BIAS:
        tk = tl.load(TS + kv_start + offs_n, mask=n_ok, other=0)
        bias_h = BIAS + h * NUM_BUCKETS
        TS_q = TS + q_start
    else:
        tk = offs_n
        bias_h = BIAS
        TS_q = TS

    dk = tl.zeros([BLOCK_N, D_P2], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_P2], dtype=tl.float32)
    if CAUSAL:
        lo = nblk * BLOCK_N  # query rows below this block's first key see none of it
        diag_end = tl.minimum(lo + BLOCK_N, Nq)
        for start_m in range(lo, diag_end, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_h, DO_h, LSE_h, DELTA_h, start_m, offs_n, Nq, stride_qt,
                                stride_dot, num_heads, qk_scale, bias_h, tk, TS_q, HEAD_DIM, D_P2, BLOCK_M,
                                HAS_BIAS, NUM_BUCKETS, True)
        rest = lo + BLOCK_N
    else:
        rest = 0
    for start_m in range(rest, Nq, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q_h, DO_h, LSE_h, DELTA_h, start_m, offs_n, Nq, stride_qt,
                            stride_dot, num_heads, qk_scale, bias_h, tk, TS_q, HEAD_DIM, D_P2, BLOCK_M,
                            HAS_BIAS, NUM_BUCKETS, False)

    st_mask = n_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    dk_ptrs = DK + kv_start * stride_dkt + h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + kv_start * stride_dvt + h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=st_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=st_mask)


@triton.jit
def _dq_tile(dq, hist, q, do, lse, delta, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt, qk_scale,
             bias_h, tq, TS_kv,
             HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_BIAS: tl.constexpr, DBIAS: tl.constexpr, NUM_BUCKETS: tl.constexpr, NB_P2: tl.constexpr,
             MASKED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_P2)
    k = _load_rows(K_h, offs_n, offs_d, stride_kt, Nk, HEAD_DIM, D_P2, MASKED)
    v = _load_rows(V_h, offs_n, offs_d, stride_vt, Nk, HEAD_DIM, D_P2, MASKED)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if HAS_BIAS:
        if MASKED:
            tk = tl.load(TS_kv + offs_n, mask=offs_n < Nk, other=0)
        else:
            tk = tl.load(TS_kv + offs_n)
        bucket = _gap_bucket(tq, tk, NUM_BUCKETS)
        s += tl.load(bias_h + bucket)
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        valid = (offs_n < Nk)[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        p = tl.where(valid, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k)
    if DBIAS:
        # histogram of dS over the buckets present in this tile (masked entries hold dS = 0)
        nb_idx = tl.arange(0, NB_P2)
        b_lo = tl.min(bucket)
        b_hi = tl.max(bucket)
        for b in range(b_lo, b_hi + 1):
            part = tl.sum(tl.where(bucket == b, ds, 0.0))
            hist += tl.where(nb_idx == b, part, 0.0)
    return dq, hist


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, BIAS, DBIAS_OUT, TS,
    q_offsets, kv_offsets, work_seq, work_blk,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    num_heads, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D_P2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS: tl.constexpr,
    NUM_BUCKETS: tl.constexpr, NB_P2: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(work_seq + pid)
    if seq < 0:
        return
    mblk = tl.load(work_blk + pid)
    q_start = tl.load(q_offsets + seq)
    Nq = (tl.load(q_offsets + seq + 1) - q_start).to(tl.int32)
    kv_start = tl.load(kv_offsets + seq)
    Nk = (tl.load(kv_offsets + seq + 1) - kv_start).to(tl.int32)

    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_P2)
    row_ok = offs_m < Nq
    q = _load_rows(Q + q_start * stride_qt + h * stride_qh, offs_m, offs_d, stride_qt, Nq, HEAD_DIM, D_P2, True)
    do = _load_rows(DO + q_start * stride_dot + h * stride_doh, offs_m, offs_d, stride_dot, Nq, HEAD_DIM, D_P2,
                    True)
    lse = tl.load(LSE + (q_start + offs_m) * num_heads + h, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + (q_start + offs_m) * num_heads + h, mask=row_ok, other=0.0)
    K_h = K + kv_start * stride_kt + h * stride_kh
    V_h = V + kv_start * stride_vt + h * stride_vh
    if HAS_BIAS:
        tq = tl.load(TS + q_start + offs_m, mask=row_ok, other=0)
        bias_h = BIAS + h * NUM_BUCKETS
        TS_kv = TS + kv_start
    else:
        tq = offs_m
        bias_h = BIAS
        TS_kv = TS

    dq = tl.zeros([BLOCK_M, D_P2], dtype=tl.float32)
    hist = tl.zeros([NB_P2], dtype=tl.float32)
    if CAUSAL:
        full_end = mblk * BLOCK_M
        hi = tl.minimum(Nk, (mblk + 1) * BLOCK_M)
    else:
        full_end = (Nk // BLOCK_N) * BLOCK_N
        hi = Nk
    for start_n in range(0, full_end, BLOCK_N):
        dq, hist = _dq_tile(dq, hist, q, do, lse, delta, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt,
                            qk_scale, bias_h, tq, TS_kv, HEAD_DIM, D_P2, BLOCK_N, CAUSAL, HAS_BIAS, DBIAS,
                            NUM_BUCKETS, NB_P2, False)
    for start_n in range(full_end, hi, BLOCK_N):
        dq, hist = _dq_tile(dq, hist, q, do, lse, delta, K_h, V_h, start_n, offs_m, Nk, stride_kt, stride_vt,
                            qk_scale, bias_h, tq, TS_kv, HEAD_DIM, D_P2, BLOCK_N, CAUSAL, HAS_BIAS, DBIAS,
                            NUM_BUCKETS, NB_P2, True)

    dq_ptrs = DQ + q_start * stride_dqt + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    if DBIAS:
        nb_idx = tl.arange(0, NB_P2)
        tl.atomic_add(DBIAS_OUT + h * NUM_BUCKETS + nb_idx, hist, mask=nb_idx < NUM_BUCKETS)


# --------------------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Block sizes and launch options of the three kernels.

    ``fwd_m``/``dq_m`` rows of queries and ``dkdv_n`` rows of keys per program (the work lists are
    built for these); ``fwd_n``/``dq_n`` keys and ``dkdv_m`` queries per inner tile.
    """

    fwd_m: int = 128
    fwd_n: int = 64
    fwd_warps: int = 8
    fwd_stages: int = 3
    dkdv_n: int = 128
    dkdv_m: int = 32
    dkdv_warps: int = 8
    dkdv_stages: int = 3
    dq_m: int = 128
    dq_n: int = 32
    dq_warps: int = 8
    dq_stages: int = 3


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def default_config(head_dim: int, max_q_len: int | None = None) -> KernelConfig:
    """Launch configuration for a head dim; ``max_q_len`` shrinks the query blocks for short queries.

    Chosen from ptxas reports for sm_90a (``bench/attention_compile_report.py``): with 8 warps none of
    these spills registers at head dims 64 and 128; with 4 warps several do.
    """
    if _interpreting():
        cfg = KernelConfig(fwd_m=16, fwd_n=16, fwd_warps=1, fwd_stages=1, dkdv_n=16, dkdv_m=16, dkdv_warps=1,
                           dkdv_stages=1, dq_m=16, dq_n=16, dq_warps=1, dq_stages=1)
    else:
        cfg = KernelConfig()
    if max_q_len is not None and max_q_len < cfg.fwd_m:
        qm = max(16, _next_pow2(max_q_len))
        small = qm < 64  # below one warpgroup's 64 rows: no wgmma, 4 warps are enough
        cfg = KernelConfig(**{
            **cfg.__dict__,
            "fwd_m": qm, "dq_m": min(cfg.dq_m, qm), "dkdv_m": min(cfg.dkdv_m, qm),
            "fwd_warps": min(cfg.fwd_warps, 4) if small else cfg.fwd_warps,
            "dq_warps": min(cfg.dq_warps, 4) if small else cfg.dq_warps,
        })
    return cfg


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _check_3d(x: Tensor, name: str) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"{name} must be [rows, H, d], got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x


def attention_forward(
    q: Tensor, k: Tensor, v: Tensor, q_offsets: Tensor, kv_offsets: Tensor, q_work: tuple[Tensor, Tensor],
    causal: bool, scale: float, bias_log2: Tensor | None, ts32: Tensor | None, cfg: KernelConfig,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel. Returns ``(out [Tq, H, d], lse [Tq, H] float32, log2 domain)``."""
    total_q, num_heads, head_dim = q.shape
    out = _new_buffer(q.shape, q)
    lse = _new_buffer((total_q, num_heads), q, torch.float32)
    has_bias = bias_log2 is not None
    num_buckets = bias_log2.shape[1] if has_bias else 1
    dummy = lse
    grid = (q_work[0].numel(), num_heads)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, bias_log2 if has_bias else dummy, ts32 if has_bias else q_offsets,
        q_offsets, kv_offsets, q_work[0], q_work[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        num_heads, scale * LOG2E,
        HEAD_DIM=head_dim, D_P2=max(16, _next_pow2(head_dim)), BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n,
        CAUSAL=causal, HAS_BIAS=has_bias, NUM_BUCKETS=num_buckets,
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    return out, lse


def attention_backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, q_offsets: Tensor, kv_offsets: Tensor,
    q_work_dq: tuple[Tensor, Tensor], kv_work: tuple[Tensor, Tensor], causal: bool, scale: float,
    bias_log2: Tensor | None, ts32: Tensor | None, need_dbias: bool, cfg: KernelConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the two backward kernels. Returns ``(dq, dk, dv, dbias float32 [H, num_buckets] or None)``."""
    total_q, num_heads, head_dim = q.shape
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = (out.float() * do.float()).sum(-1)  # [Tq, H]
    dq = _new_buffer(q.shape, q)
    dk = _new_buffer(k.shape, k)
    dv = _new_buffer(v.shape, v)
    has_bias = bias_log2 is not None
    num_buckets = bias_log2.shape[1] if has_bias else 1
    dbias = torch.zeros((num_heads, num_buckets), device=q.device, dtype=torch.float32) if (has_bias and need_dbias) \
        else None
    d_p2 = max(16, _next_pow2(head_dim))
    bias_arg = bias_log2 if has_bias else lse
    ts_arg = ts32 if has_bias else q_offsets
    _attn_bwd_dkdv_kernel[(kv_work[0].numel(), num_heads)](
        q, k, v, do, dk, dv, lse, delta, bias_arg, ts_arg,
        q_offsets, kv_offsets, kv_work[0], kv_work[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        num_heads, scale * LOG2E, scale,
        HEAD_DIM=head_dim, D_P2=d_p2, BLOCK_M=cfg.dkdv_m, BLOCK_N=cfg.dkdv_n,
        CAUSAL=causal, HAS_BIAS=has_bias, NUM_BUCKETS=num_buckets,
        num_warps=cfg.dkdv_warps, num_stages=cfg.dkdv_stages,
    )
    _attn_bwd_dq_kernel[(q_work_dq[0].numel(), num_heads)](
        q, k, v, do, dq, lse, delta, bias_arg, dbias if dbias is not None else lse, ts_arg,
        q_offsets, kv_offsets, q_work_dq[0], q_work_dq[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1),
        num_heads, scale * LOG2E, scale,
        HEAD_DIM=head_dim, D_P2=d_p2, BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n,
        CAUSAL=causal, HAS_BIAS=has_bias, DBIAS=dbias is not None,
        NUM_BUCKETS=num_buckets, NB_P2=max(2, _next_pow2(num_buckets)),
        num_warps=cfg.dq_warps, num_stages=cfg.dq_stages,
    )
    return dq, dk, dv, dbias


class _JaggedAttentionFn(torch.autograd.Function):
    """Autograd wrapper: inputs ``q [Tq,H,d], k, v [Tk,H,d], time_bias [H,NB] or None``."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, time_bias: Tensor | None, q_offsets: Tensor,
                kv_offsets: Tensor, ts32: Tensor | None, causal: bool, scale: float, cfg: KernelConfig,
                same_blocks: bool) -> Tensor:
        total_q = q.shape[0]
        total_k = k.shape[0]
        q_work = block_table(q_offsets, cfg.fwd_m, total_q)
        bias_log2 = None if time_bias is None else (time_bias.detach().float() * LOG2E).contiguous()
        out, lse = attention_forward(q, k, v, q_offsets, kv_offsets, q_work, causal, scale, bias_log2, ts32, cfg)
        ctx.save_for_backward(q, k, v, out, lse, q_offsets, kv_offsets, bias_log2, ts32, *q_work)
        ctx.causal, ctx.scale, ctx.cfg = causal, scale, cfg
        ctx.total_k = total_k
        ctx.bias_dtype = None if time_bias is None else time_bias.dtype
        return out

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, out, lse, q_offsets, kv_offsets, bias_log2, ts32, qw_seq, qw_blk = ctx.saved_tensors
        cfg: KernelConfig = ctx.cfg
        q_work = (qw_seq, qw_blk)
        q_work_dq = q_work if cfg.dq_m == cfg.fwd_m else block_table(q_offsets, cfg.dq_m, q.shape[0])
        kv_work = block_table(kv_offsets, cfg.dkdv_n, ctx.total_k)
        need_dbias = bias_log2 is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = attention_backward(do, q, k, v, out, lse, q_offsets, kv_offsets, q_work_dq, kv_work,
                                               ctx.causal, ctx.scale, bias_log2, ts32, need_dbias, cfg)
        if dbias is not None:
            dbias = dbias.to(ctx.bias_dtype)
        return dq, dk, dv, dbias, None, None, None, None, None, None, None


def triton_jagged_attention(
    q: Tensor, k: Tensor, v: Tensor, q_offsets: Tensor, kv_offsets: Tensor, *, causal: bool = False,
    time_bias: Tensor | None = None, timestamps_int32: Tensor | None = None, scale: float | None = None,
    max_q_len: int | None = None, config: KernelConfig | None = None,
) -> Tensor:
    """Attention of jagged queries over jagged keys/values of the same batch, on the Triton kernels.

    Args:
        q: ``[Tq, H, d]``; k, v: ``[Tk, H, d]`` (float16, bfloat16 or float32; unit stride on d).
        q_offsets, kv_offsets: ``[B+1]`` int64 (the same tensor for self-attention).
        causal: mask keys after the query (self-attention only).
        time_bias: ``[H, num_buckets]`` additive bias (self-attention only); needs ``timestamps_int32``.
        timestamps_int32: ``[T]`` int32 from :func:`eventrec.ops.time_buckets.relative_timestamps_int32`.
        scale: score scale, default ``1/sqrt(d)``.
        max_q_len: longest query sequence if known to be short (smaller query blocks); optional.
        config: launch configuration override (benchmarks).

    Returns:
        ``[Tq, H, d]`` in q's dtype.
    """
    q, k, v = _check_3d(q, "q"), _check_3d(k, "k"), _check_3d(v, "v")
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if (causal or time_bias is not None) and q_offsets is not kv_offsets and not torch.equal(q_offsets, kv_offsets):
        raise ValueError("causal masking and time bias need q and kv in the same jagged layout")
    if time_bias is not None and timestamps_int32 is None:
        raise ValueError("time_bias needs timestamps")
    q_offsets = q_offsets.to(torch.int64).contiguous()
    kv_offsets = kv_offsets.to(torch.int64).contiguous()
    if q.shape[0] == 0:
        return q.new_zeros(q.shape) + 0.0 * (q.sum() + k.sum() + v.sum())
    cfg = config or default_config(head_dim, max_q_len)
    ts = timestamps_int32.contiguous() if time_bias is not None else None
    return _JaggedAttentionFn.apply(q, k, v, time_bias, q_offsets, kv_offsets, ts, causal, scale, cfg,
                                    q_offsets is kv_offsets)
