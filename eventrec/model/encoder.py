"""A pre-norm transformer encoder over jagged event sequences.

Attention is only among one history's own events, causal or bidirectional by configuration, with an
optional learned bias per head and log-bucketed time gap. It goes through the one dispatch point
:func:`eventrec.ops.jagged_self_attention` (Triton kernels on CUDA, the fastest measured PyTorch
path on CPU). Shapes: ``x [sum(N_g), D]``, ``offsets [G+1]``, ``timestamps [sum(N_g)]``.

For serving, a layer also returns its keys/values (:meth:`EncoderLayer.forward_with_kv`) and, when
causal, extends them with new positions of one sequence (:meth:`EncoderLayer.extend`, through
:func:`eventrec.ops.causal_delta_attention`): the cached user state grows event by event.

``SequenceModelConfig.encoder = "linear"`` builds :class:`~eventrec.model.linear_encoder.LinearEncoderLayer`
layers instead (causal gated linear attention, linear in N); their cache per layer is a fixed
``(state [G, H, d, d],)`` instead of growing ``(keys, values)``. Both layer kinds share the cached
interface the encoder calls: ``encode_cached(x, offsets, max_len, timestamps) -> (out, cache)`` and
``extend_cached(x, timestamps, cache, cached_timestamps) -> (out, cache grown by the new positions)``.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.model.linear_encoder import LinearEncoderLayer
from eventrec.ops import causal_delta_attention, jagged_self_attention

LayerKV = tuple[torch.Tensor, ...]  # one layer's cache: keys and values [N, H, d] (softmax), or (state [G, H, d, d],) (linear)


def is_recurrent(layer_cache: LayerKV) -> bool:
    """Whether one layer's cache is a linear layer's recurrent ``(state [G, H, d, d],)``, of a size
    independent of the history's length (else a softmax layer's keys and values, one row per position)."""
    return len(layer_cache) == 1


class EncoderLayer(nn.Module):
    def __init__(self, config: SequenceModelConfig):
        super().__init__()
        d = config.model_dim
        self.num_heads = config.num_heads
        self.causal = config.causal
        self.norm_attention = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_multiplier * d), nn.GELU(), nn.Linear(config.ffn_multiplier * d, d))
        self.dropout = nn.Dropout(config.dropout)
        self.time_bias = nn.Parameter(torch.zeros(config.num_heads, config.time_buckets)) if config.time_bias else None

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor) -> torch.Tensor:
        return self.forward_with_kv(x, offsets, max_len, timestamps)[0]

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[N, H, d]`` of the layer's input ``x [N, D]``."""
        n, d = x.shape
        return self.qkv(self.norm_attention(x)).view(n, 3, self.num_heads, d // self.num_heads).unbind(1)

    def forward_with_kv(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's output ``[N, D]`` and its keys and values ``[N, H, d]``."""
        q, k, v = self.qkv_heads(x)
        attended = jagged_self_attention(
            q, k, v, offsets, max_len=max_len, causal=self.causal,
            time_bias=self.time_bias, timestamps=timestamps if self.time_bias is not None else None,
        )
        return self._residual(x, attended), k, v

    def extend(self, x: torch.Tensor, timestamps: torch.Tensor, cached: LayerKV, cached_timestamps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New positions ``x [n, D]`` (times ``[n]``) of one sequence after its cached keys/values
        ``[P, H, d]`` (times ``[P]``): their outputs ``[n, D]`` and keys/values ``[n, H, d]``, as a
        full causal pass over the ``P + n`` positions would give them."""
        if not self.causal:
            raise ValueError("extend: a bidirectional layer's earlier positions see the new ones; recompute instead")
        q, k, v = self.qkv_heads(x)
        attended = causal_delta_attention(q, k, v, cached[0], cached[1], time_bias=self.time_bias,
                                          timestamps=timestamps, cached_timestamps=cached_timestamps)
        return self._residual(x, attended), k, v

    def encode_cached(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor
                      ) -> tuple[torch.Tensor, LayerKV]:
        """:meth:`forward_with_kv` as ``(out [N, D], (k, v))`` (zero-length keys/values for no positions)."""
        if not len(x):
            empty = x.new_zeros(0, self.num_heads, x.shape[1] // self.num_heads)
            return x, (empty, empty)
        out, k, v = self.forward_with_kv(x, offsets, max_len, timestamps)
        return out, (k, v)

    def extend_cached(self, x: torch.Tensor, timestamps: torch.Tensor, cache: LayerKV, cached_timestamps: torch.Tensor
                      ) -> tuple[torch.Tensor, LayerKV]:
        """:meth:`extend` as ``(out [n, D], (keys, values) [P + n, H, d])``: the cache grown by the new positions."""
        out, k, v = self.extend(x, timestamps, cache, cached_timestamps)
        return out, (torch.cat([cache[0], k]), torch.cat([cache[1], v]))

    def _residual(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        x = x + self.dropout(self.out(attended.reshape(n, d)))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class JaggedTransformerEncoder(nn.Module):
    """A stack of pre-norm layers of one kind (``config.encoder``): :class:`EncoderLayer` (softmax) or
    :class:`~eventrec.model.linear_encoder.LinearEncoderLayer` (linear), then a LayerNorm."""

    def __init__(self, config: SequenceModelConfig):
        super().__init__()
        layer = LinearEncoderLayer if config.encoder == "linear" else EncoderLayer
        self.kind = config.encoder
        self.layers = nn.ModuleList(layer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.model_dim)
        self.input_dropout = nn.Dropout(config.dropout)  # on the event embeddings, as SASRec's embedding dropout
        self._reads_token_time = config.encoder == "softmax" and config.time_bias and config.summary_token

    @property
    def cache_kind(self) -> str:
        """What :meth:`encode` (``capture_kv``) and :meth:`extend` keep per layer: ``"kv"`` (keys and values
        ``[N, H, d]`` each, growing with the history) or ``"recurrent"`` (``(state [G, H, d, d],)``, fixed)."""
        return "recurrent" if self.kind == "linear" else "kv"

    @property
    def reads_summary_token_time(self) -> bool:
        """Whether the encoded events depend on the summary token's timestamp: the softmax layers' time
        bias between each event and the token does; the linear layers never read the token's time."""
        return self._reads_token_time

    def forward(self, events: JaggedTensor, timestamps: torch.Tensor) -> JaggedTensor:
        """``events [sum(N_g), D]`` → encoded ``[sum(N_g), D]`` with the same offsets."""
        return self.encode(events, timestamps)[0]

    def encode(self, events: JaggedTensor, timestamps: torch.Tensor, capture_kv: bool = False) -> tuple[JaggedTensor, list[LayerKV] | None]:
        """:meth:`forward`, and with ``capture_kv`` each layer's cache: keys and values ``[sum(N_g), H, d]``
        (softmax) or ``(state [G, H, d, d],)`` per history (linear)."""
        x = self.input_dropout(events.values)
        layer_kv: list[LayerKV] | None = [] if capture_kv else None
        for layer in self.layers:
            x, cache = layer.encode_cached(x, events.offsets, events.max_len, timestamps)
            if layer_kv is not None:
                layer_kv.append(cache)
        return JaggedTensor(self.norm(x), events.offsets, events.max_len), layer_kv

    def extend(self, x: torch.Tensor, timestamps: torch.Tensor, layer_kv: list[LayerKV], cached_timestamps: torch.Tensor
               ) -> tuple[torch.Tensor, list[LayerKV]]:
        """New positions ``[n, D]`` (times ``[n]``) of one sequence encoded against its per-layer caches
        (over the ``P`` positions of ``cached_timestamps``): the encoded new positions ``[n, D]`` and
        every layer's cache grown by them (keys/values by ``n`` rows; a linear layer's state replaced)."""
        x = self.input_dropout(x)
        grown = []
        for layer, cache in zip(self.layers, layer_kv):
            x, cache = layer.extend_cached(x, timestamps, cache, cached_timestamps)
            grown.append(cache)
        return self.norm(x), grown
