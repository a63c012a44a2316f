"""``python -m eventrec.adapters NAME OUT_DIR [--source DIR] [--option KEY=INT ...]``: prepare a dataset, print its statistics.

Prints one JSON object: ``summary`` (what :func:`prepare` returned, drops included) and ``stats``
(:func:`eventrec.adapters.describe` of the output: users, events per stream, label rates,
history-length percentiles). These are the numbers of ``docs/datasets.md``. ``--option`` passes an
integer keyword argument to the adapter's ``prepare`` (e.g. ``--option max_users=500 --option seed=1``
for ``trivago_views``, ``--option negatives=9`` for ``amazon_grocery``).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from eventrec.adapters import ADAPTERS, describe, prepare_dataset
from eventrec.schema import builtin_schema_path, load_schema


def _option(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=INT, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: expected an integer, got {value!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eventrec.adapters", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ADAPTERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="dataset folder (default: $EVENTREC_DATA_DIR or ../shared/data/<folder>)")
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=INT",
                        help="an integer keyword argument of the adapter's prepare (repeatable), e.g. max_users=500")
    args = parser.parse_args(argv)
    options = dict(args.option)
    allowed = [p for p in inspect.signature(ADAPTERS[args.name][0]).parameters if p not in ("source_dir", "out_dir")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        parser.error(f"--option {unknown[0]}: not an option of adapter {args.name!r}; its options: {allowed}")
    summary = prepare_dataset(args.name, args.out_dir, args.source, **options)
    stats = describe(args.out_dir, load_schema(builtin_schema_path(ADAPTERS[args.name][1])))
    print(json.dumps({"summary": summary, "stats": stats}, indent=1))


if __name__ == "__main__":
    main()
