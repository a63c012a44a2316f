"""The dispatch points of causal gated linear attention: call these, not the backends.

* :func:`causal_linear_attention` -- every position of a jagged batch (training, a cold user encode),
  optionally from given states, returning each sequence's final ``[H, d_k, d_v]`` state.
* :func:`linear_attention_extend` -- new positions of one sequence after its state (serving's append):
  the state is all a sequence's past needs, whatever its length.

Per sequence and head, with ``g_t = log_decay[t] <= 0``::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t,     out_t = scale * q_t S_t

Backends: ``"torch"`` (the chunked parallel form, :mod:`eventrec.ops.linear_attention_torch`),
``"recurrent"`` (the step recurrence, for a few positions) and ``"reference"`` (the definition,
:mod:`eventrec.ops.linear_attention_reference`, position by position, float64-capable). ``"auto"``
picks the chunked form for a batch (its chunk size by
:func:`~eventrec.ops.linear_attention_torch.pick_chunk`) and, for an extension, the recurrence up to
``RECURRENT_MAX`` new positions and the chunked form beyond. No Triton kernel yet: on CUDA the torch
forms run as they are.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from eventrec.ops.jagged_helpers import check_offsets
from eventrec.ops.linear_attention_reference import causal_linear_attention_reference, linear_attention_step
from eventrec.ops.linear_attention_torch import causal_linear_attention_torch

LinearBackend = Literal["auto", "torch", "recurrent", "reference"]

RECURRENT_MAX: int = 8
"""``"auto"`` extends by the step recurrence up to this many new positions, by the chunked form beyond
(measured on the CPU, H=4, d=16: a step about 0.1 ms, the chunked form about 0.6-0.8 ms whatever n <= 64)."""


def _check(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None, state_shape: tuple[int, ...]) -> None:
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [T, H, d_k], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must be [T, H, d_v] with q's T and H, got {tuple(v.shape)} for q {tuple(q.shape)}")
    if log_decay.shape != q.shape[:2]:
        raise ValueError(f"log_decay must be [T, H] = {tuple(q.shape[:2])}, got {tuple(log_decay.shape)}")
    if not (q.dtype == k.dtype == v.dtype == log_decay.dtype) or not q.is_floating_point():
        raise ValueError("q, k, v and log_decay must share one floating dtype")
    if log_decay.device.type == "cpu" and bool((log_decay > 0).any()):
        raise ValueError("log_decay must be <= 0 (a decay exp(g) of at most 1)")
    if state is not None and (tuple(state.shape) != state_shape or state.dtype != q.dtype):
        raise ValueError(f"state must be {state_shape} in {q.dtype}, got {tuple(state.shape)} in {state.dtype}")


def causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    offsets: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int | None = None,
    backend: LinearBackend = "auto",
) -> tuple[Tensor, Tensor]:
    """Causal gated linear attention inside each sequence of a jagged batch.

    Args:
        q, k: ``[sum(N_b), H, d_k]``; v: ``[sum(N_b), H, d_v]``; log_decay: ``[sum(N_b), H]``, every
            value <= 0 (position ``t`` multiplies the state it inherits by ``exp(log_decay[t])``).
        offsets: ``[B+1]`` int64, from 0 to ``sum(N_b)``; empty sequences allowed.
        scale: multiplies every ``<q, k>``; default ``1 / sqrt(d_k)``.
        initial_state: ``[B, H, d_k, d_v]`` each sequence's state before its first position (default zero).
        chunk_size: positions per chunk of the chunked form (any value gives the same result up to
            rounding); None: chosen from the lengths (``pick_chunk``).
        backend: ``"auto"`` / ``"torch"`` (chunked), ``"recurrent"`` / ``"reference"`` (position by position).

    Returns:
        ``(out [sum(N_b), H, d_v], final_state [B, H, d_k, d_v])``; differentiable in every float input.
    """
    check_offsets(offsets, q.shape[0])
    num_seqs = offsets.numel() - 1
    _check(q, k, v, log_decay, initial_state, (num_seqs, q.shape[1], q.shape[2], v.shape[2]))
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend in ("auto", "torch"):
        return causal_linear_attention_torch(q, k, v, log_decay, offsets, scale, initial_state, chunk_size)
    if backend in ("recurrent", "reference"):
        return causal_linear_attention_reference(q, k, v, log_decay, offsets, scale, initial_state)
    raise ValueError(f"unknown backend {backend!r}")


def linear_attention_extend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor,
    *,
    scale: float | None = None,
    chunk_size: int | None = None,
    backend: LinearBackend = "auto",
) -> tuple[Tensor, Tensor]:
    """New positions of one sequence after its state: what :func:`causal_linear_attention` over the
    whole sequence gives at those positions, at a cost independent of the sequence's length.

    Args:
        q, k: ``[n, H, d_k]``; v: ``[n, H, d_v]``; log_decay: ``[n, H]`` (<= 0), the new positions.
        state: ``[H, d_k, d_v]`` the state after the sequence's earlier positions (zero for none).
        scale: default ``1 / sqrt(d_k)``.
        chunk_size: the chunked form's chunk (None: chosen from n).
        backend: ``"auto"`` (the recurrence up to ``RECURRENT_MAX`` new positions, else chunked),
            ``"recurrent"`` / ``"reference"`` (the step recurrence) or ``"torch"`` (chunked).

    Returns:
        ``(out [n, H, d_v], state [H, d_k, d_v])``: the new positions' outputs and the state after them.
    """
    _check(q, k, v, log_decay, state, (q.shape[1], q.shape[2], v.shape[2]))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "auto":
        backend = "recurrent" if len(q) <= RECURRENT_MAX else "torch"
    if backend in ("recurrent", "reference"):
        return linear_attention_step(q, k, v, log_decay, state, scale)
    if backend == "torch":
        offsets = torch.tensor([0, len(q)], dtype=torch.int64, device=q.device)
        out, final = causal_linear_attention_torch(q, k, v, log_decay, offsets, scale, state[None], chunk_size)
        return out, final[0]
    raise ValueError(f"unknown backend {backend!r}")
