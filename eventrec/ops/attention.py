"""The dispatch points of the jagged attention ops: call these, not the backends.

* :func:`jagged_self_attention` -- each user's events attend over the same user's events.
* :func:`keyed_pooling_attention` -- query slots per candidate ad attend over a user's events.
* :func:`causal_delta_attention` -- new positions of one sequence attend to its cached keys/values
  plus themselves (the incremental step of a causal encoder layer).

On CUDA tensors with Triton importable, the first two run the Triton kernels of
:mod:`eventrec.ops.attention_triton`; anywhere else, the length-grouped padded SDPA of
:mod:`eventrec.ops.attention_torch` (the fastest CPU path measured, see ``docs/kernels.md``).
``backend=`` forces one: ``"triton"``, ``"torch"`` or ``"reference"`` (the slow float64-capable
definition in :mod:`eventrec.ops.attention_reference`); keyed pooling also has ``"one_user"``
(:mod:`eventrec.ops.keyed_pooling_one_user`: one user, thousands of candidates, the serving path).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from eventrec.ops.attention_reference import jagged_self_attention_reference, keyed_pooling_attention_reference
from eventrec.ops.attention_torch import jagged_self_attention_torch, keyed_pooling_attention_torch
from eventrec.ops.delta_attention import causal_delta_attention_reference, causal_delta_attention_torch
from eventrec.ops.jagged_helpers import check_offsets
from eventrec.ops.keyed_pooling_one_user import FactoredMatch, OneUserPlan, keyed_pooling_one_user
from eventrec.ops.time_buckets import relative_timestamps_int32

Backend = Literal["auto", "triton", "torch", "reference"]
PoolingBackend = Literal["auto", "triton", "torch", "reference", "one_user"]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the Triton kernels can be imported (the ``triton`` package is installed)."""
    try:
        import eventrec.ops.attention_triton  # noqa: F401
    except Exception:  # ImportError, or a broken triton install
        return False
    return True


