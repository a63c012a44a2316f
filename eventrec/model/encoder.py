"""A pre-norm transformer encoder over jagged event sequences.

Attention is only among one history's own events, causal or bidirectional by configuration, with an
optional learned bias per head and log-bucketed time gap. It goes through the one dispatch point
:func:`eventrec.ops.jagged_self_attention` (Triton kernels on CUDA, the fastest measured PyTorch
path on CPU). Shapes: ``x [sum(N_g), D]``, ``offsets [G+1]``, ``timestamps [sum(N_g)]``.

For serving, a layer also returns its keys/values (:meth:`EncoderLayer.forward_with_kv`) and, when
causal, extends them with new positions of one sequence (:meth:`EncoderLayer.extend`, through
:func:`eventrec.ops.causal_delta_attention`): the cached user state grows event by event.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.ops import causal_delta_attention, jagged_self_attention

LayerKV = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values [N, H, d]


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

    def _residual(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        x = x + self.dropout(self.out(attended.reshape(n, d)))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class JaggedTransformerEncoder(nn.Module):
    def __init__(self, config: SequenceModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.model_dim)
        self.input_dropout = nn.Dropout(config.dropout)  # on the event embeddings, as SASRec's embedding dropout

    def forward(self, events: JaggedTensor, timestamps: torch.Tensor) -> JaggedTensor:
        """``events [sum(N_g), D]`` → encoded ``[sum(N_g), D]`` with the same offsets."""
        return self.encode(events, timestamps)[0]

    def encode(self, events: JaggedTensor, timestamps: torch.Tensor, capture_kv: bool = False) -> tuple[JaggedTensor, list[LayerKV] | None]:
        """:meth:`forward`, and with ``capture_kv`` each layer's keys and values ``[sum(N_g), H, d]``."""
        x = self.input_dropout(events.values)
        layer_kv: list[LayerKV] | None = [] if capture_kv else None
        for layer in self.layers:
            if len(x):
                x, k, v = layer.forward_with_kv(x, events.offsets, events.max_len, timestamps)
            else:
                k = v = x.new_zeros(0, layer.num_heads, x.shape[1] // layer.num_heads)
            if layer_kv is not None:
                layer_kv.append((k, v))
        return JaggedTensor(self.norm(x), events.offsets, events.max_len), layer_kv

    def extend(self, x: torch.Tensor, timestamps: torch.Tensor, layer_kv: list[LayerKV], cached_timestamps: torch.Tensor
               ) -> tuple[torch.Tensor, list[LayerKV]]:
        """New positions ``[n, D]`` of one sequence encoded against its cached per-layer keys/values:
        the encoded new positions ``[n, D]`` and every layer's keys/values grown by ``n``."""
        x = self.input_dropout(x)
        grown = []
        for layer, (k_old, v_old) in zip(self.layers, layer_kv):
            x, k, v = layer.extend(x, timestamps, (k_old, v_old), cached_timestamps)
            grown.append((torch.cat([k_old, k]), torch.cat([v_old, v])))
        return self.norm(x), grown
