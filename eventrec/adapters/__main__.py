"""``python -m eventrec.adapters NAME OUT_DIR [--source DIR]``: prepare a dataset, print its statistics.

Prints one JSON object: ``summary`` (what :func:`prepare` returned, drops included) and ``stats``
(:func:`eventrec.adapters.describe` of the output: users, events per stream, label rates,
history-length percentiles). These are the numbers of ``docs/datasets.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eventrec.adapters import ADAPTERS, describe, prepare_dataset
from eventrec.schema import builtin_schema_path, load_schema


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eventrec.adapters", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ADAPTERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--source", type=Path, default=None, help="dataset folder (default: $EVENTREC_DATA_DIR or ../shared/data/<folder>)")
    args = parser.parse_args(argv)
    summary = prepare_dataset(args.name, args.out_dir, args.source)
    stats = describe(args.out_dir, load_schema(builtin_schema_path(ADAPTERS[args.name][1])))
    print(json.dumps({"summary": summary, "stats": stats}, indent=1))


if __name__ == "__main__":
    main()
