"""A pre-norm transformer encoder over jagged event sequences.

Attention is only among one history's own events, causal or bidirectional by configuration, with an
optional learned bias per head and log-bucketed time gap. It goes through the one dispatch point
:func:`eventrec.ops.jagged_self_attention` (Triton kernels on CUDA, the fastest measured PyTorch
path on CPU). Shapes: ``x [sum(N_g), D]``, ``offsets [G+1]``, ``timestamps [sum(N_g)]``.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.ops import jagged_self_attention


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
        n, d = x.shape
        q, k, v = self.qkv(self.norm_attention(x)).view(n, 3, self.num_heads, d // self.num_heads).unbind(1)
        attended = jagged_self_attention(
            q, k, v, offsets, max_len=max_len, causal=self.causal,
            time_bias=self.time_bias, timestamps=timestamps if self.time_bias is not None else None,
        )
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
        x = self.input_dropout(events.values)
        if len(x):
            for layer in self.layers:
                x = layer(x, events.offsets, events.max_len, timestamps)
        return JaggedTensor(self.norm(x), events.offsets, events.max_len)
