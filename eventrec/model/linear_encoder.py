"""A pre-norm encoder layer of causal gated linear attention: cost linear in the history's length.

Per head (``d = D / H``), each position updates a ``[d, d]`` state and reads it::

    g_t = -( softplus(w_h · LN(x_t) + b_h)  +  ln 2 · gap_t / half_life_h )      (log-decay, <= 0)
    S_t = exp(g_t) S_{t-1} + k_t^T v_t,     a_t = q_t S_t / sqrt(d)
    y_t = W_o [ RMSNorm(a_t) * silu(gate_t) ]   (heads concatenated),   then the same FFN as EncoderLayer

through :func:`eventrec.ops.causal_linear_attention` (the chunked form, training and cold encodes) and
:func:`eventrec.ops.linear_attention_extend` (the recurrence, serving's appends). The forget rate has two
parts: a learned function of the event (Mamba-2 / GLA's data-dependent gate: an event can wipe or keep
the memory) and, with ``time_bias``, a learned half-life per head of the time gap to the previous event
(the decomposable counterpart of the softmax layer's bias by time gap: a bias linear in the gap is the one
that a recurrence can carry). Heads start at different scales: per-event forget rates from 1/4 to 1/2048
and half-lives from an hour to a year (RetNet's multi-scale decays).

``gap_t = max(0, t_t - t_{t-1})`` within a history; 0 at its first position and, when the event model
puts a summary token at position 0, at the first event after it too: the token's time never enters, so
the layer does not read the request time (a summary token stamped with it included).

The cache of a history is its ``[H, d, d]`` state after its last position, whatever its length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eventrec.model.config import SequenceModelConfig
from eventrec.ops import causal_linear_attention, linear_attention_extend

FORGET_RATES = (2.0**-2, 2.0**-11)  # per-event decay rates of the first and last head at initialisation
HALF_LIVES = (3_600.0, 365 * 86_400.0)  # seconds: half-lives by time gap of the first and last head


def _log_spaced(low: float, high: float, count: int) -> torch.Tensor:
    return torch.logspace(math.log10(low), math.log10(high), count) if count > 1 else torch.tensor([math.sqrt(low * high)])


def time_gaps(timestamps: torch.Tensor, offsets: torch.Tensor, untimed: int) -> torch.Tensor:
    """``[sum(N_g)]`` int64 timestamps -> int64 gaps ``max(0, t_i - t_{i-1})`` within each history, 0 at
    each history's first ``untimed`` positions (its first, and the summary token's successor)."""
    gaps = torch.zeros_like(timestamps)
    gaps[1:] = timestamps[1:] - timestamps[:-1]
    lengths = offsets[1:] - offsets[:-1]
    starts = torch.repeat_interleave(offsets[:-1], lengths, output_size=len(timestamps))
    position = torch.arange(len(timestamps), device=timestamps.device) - starts
    return gaps.masked_fill(position < untimed, 0).clamp_(min=0)


class LinearEncoderLayer(nn.Module):
    """Gated linear attention + FFN, with the interface of :class:`eventrec.model.encoder.EncoderLayer`;
    its per-history cache is ``(state [G, H, d, d],)``."""

    def __init__(self, config: SequenceModelConfig):
        super().__init__()
        if not config.causal:
            raise ValueError("causal: the linear encoder is causal only")
        d = config.model_dim
        self.num_heads, self.head_dim = config.num_heads, d // config.num_heads
        self.untimed = 2 if config.summary_token else 1
        self.causal = True
        self.norm_attention = nn.LayerNorm(d)
        self.projections = nn.Linear(d, 4 * d + config.num_heads)  # q, k, v, output gate, per-head forget logit
        rates = _log_spaced(*FORGET_RATES, config.num_heads)
        with torch.no_grad():  # softplus(bias) = the head's initial forget rate per event
            self.projections.bias[4 * d :] = torch.log(torch.expm1(rates))
        self.head_norm = nn.RMSNorm(self.head_dim)
        self.out = nn.Linear(d, d)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_multiplier * d), nn.GELU(), nn.Linear(config.ffn_multiplier * d, d))
        self.dropout = nn.Dropout(config.dropout)
        self.log_half_life = nn.Parameter(_log_spaced(*HALF_LIVES, config.num_heads).log()) if config.time_bias else None

    def _project(self, x: torch.Tensor, gaps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v ``[n, H, d]``, the output gate ``[n, D]`` and the log-decays ``[n, H]`` of ``x [n, D]``."""
        n, width = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v, gate, forget = self.projections(self.norm_attention(x)).split([width, width, width, width, h], dim=-1)
        log_decay = -F.softplus(forget)
        if self.log_half_life is not None:
            log_decay = log_decay - gaps.to(x.dtype)[:, None] * (math.log(2) * torch.exp(-self.log_half_life)).to(x.dtype)
        return q.reshape(n, h, d), k.reshape(n, h, d), v.reshape(n, h, d), gate, log_decay

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor) -> torch.Tensor:
        return self.encode_cached(x, offsets, max_len, timestamps)[0]

    def encode_cached(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        """The layer's output ``[N, D]`` over histories ``offsets [G+1]`` and each history's final
        state ``([G, H, d, d],)``."""
        del max_len
        q, k, v, gate, log_decay = self._project(x, time_gaps(timestamps, offsets, self.untimed))
        attended, state = causal_linear_attention(q, k, v, log_decay, offsets)
        return self._residual(x, attended, gate), (state,)

    def extend_cached(self, x: torch.Tensor, timestamps: torch.Tensor, cache: tuple[torch.Tensor], cached_timestamps: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        """New positions ``x [n, D]`` (times ``[n]``) of one history after its cached state ``([1, H, d, d],)``
        over ``P = len(cached_timestamps)`` positions: their outputs ``[n, D]`` and the state after them,
        as :meth:`encode_cached` over the ``P + n`` positions gives them."""
        (state,) = cache
        if state.dim() != 4 or state.shape[0] != 1:
            raise ValueError(f"extend: the cached state must be one history's [1, H, d, d], got {tuple(state.shape)}")
        cached = len(cached_timestamps)
        times = torch.cat([cached_timestamps[-1:], timestamps])  # the previous position's time, if any
        gaps = (times[1:] - times[:-1]) if cached else torch.cat([timestamps[:1] * 0, timestamps[1:] - timestamps[:-1]])
        position = cached + torch.arange(len(timestamps), device=timestamps.device)
        gaps = gaps.masked_fill(position < self.untimed, 0).clamp_(min=0)
        q, k, v, gate, log_decay = self._project(x, gaps)
        attended, state = linear_attention_extend(q, k, v, log_decay, state[0])
        return self._residual(x, attended, gate), (state[None],)

    def _residual(self, x: torch.Tensor, attended: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        mixed = self.head_norm(attended).reshape(n, d) * F.silu(gate)
        x = x + self.dropout(self.out(mixed))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))
