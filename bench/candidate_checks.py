"""Checking a request's candidates: a column at a time against value by value, in one run.

    .venv/bin/python bench/candidate_checks.py [--candidates 1000 5000 10000] [--repeats 15]

The world of ``bench/serving_latency.py`` (items: ``ad_id`` hashed, ``category`` categorical, ``price``
numeric), C random valid candidates as columns (``{column: [values]}``) and as records. Per C and form:

* **serving**: ``Records.candidate_frame``, what ``/rank`` runs before encoding (each column checked
  in one pass over its values' types where every value is plainly valid, then one frame);
* **value by value** (the baseline, how it ran before 2026-12-06): ``check_value`` of every value (records:
  ``Records.check_record`` of every record), then the frame (records: ``pl.DataFrame(records)``).

Prints p50 ms of each and the ratio; both must accept the same candidates and give equal frames.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))


def value_by_value(records_layer, candidates) -> pl.DataFrame:
    from eventrec.serving.values import check_value

    if isinstance(candidates, dict):
        for a in records_layer.item_attributes:
            for i, value in enumerate(candidates[a.source_column]):
                check_value(a, value, f"candidates.{a.source_column}[{i}]")
        return pl.DataFrame({c: candidates[c] for c in records_layer.item_columns}, strict=False)
    for i, record in enumerate(candidates):
        records_layer.check_record(records_layer.item_attributes, record, f"candidates[{i}]")
    return pl.DataFrame(candidates, infer_schema_length=None).select(records_layer.item_columns)


def p50_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000, 10_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from serving_latency import CATEGORIES, build_world

    from eventrec.serving.records import Records

    with tempfile.TemporaryDirectory() as tmp:
        records_layer = Records(build_world(Path(tmp) / "world", [16]))
        rng = np.random.default_rng(0)
        print("| C | form | serving p50 (ms) | value by value p50 (ms) | value by value / serving |\n|---:|---|---:|---:|---:|")
        for c in args.candidates:
            columns = {"ad_id": rng.integers(0, 1_000_000, c).tolist(), "category": [CATEGORIES[i % 50] for i in range(c)],
                       "price": rng.uniform(1, 100, c).tolist()}
            columns = {k: v for k, v in columns.items() if k in records_layer.item_columns}
            records = [dict(zip(columns, values)) for values in zip(*columns.values())]
            for form, candidates in (("columns", columns), ("records", records)):
                assert records_layer.candidate_frame(candidates).equals(value_by_value(records_layer, candidates))
                ours = p50_ms(lambda: records_layer.candidate_frame(candidates), args.repeats)
                base = p50_ms(lambda: value_by_value(records_layer, candidates), args.repeats)
                print(f"| {c} | {form} | {ours:.2f} | {base:.2f} | {base / ours:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
