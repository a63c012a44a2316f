"""Log-bucketing of the time gap between two events: the one definition the model and kernels share.

``bucket(dt) = min(num_buckets - 1, floor(log2(1 + |dt|)))`` for a gap ``dt`` in seconds, so bucket 0 is
a gap of 0 s, bucket 1 is 1-2 s, bucket 2 is 3-6 s, ..., bucket 10 is about 17-34 minutes, bucket 16
about 18-36 hours, bucket 20 about 12-24 days, bucket 25 about 1-2 years. 32 buckets cover every gap an
int32 can hold.

The floor of the logarithm is read off the exponent bits of ``float32(1 + |dt|)``: exact for
``|dt| < 2**24`` s (194 days); above that, a gap within one part in 2**24 of a power of two may land in
the next bucket. The Triton kernels compute the bucket in exactly this way from int32 timestamps, so the
reference and the kernels agree bit for bit. Gaps are clamped to ``MAX_GAP`` (about 68 years).
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_GAP: int = 2**31 - 2
"""Largest gap in seconds that is bucketed exactly; larger gaps are clamped to it."""

DEFAULT_NUM_BUCKETS: int = 32


def time_gap_bucket(dt: Tensor, num_buckets: int = DEFAULT_NUM_BUCKETS) -> Tensor:
    """Bucket index of each time gap.

    Args:
        dt: integer tensor of any shape, time gaps in seconds (sign ignored).
        num_buckets: number of buckets; gaps beyond the last bucket fall into it.

    Returns:
        int64 tensor of the same shape as ``dt`` with values in ``[0, num_buckets)``.
    """
    if dt.is_floating_point():
        raise TypeError("time_gap_bucket expects integer gaps in seconds")
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    gap = dt.to(torch.int64).abs().clamp_(max=MAX_GAP).add_(1)  # in [1, 2**31 - 1]
    exponent = gap.to(torch.float32).view(torch.int32).bitwise_right_shift_(23).sub_(127)
    return exponent.clamp_(max=num_buckets - 1).to(torch.int64)


def relative_timestamps_int32(timestamps: Tensor) -> Tensor:
    """Timestamps shifted to start at 0 and clamped into int32, as the kernels read them.

    Differences between the returned values equal the differences of the inputs as long as the batch
    spans less than ``MAX_GAP`` seconds, so bucketing them gives the same result as
    :func:`time_gap_bucket` on the raw int64 timestamps.

    Args:
        timestamps: int64 ``[T]`` event times in seconds.

    Returns:
        int32 ``[T]`` contiguous.
    """
    if timestamps.numel() == 0:
        return timestamps.to(torch.int32)
    rel = timestamps.to(torch.int64) - timestamps.min()
    return rel.clamp_(max=MAX_GAP).to(torch.int32).contiguous()
