"""Which PyTorch path is fastest for jagged attention on the CPU? (the choice behind the CPU dispatch)

Compares, on the same skewed batch, forward and forward+backward wall time of: one padded SDPA call
with a key mask, one SDPA call per sequence, length-grouped padded SDPA (the default torch path), and
SDPA on jagged nested tensors. Writes a markdown table to stdout (and ``--out FILE`` if given).

    python bench/attention_cpu.py [--batch 64] [--mean-len 64] [--max-len 512] [--out bench/results/attention_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from pathlib import Path


import torch
import torch.nn.functional as F

from eventrec.ops.attention_torch import jagged_self_attention_torch, keyed_pooling_attention_torch


def lognormal_lengths(n: int, mean: float, max_len: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    mu = math.log(mean) - sigma**2 / 2
    lengths = torch.exp(mu + sigma * torch.randn(n, generator=gen)).round().clamp(1, max_len).long()
    lengths[0] = max_len
    return lengths


def timeit(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--mean-len", type=float, default=64)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=str, default=None)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    lengths = lognormal_lengths(args.batch, args.mean_len, args.max_len, 1.0, gen)
    offsets = torch.zeros(args.batch + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    total, h, d = int(offsets[-1]), args.heads, args.head_dim
    q, k, v = (torch.randn(total, h, d, generator=gen, requires_grad=True) for _ in range(3))
    ts = torch.randint(0, 10**7, (total,), generator=gen).sort().values
    bias = torch.randn(h, 32, requires_grad=True)
    lens = lengths.tolist()

    def padded(causal: bool, with_bias: bool):
        return jagged_self_attention_torch(q, k, v, offsets, causal, bias if with_bias else None,
                                           ts if with_bias else None, ratio=float("inf"))

    def grouped(causal: bool, with_bias: bool):
        return jagged_self_attention_torch(q, k, v, offsets, causal, bias if with_bias else None,
                                           ts if with_bias else None)

    def per_seq(causal: bool, with_bias: bool):
        return jagged_self_attention_torch(q, k, v, offsets, causal, bias if with_bias else None,
                                           ts if with_bias else None, ratio=1.0, min_len=0)

    def nested(causal: bool, with_bias: bool):
        if with_bias:
            return None
        qn, kn, vn = (torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(qn, kn, vn, is_causal=causal).transpose(1, 2).values()

    rows = []
    for causal in (False, True):
        for with_bias in (False, True):
            for name, fn in (("padded + mask (1 call)", padded), ("length-grouped (default)", grouped),
                             ("one call per length group of equal lengths", per_seq),
                             ("nested-tensor SDPA", nested)):
                try:
                    if fn(causal, with_bias) is None:
                        continue
                    fwd = timeit(lambda: fn(causal, with_bias), args.reps)

                    def step():
                        out = fn(causal, with_bias)
                        out.float().sum().backward()

                    fb = timeit(step, args.reps)
                    rows.append((causal, with_bias, name, f"{fwd:.1f}", f"{fb:.1f}"))
                except Exception as exc:  # noqa: BLE001 - record what failed
                    rows.append((causal, with_bias, name, "error", type(exc).__name__))
                print(rows[-1], flush=True)

    # keyed pooling: users x (candidates*slots) queries over their histories
    users, nq = 16, 64
    pl = lognormal_lengths(users, args.mean_len, args.max_len, 1.0, gen)
    p_off = torch.zeros(users + 1, dtype=torch.int64)
    p_off[1:] = torch.cumsum(pl, 0)
    pk, pv = (torch.randn(int(p_off[-1]), h, d, generator=gen, requires_grad=True) for _ in range(2))
    pq = torch.randn(users, nq, h, d, generator=gen, requires_grad=True)
    for name, kw in (("pooling: padded + mask (1 call)", {"ratio": float("inf")}),
                     ("pooling: length-grouped (default)", {}),
                     ("pooling: one call per user", {"ratio": 1.0, "min_len": 0})):
        fn = lambda kw=kw: keyed_pooling_attention_torch(pq, pk, pv, p_off, **kw)  # noqa: E731
        fwd = timeit(fn, args.reps)
        fb = timeit(lambda fn=fn: fn().sum().backward(), args.reps)
        rows.append(("-", "-", name, f"{fwd:.1f}", f"{fb:.1f}"))
        print(rows[-1], flush=True)

    lines = [
        f"# Jagged attention on the CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {datetime.date.today()})",
        "",
        f"Self-attention: B={args.batch}, lognormal lengths mean {args.mean_len} (sigma 1), max {args.max_len} "
        f"(sum N = {total}, sum N^2 = {int((lengths.double()**2).sum())}), H={h}, d={d}, float32. "
        f"Pooling: {users} users x {nq} queries over lognormal histories. Best of {args.reps}, ms.",
        "",
        "| causal | time bias | path | forward ms | forward+backward ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c} | {b} | {n} | {f} | {fb} |" for c, b, n, f, fb in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
