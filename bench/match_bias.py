"""Time of the keyed pooling with target attention: the match term folded into the queries and keys
against the same term as a score bias, in the same run.

    .venv/bin/python bench/match_bias.py [--threads 1] [--repeats 15]

`KeyedAttentionPooling` adds to each (candidate, head, event) score the target-attention term
``sum_v w[h, v] · cos(E_v[candidate], E_v[event])``. The Triton kernels take it as V·E more
dimensions of every query and key ("folded": with V = 2 vocabularies of 64-dim embeddings, 128 more
dimensions per head beside the head's 16, for each of the M slots, and values padded to match). On
the CPU the model passes it as a score bias computed once per candidate and head ("bias",
the `match_form` argument of `KeyedAttentionPooling.pool`). Same scores (tests/test_model.py); this script prints what each
costs, on random inputs shaped like the Amazon grocery benchmark (64-dim model, 4 heads, 4 slots):

* a training batch: 31 histories of 1-16 events (Amazon's histories average 8.3 events, capped at
  50), 33 candidates each (1 positive + 32 negatives; batches of 1,024 impressions), forward and
  backward;
* one history of 8 and of 50 events against 8,687 candidates (Amazon's catalogue), forward only: the
  model's own `pool`, as `predict` / `eventrec evaluate` run it. The ranking service does not take
  this path: the keyed pooling op's `"one_user"` backend (`eventrec/ops/keyed_pooling_one_user.py`)
  already computes the match term once per candidate, so serving times do not change.

Each case runs both forms interleaved over `--repeats` rounds; median milliseconds and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eventrec.model.keyed_pooling import KeyedAttentionPooling

MODEL_DIM, HEADS, SLOTS, VOCABULARIES, EMBEDDING = 64, 4, 4, 2, 64


def inputs(lengths: list[int], candidates_each: int, generator: torch.Generator) -> dict:
    """Random keys/values inputs and candidates for histories of ``lengths``."""
    events = sum(lengths)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, VOCABULARIES, EMBEDDING, generator=generator), dim=-1).view(n, -1)  # noqa: E731
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    count = candidates_each * len(lengths)
    return {"encoded": torch.randn(events, MODEL_DIM, generator=generator), "match_keys": unit(events), "offsets": offsets,
            "max_len": max(lengths), "query_input": torch.randn(count, VOCABULARIES * EMBEDDING, generator=generator),
            "history_index": torch.arange(len(lengths)).repeat_interleave(candidates_each), "match_query": unit(count)}


def run(pooling: KeyedAttentionPooling, x: dict, backward: bool, form: str) -> None:
    from eventrec.data.jagged import JaggedTensor

    encoded = x["encoded"].requires_grad_(backward)
    keys, values = pooling.keys_values(JaggedTensor(encoded, x["offsets"], x["max_len"]))
    out = pooling.pool(keys, values, x["offsets"], x["max_len"], x["query_input"], x["history_index"], x["match_query"], x["match_keys"],
                       match_form=form)
    if backward:
        out.square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    pooling = KeyedAttentionPooling(MODEL_DIM, VOCABULARIES * EMBEDDING, SLOTS, HEADS, VOCABULARIES, VOCABULARIES * EMBEDDING)
    lengths = torch.randint(1, 17, (31,), generator=generator).tolist()
    cases = {"training batch (31 histories of 1-16 events x 33 candidates), forward + backward": (inputs(lengths, 33, generator), True)}
    cases |= {f"model's own pool, 1 history of {n} events x 8,687 candidates, forward": (inputs([n], 8687, generator), False) for n in (8, 50)}
    print(f"keyed pooling with target attention, {args.threads} thread(s), median of {args.repeats}")
    for name, (x, backward) in cases.items():
        times: dict[str, list[float]] = {"folded": [], "bias": []}
        for form in [*times, *times]:  # warm-up
            with torch.inference_mode(not backward):
                run(pooling, x, backward, form)
        for _ in range(args.repeats):
            for form in times:
                t0 = time.perf_counter()
                with torch.inference_mode(not backward):
                    run(pooling, x, backward, form)
                times[form].append(time.perf_counter() - t0)
        folded, bias = statistics.median(times["folded"]) * 1e3, statistics.median(times["bias"]) * 1e3
        print(f"\n{name}\n| form | ms | speed-up |\n|---|---:|---:|\n| folded (kernel form) | {folded:.1f} | 1.00x |\n| bias (CPU form) | {bias:.1f} | {folded / bias:.2f}x |")


if __name__ == "__main__":
    main()
