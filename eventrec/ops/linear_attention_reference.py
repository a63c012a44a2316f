"""Causal gated linear attention over jagged sequences: the definition, one step at a time.

Per sequence and head ``h``, with a ``[d_k, d_v]`` state ``S`` (zero, or ``initial_state``, before the
first position) and a log-decay ``g_t <= 0`` per position::

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t          (outer product [d_k, d_v])
    o_t = scale * q_t S_t                          (position t sees itself and everything before it)

which unrolls to ``o_t = scale * sum_{j <= t} exp(g_{j+1} + ... + g_t) <q_t, k_j> v_j``: softmax-free
attention whose weights decay with what lies between query and key (a scalar per head and position:
RetNet's retention when ``g`` is a constant, Mamba-2's SSD / "simple GLA" when it depends on the
input). The state never grows with the sequence: that is what serving keeps per user.

Shapes: ``q, k [T, H, d_k]``, ``v [T, H, d_v]``, ``log_decay [T, H]`` (``T = sum(N_b)``), ``offsets
[B+1]`` int64; states ``[B, H, d_k, d_v]``. Slow (a Python loop over every position); float64-capable;
what the tests compare the fast forms of :mod:`eventrec.ops.linear_attention_torch` against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_attention_step(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The recurrence over ``n`` consecutive positions of one sequence after ``state``.

    Args:
        q, k: ``[n, H, d_k]``; v: ``[n, H, d_v]``; log_decay: ``[n, H]``; state: ``[H, d_k, d_v]``.
        scale: multiplies every ``<q, k>``.

    Returns:
        ``(out [n, H, d_v], state [H, d_k, d_v])``: the positions' outputs and the state after the last.
    """
    out = []
    for t in range(len(q)):
        state = torch.exp(log_decay[t])[:, None, None] * state + k[t][:, :, None] * v[t][:, None, :]
        out.append(scale * torch.einsum("hk,hkv->hv", q[t], state))
    out_tensor = torch.stack(out) if out else v.new_zeros(0, *v.shape[1:])
    return out_tensor, state


def causal_linear_attention_reference(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, offsets: Tensor,
                                      scale: float | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence of every sequence of a jagged batch, position by position.

    Args:
        q, k: ``[T, H, d_k]``; v: ``[T, H, d_v]``; log_decay: ``[T, H]`` (<= 0); offsets: ``[B+1]``.
        scale: default ``1 / sqrt(d_k)``.
        initial_state: ``[B, H, d_k, d_v]`` each sequence's state before its first position (default zero).

    Returns:
        ``(out [T, H, d_v], final_state [B, H, d_k, d_v])``; an empty sequence's final state is its initial one.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    num_seqs, heads, d_k, d_v = offsets.numel() - 1, q.shape[1], q.shape[2], v.shape[2]
    if initial_state is None:
        initial_state = v.new_zeros(num_seqs, heads, d_k, d_v)
    outs, finals = [], []
    for b in range(num_seqs):
        start, end = int(offsets[b]), int(offsets[b + 1])
        out, state = linear_attention_step(q[start:end], k[start:end], v[start:end], log_decay[start:end], initial_state[b], scale)
        outs.append(out)
        finals.append(state)
    out_all = torch.cat(outs) if outs else v.new_zeros(0, heads, d_v)
    final = torch.stack(finals) if finals else initial_state
    return out_all, final
