"""The ``eventrec`` command line: generate, prepare, build, inspect, demo."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from tqdm import tqdm

from eventrec.raw_logs import DataError
from eventrec.schema import SchemaError, builtin_schema_path, load_schema

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rank items by learning from people's raw event sequences.")


@contextmanager
def _stage_bar(description: str) -> Iterator:
    """A tqdm bar whose postfix shows the current stage of a long job; yields a ``say(stage)``."""
    bar = tqdm(desc=description, unit=" stage", file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()

    def say(stage: str) -> None:
        bar.set_postfix_str(f"{stage} ({time.perf_counter() - started:.1f}s)")
        bar.update(1)

    try:
        yield say
    finally:
        bar.close()


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _schema_path(schema: str) -> Path:
    path = Path(schema)
    return path if path.suffix in (".yaml", ".yml") or path.exists() else builtin_schema_path(schema)


@app.command()
def generate(
    out: Path = typer.Option(..., help="Directory to write the raw logs into (replaced atomically)."),
    users: int = typer.Option(10_000, min=1, help="Number of users."),
    days: int = typer.Option(30, min=2, help="Days of simulated time."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
) -> None:
    """Generate the synthetic ads world (raw Parquet logs in the format a real user brings)."""
    from eventrec.synthetic import generate_world

    started = time.perf_counter()
    summary = generate_world(out, num_users=users, days=days, seed=seed)
    typer.echo(json.dumps(summary, indent=1, default=str))
    typer.echo(f"generated {out} in {time.perf_counter() - started:.1f}s")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="trivago | ml100k | amazon_grocery"),
    source: Path = typer.Option(..., help="The dataset's folder, e.g. ../shared/data/trivago."),
    out: Path = typer.Option(..., help="Directory for the converted raw logs."),
) -> None:
    """Convert a real dataset into eventrec's raw-log format (then `eventrec build --schema DATASET`)."""
    from eventrec.adapters import ADAPTERS

    if dataset not in ADAPTERS:
        _fail(ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(ADAPTERS)}"))
    prepare_fn, schema_name = ADAPTERS[dataset]
    try:
        summary = prepare_fn(source, out)
    except (DataError, ValueError, FileNotFoundError) as error:
        _fail(error)
    typer.echo(json.dumps(summary, indent=1, default=str))
    typer.echo(f"next: eventrec build --schema {schema_name} --data {out} --out STORE")


@app.command()
def build(
    schema: str = typer.Option(..., help="A schema YAML file, or a built-in name (synthetic, trivago, ml100k, amazon_grocery)."),
    data: Path = typer.Option(..., help="Directory of the raw logs the schema's paths are relative to."),
    out: Path = typer.Option(..., help="Store directory (replaced atomically)."),
) -> None:
    """Build the people-centric event store and point-in-time examples from raw logs."""
    from eventrec.store_builder import build_store

    try:
        parsed = load_schema(_schema_path(schema))
        with _stage_bar("build") as say:
            manifest = build_store(parsed, data, out, progress=say)
    except (SchemaError, DataError) as error:
        _fail(error)
    typer.echo(f"built {out} in {manifest['build_seconds']:.1f}s")
    typer.echo(json.dumps({"counts": manifest["counts"], "drops": manifest["drops"], "nulls_encoded_as_missing": manifest["nulls_encoded_as_missing"]}, indent=1))


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="A store built by `eventrec build`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Users, events per stream, history-length percentiles and label rates of a store."""
    from eventrec.inspect_store import format_statistics, store_statistics
    from eventrec.store import EventStore, StoreError

    try:
        stats = store_statistics(EventStore.open(store))
    except StoreError as error:
        _fail(error)
    typer.echo(json.dumps(stats, indent=1) if as_json else format_statistics(stats))


@app.command()
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the world, the store and the reports go."),
    users: int = typer.Option(20_000, min=100, help="Users in the synthetic world."),
    seed: int = typer.Option(0),
) -> None:
    """The main job on the embedded default: generate the synthetic world, build its store, inspect it."""
    from eventrec.inspect_store import format_statistics, store_statistics
    from eventrec.store import EventStore
    from eventrec.store_builder import build_store
    from eventrec.synthetic import generate_world

    world, store_dir = workdir / "world", workdir / "store"
    started = time.perf_counter()
    typer.echo(f"[1/3] generating the synthetic world ({users:,} users) into {world}")
    generate_world(world, num_users=users, seed=seed)
    typer.echo(f"[2/3] building the event store into {store_dir}")
    with _stage_bar("build") as say:
        build_store(load_schema(builtin_schema_path("synthetic")), world, store_dir, progress=say)
    typer.echo("[3/3] store statistics")
    typer.echo(format_statistics(store_statistics(EventStore.open(store_dir))))
    typer.echo(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    app()