def _pick(backend: Backend, x: Tensor) -> str:
    if backend != "auto":
        return backend
    if x.is_cuda and triton_available():
        return "triton"
    return "torch"


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if k.shape != v.shape or k.dim() != 3:
        raise ValueError(f"k and v must both be [T, H, d], got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"q, k must share H and d, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k, v must share a dtype")


def auto_backend(x: Tensor) -> str:
    """The backend ``backend="auto"`` picks for tensors like ``x``: ``"triton"`` or ``"torch"``."""
    return _pick("auto", x)


def _check_bias(bias: Tensor, group: int, q: Tensor, offsets: Tensor, dense: bool, chosen: str) -> None:
    """Validate keyed pooling's additive ``bias`` (see :func:`keyed_pooling_attention`)."""
    if chosen == "triton":
        raise ValueError("bias: not supported by the Triton kernels (use backend='torch' or fold it into q and k)")
    if dense:
        raise ValueError("bias: needs jagged q (q_offsets)")
    if group < 1 or q.shape[0] % group:
        raise ValueError(f"bias_group must be >= 1 and divide the {q.shape[0]} query rows, got {group}")
    longest = int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0
    if bias.dim() != 3 or bias.shape[0] != q.shape[0] // group or bias.shape[1] != q.shape[1] or bias.shape[2] < longest:
        raise ValueError(f"bias must be [{q.shape[0] // group}, {q.shape[1]}, >= {longest}], got {tuple(bias.shape)}")
    if bias.dtype != q.dtype:
        raise ValueError(f"bias must have q's dtype {q.dtype}, got {bias.dtype}")


def jagged_self_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    max_len: int | None = None,
    *,
    causal: bool = False,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    scale: float | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Softmax self-attention inside each sequence of a jagged batch.

    For sequence ``b`` (rows ``offsets[b]:offsets[b+1]``) and head ``h``::

        s[i, j]   = scale * <q[i, h], k[j, h]> + time_bias[h, time_gap_bucket(timestamps[i] - timestamps[j])]
        out[i, h] = sum_j softmax_j(s[i, :]) v[j, h]          (only j <= i when causal)

    Args:
        q, k, v: ``[sum(N_i), H, d]`` float16 / bfloat16 / float32 (float64 on the torch and reference
            backends). Head dims 32..128 on the kernels.
        offsets: ``[B+1]`` int64, ``offsets[0] = 0``, ``offsets[-1] = sum(N_i)``. Empty sequences allowed.
        max_len: longest ``N_i`` if the caller has it cached (unused by the kernels; the torch path reads
            lengths itself).
        causal: event ``i`` sees only events ``j <= i`` of its own sequence.
        time_bias: optional learned ``[H, num_buckets]`` table (gets a gradient).
        timestamps: int64 ``[sum(N_i)]`` event times in seconds; required with ``time_bias``.
        scale: default ``1 / sqrt(d)``.
        backend: ``"auto"`` (Triton on CUDA, torch otherwise), ``"triton"``, ``"torch"``, ``"reference"``.

    Returns:
        ``[sum(N_i), H, d]`` in q's dtype; differentiable in q, k, v and time_bias.
    """
    del max_len  # accepted for the callers' convenience; no backend needs it
    _check_qkv(q, k, v)
    if q.shape != k.shape:
        raise ValueError("self-attention needs q, k, v of one shape")
    check_offsets(offsets, q.shape[0])
    if time_bias is not None:
        if timestamps is None:
            raise ValueError("time_bias needs timestamps")
        if time_bias.dim() != 2 or time_bias.shape[0] != q.shape[1]:
            raise ValueError(f"time_bias must be [H, num_buckets], got {tuple(time_bias.shape)}")
        if timestamps.shape != (q.shape[0],):
            raise ValueError("timestamps must be [sum(N_i)]")
    chosen = _pick(backend, q)
    if chosen == "triton":
        from eventrec.ops.attention_triton import triton_jagged_attention

        ts32 = relative_timestamps_int32(timestamps) if time_bias is not None else None
        return triton_jagged_attention(q, k, v, offsets, offsets, causal=causal, time_bias=time_bias,
                                       timestamps_int32=ts32, scale=scale)
    if chosen == "torch":
        return jagged_self_attention_torch(q, k, v, offsets, causal, time_bias, timestamps, scale)
    if chosen == "reference":
        return jagged_self_attention_reference(q, k, v, offsets, causal, time_bias, timestamps, scale)
    raise ValueError(f"unknown backend {backend!r}")


def keyed_pooling_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    max_len: int | None = None,
    *,
    q_offsets: Tensor | None = None,
    max_q_len: int | None = None,
    scale: float | None = None,
    bias: Tensor | None = None,
    bias_group: int = 1,
    match: FactoredMatch | None = None,
    plan: OneUserPlan | None = None,
    backend: PoolingBackend = "auto",
) -> Tensor:
    """Candidate-keyed pooling: each user's query slots attend over that user's events.

    Args:
        q: dense ``[B, C*M, H, d]`` (C candidates x M slots per user), or jagged ``[sum(Q_b), H, d]``
            with ``q_offsets`` (a different number of candidates per user).
        k, v: jagged ``[sum(N_b), H, d]`` (the user's encoded events).
        offsets: ``[B+1]`` int64 offsets of k and v.
        max_len: longest history, if known (unused by the kernels).
        q_offsets: ``[B+1]`` int64 offsets of a jagged q.
        max_q_len: typical ``Q_b`` of a jagged q, if known (only picks the query block size of the kernels;
            any value is correct). Default: the average ``sum(Q_b) / B``.
        scale: default ``1 / sqrt(d)``.
        bias: optional additive score bias ``[sum(Q_b) / bias_group, H, L]`` (jagged q only, L at
            least the longest history; torch and reference backends): query row ``i`` adds
            ``bias[i // bias_group, h, j]`` to its score for its user's ``j``-th event. The model passes
            its target-attention match term this way on the CPU, once per candidate for its M slots
            (``bias_group = M``), instead of as ``V·E`` more dimensions of every query and key.
        bias_group: consecutive query rows that share one bias row.
        match: the same kind of bias in factored form (:class:`FactoredMatch`, one user only): the
            ``"one_user"`` backend computes it block by block; the others get it as a dense ``bias``.
        plan: how the ``"one_user"`` backend runs (:class:`OneUserPlan`: blocks, buffers, softmax form).
        backend: as :func:`jagged_self_attention`, or ``"one_user"`` (one user, dense ``q [1, Q, H, d]``
            or jagged with one user; k and v may have another float dtype than q: cast after scaling).

    Returns:
        Same shape as q. A user with no events gets exact zeros (and zero gradients), never NaN.
    """
    del max_len
    if match is not None or backend == "one_user":
        return _keyed_pooling_one_user(q, k, v, offsets, q_offsets, scale, bias_group, match, plan, backend)
    _check_qkv(q, k, v)
    check_offsets(offsets, k.shape[0])
    num_users = offsets.numel() - 1
    dense = q_offsets is None
    if dense and (q.dim() != 4 or q.shape[0] != num_users):
        raise ValueError(f"dense q must be [B, Q, H, d] with B={num_users}, got {tuple(q.shape)}")
    if not dense:
        check_offsets(q_offsets, q.shape[0])
    chosen = _pick(backend, q)
    if bias is not None:
        _check_bias(bias, bias_group, q, offsets, dense, chosen)
    if chosen == "triton":
        from eventrec.ops.attention_triton import triton_jagged_attention

        if dense:
            b, nq, h, d = q.shape
            q_off = torch.arange(b + 1, device=q.device, dtype=torch.int64) * nq
            out = triton_jagged_attention(q.reshape(b * nq, h, d), k, v, q_off, offsets, scale=scale,
                                          max_q_len=nq)
            return out.view(b, nq, h, d)
        if max_q_len is None:  # no sync: the average queries per user picks the query block size
            max_q_len = -(-q.shape[0] // max(1, num_users))
        return triton_jagged_attention(q, k, v, q_offsets, offsets, scale=scale, max_q_len=max_q_len)
    if chosen == "torch":
        return keyed_pooling_attention_torch(q, k, v, offsets, q_offsets, scale, bias=bias, bias_group=bias_group)
    if chosen == "reference":
        return keyed_pooling_attention_reference(q, k, v, offsets, q_offsets, scale, bias=bias, bias_group=bias_group)
    raise ValueError(f"unknown backend {backend!r}")


def _keyed_pooling_one_user(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, q_offsets: Tensor | None, scale: float | None,
                            group: int, match: FactoredMatch | None, plan: OneUserPlan | None, backend: PoolingBackend) -> Tensor:
    """:func:`keyed_pooling_attention` for one user (``"one_user"`` backend, or a factored ``match``)."""
    if offsets.numel() != 2 or (q_offsets is None and (q.dim() != 4 or q.shape[0] != 1)):
        raise ValueError(f"backend 'one_user' / match: one user only (offsets [2], q [1, Q, H, d]), got offsets {tuple(offsets.shape)}, q {tuple(q.shape)}")
    if k.shape != v.shape or k.dim() != 3 or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"k, v must be [N, H, d] like q's last dims, got {tuple(k.shape)}, {tuple(v.shape)}, q {tuple(q.shape)}")
    rows = q.reshape(-1, *q.shape[-2:])
    if group < 1 or len(rows) % group:
        raise ValueError(f"bias_group must be >= 1 and divide the {len(rows)} query rows, got {group}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend in ("auto", "one_user"):
        return keyed_pooling_one_user(rows, k, v, scale, group, match, plan).view(q.shape)
    k, v = k.to(q.dtype), v.to(q.dtype)
    bias = match.dense().to(q.dtype) if match is not None else None
    q_off = torch.tensor([0, len(rows)], dtype=torch.int64, device=q.device)
    out = keyed_pooling_attention(rows, k, v, offsets, q_offsets=q_off, scale=scale, bias=bias, bias_group=group, backend=backend)
    return out.view(q.shape)


def causal_delta_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    *,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    cached_timestamps: Tensor | None = None,
    scale: float | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """New positions of one sequence attend to its cached keys/values plus themselves (causal).

    For new position ``i`` (sequence position ``P + i``) and head ``h``::

        s[i, j]   = scale * <q[i, h], K[j, h]> + time_bias[h, time_gap_bucket(T[P + i] - T[j])]
        out[i, h] = sum_{j <= P + i} softmax_j(s[i, :]) V[j, h]

    with ``K = [cached_k; k]``, ``V = [cached_v; v]``, ``T = [cached_timestamps; timestamps]``: what
    :func:`jagged_self_attention` (``causal=True``) gives at those positions over the whole sequence.

    Args:
        q, k, v: ``[n, H, d]`` the new positions; cached_k, cached_v: ``[P, H, d]`` (P may be 0).
        time_bias: optional ``[H, num_buckets]``; then timestamps ``[n]`` and cached_timestamps ``[P]``
            (int64 seconds) are required.
        scale: default ``1 / sqrt(d)``.
        backend: ``"auto"`` / ``"torch"`` (one SDPA call with an additive mask) or ``"reference"``.

    Returns:
        ``[n, H, d]`` in q's dtype.
    """
    _check_qkv(q, k, v)
    if q.shape != k.shape or cached_k.shape != cached_v.shape or cached_k.shape[1:] != k.shape[1:]:
        raise ValueError(f"q, k, v must be [n, H, d] and cached_k, cached_v [P, H, d], got {tuple(q.shape)}, {tuple(cached_k.shape)}")
    if time_bias is not None:
        if timestamps is None or cached_timestamps is None:
            raise ValueError("time_bias needs timestamps and cached_timestamps")
        if timestamps.shape != (len(q),) or cached_timestamps.shape != (len(cached_k),):
            raise ValueError("timestamps must be [n] and cached_timestamps [P]")
    chosen = "torch" if backend in ("auto", "triton") else backend
    if chosen == "torch":
        return causal_delta_attention_torch(q, k, v, cached_k, cached_v, time_bias, timestamps, cached_timestamps, scale)
    if chosen == "reference":
        return causal_delta_attention_reference(q, k, v, cached_k, cached_v, time_bias, timestamps, cached_timestamps, scale)
    raise ValueError(f"unknown backend {backend!r}")
