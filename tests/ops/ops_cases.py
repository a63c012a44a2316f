"""Random jagged inputs for the attention tests (fresh on every call: no fixed seed)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def offsets_from(lengths: list[int], device: torch.device) -> Tensor:
    off = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return off.to(device)


def skewed_lengths(batch: int, max_len: int, include: tuple[int, ...] = (0, 1)) -> list[int]:
    """Lognormal lengths (many short, few long), plus the given edge lengths and one at max_len."""
    mean = max(2.0, max_len / 6)
    mu = math.log(mean) - 0.5
    rand = torch.exp(mu + torch.randn(max(0, batch - len(include) - 1))).round().clamp(0, max_len).long().tolist()
    lengths = list(include) + [max_len] + rand
    perm = torch.randperm(len(lengths)).tolist()
    return [lengths[i] for i in perm]


def sorted_timestamps(offsets: Tensor, spread: int = 10**6) -> Tensor:
    """int64 event times in seconds, increasing within each sequence, with gaps of many scales."""
    total = int(offsets[-1])
    gaps = torch.exp(torch.rand(total) * math.log(spread)).long()  # 1 s .. spread s, log-uniform
    gaps[torch.rand(total) < 0.1] = 0  # some equal timestamps
    return (10**9 + torch.cumsum(gaps, 0)).to(offsets.device)


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def assert_same_values_and_gradients(got: Tensor, expected: Tensor, leaves: list[Tensor]) -> None:
    """Float64 outputs of two backends agree, and so do the gradients of a random weighting of them
    with respect to ``leaves`` (the inputs that require grad)."""
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn(got.shape, dtype=torch.float64)
    grads = torch.autograd.grad((got * weights).sum(), leaves, allow_unused=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), leaves, allow_unused=True)
    for a, b in zip(grads, expected_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
