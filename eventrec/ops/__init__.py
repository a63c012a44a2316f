"""Attention ops over jagged batches (``values [sum(N_i), ...]`` + ``offsets [B+1]``).

Dispatch points (pick the Triton kernels on CUDA, length-grouped padded SDPA elsewhere)::

    from eventrec.ops import causal_delta_attention, jagged_self_attention, keyed_pooling_attention, time_gap_bucket
    from eventrec.ops import causal_linear_attention, linear_attention_extend  # gated linear attention

Per op a readable reference (``*_reference``) defines the result; ``docs/kernels.md`` has the details
and the measurements.
"""

from eventrec.ops.attention import causal_delta_attention, jagged_self_attention, keyed_pooling_attention, triton_available
from eventrec.ops.attention_reference import jagged_self_attention_reference, keyed_pooling_attention_reference
from eventrec.ops.linear_attention import causal_linear_attention, linear_attention_extend
from eventrec.ops.time_buckets import DEFAULT_NUM_BUCKETS, time_gap_bucket

__all__ = [
    "causal_delta_attention",
    "causal_linear_attention",
    "DEFAULT_NUM_BUCKETS",
    "jagged_self_attention",
    "jagged_self_attention_reference",
    "keyed_pooling_attention",
    "keyed_pooling_attention_reference",
    "linear_attention_extend",
    "time_gap_bucket",
    "triton_available",
]
