"""The ``eventrec`` command line: generate, prepare, build, inspect, demo."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Optional

import typer
from tqdm import tqdm

from eventrec.evaluation.metrics import json_ready, worse_than_constant
from eventrec.store.raw_logs import DataError
from eventrec.schema import SchemaError, builtin_schema_path, load_schema
from eventrec.content.commands import app as content_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rank items by learning from people's raw event sequences.")
app.add_typer(content_app, name="content")  # eventrec content embed | quantize (eventrec/content/commands.py)


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


def _warn(message: Optional[str], where: str) -> None:
    """Print ``message`` (if any) to stderr in yellow, saying where it was measured."""
    if message:
        typer.secho(f"{message} ({where})", fg=typer.colors.YELLOW, err=True)


def _schema_path(schema: str) -> Path:
    path = Path(schema)
    return path if path.suffix in (".yaml", ".yml") or path.exists() else builtin_schema_path(schema)


@app.command()
def generate(
    out: Path = typer.Option(..., help="Directory to write the raw logs into (replaced atomically)."),
    users: Optional[int] = typer.Option(None, min=1, help="Number of users (default 10000; 1000 with --preset long)."),
    days: Optional[int] = typer.Option(None, min=2, help="Days of simulated time (default 30; 180 with --preset long)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    preset: Literal["default", "long"] = typer.Option("default", help="default: the ads world; long: histories of ~2k events (tail to 100k) whose truth reads weeks-old events (schema synthetic_long)."),
) -> None:
    """Generate the synthetic ads world (raw Parquet logs in the format a real user brings)."""
    from eventrec.synthetic import generate_world

    started = time.perf_counter()
    try:
        summary = generate_world(out, num_users=users, days=days, seed=seed, preset=preset)
    except (ValueError, FileExistsError) as error:
        _fail(error)
    typer.echo(json.dumps(summary, indent=1, default=str))
    typer.echo(f"generated {out} in {time.perf_counter() - started:.1f}s")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="trivago | trivago_views | trivago_lists_small | ml100k | amazon_grocery | amazon_grocery_conversion"),
    source: Path = typer.Option(..., help="The dataset's folder, e.g. ../shared/data/trivago."),
    out: Path = typer.Option(..., help="Directory for the converted raw logs: absent, empty or a previous output; never --source or inside it."),
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
    out: Path = typer.Option(..., help="Store directory: absent, empty or a previous store (replaced atomically); never --data or inside it."),
    allow_empty_splits: bool = typer.Option(False, "--allow-empty-splits", help="Build even if the schema's time boundaries leave a split without impressions."),
    engine: str = typer.Option("polars", help="polars (partitioned, in this process), spark (the same partitions on Spark; pip install '.[spark]' and Java 17) or memory (all rows at once; the reference). All write the same bytes."),
    spark_master: str = typer.Option(None, help="--engine spark: the Spark master URL (default: the session of spark-submit, else local[*])."),
    rows_per_partition: int = typer.Option(200_000, help="Raw rows (table rows of events and impressions) per user partition: the unit of memory of the partitioned engines."),
    workers: Optional[int] = typer.Option(None, help="--engine polars: user partitions in flight (default min(2, cores); peak memory grows with it)."),
) -> None:
    """Build the people-centric event store and point-in-time examples from raw logs."""
    from eventrec.store.build import build_store

    try:
        parsed = load_schema(_schema_path(schema))
        with _stage_bar("build") as say:
            manifest = build_store(parsed, data, out, progress=say, allow_empty_splits=allow_empty_splits, engine=engine,
                                   rows_per_partition=rows_per_partition, spark_master=spark_master, workers=workers)
    except (SchemaError, DataError, ValueError) as error:
        _fail(error)
    typer.echo(f"built {out} in {manifest['build_seconds']:.1f}s")
    typer.echo(json.dumps({"counts": manifest["counts"], "drops": manifest["drops"], "nulls_encoded_as_missing": manifest["nulls_encoded_as_missing"]}, indent=1))


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="A store built by `eventrec build`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Users, events per stream, history-length percentiles and label rates of a store."""
    from eventrec.store.inspect import format_statistics, store_statistics
    from eventrec.store.reader import EventStore, StoreError

    try:
        stats = store_statistics(EventStore.open(store))
    except StoreError as error:
        _fail(error)
    typer.echo(json.dumps(stats, indent=1) if as_json else format_statistics(stats))


THREADS_HELP = (
    "torch intra-op threads. 1 by default: on the 2-core machines here one thread trained as fast as two, "
    "and two threads in each of two concurrent jobs ran 15-25x slower (spinning threads)."
)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _load_configs(kind: str, config: Optional[Path], overrides: dict) -> tuple:
    """(model config, train config) from an optional YAML (``model:`` and ``train:`` sections)."""
    import yaml
    from eventrec.training.factory import default_config
    from eventrec.training.trainer import TrainConfig

    data = yaml.safe_load(config.read_text()) if config else {}
    data = data or {}
    try:
        model_config = default_config(kind, data.get("model") or {})
        train_config = TrainConfig.model_validate({**(data.get("train") or {}), **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as error:  # a pydantic ValidationError, or an unknown model name
        _fail(ValueError(f"{config or 'options'}: {error}"))
    return model_config, train_config


def _experimental_sections(model_config, train_config) -> list[str]:
    """The config sections holding research settings (``experimental:`` of the model or train config)."""
    sections = ["train.experimental"] if train_config.experimental is not None else []
    if getattr(model_config, "experimental", None) is not None:
        sections.append("model.experimental")
    return sections


@app.command()
def train(
    store: Path = typer.Option(..., help="A store built by `eventrec build`."),
    model: str = typer.Option("sequence", help="sequence | dlrm (the engineered-features baseline) | dlrm_id_bags (id bags and counts only)"),
    out: Path = typer.Option(..., help="Run directory (checkpoints last/ and best/, logs). Resumes if it holds a run."),
    config: Optional[Path] = typer.Option(None, help="YAML with optional 'model:' and 'train:' sections."),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    learning_rate: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
    experimental: bool = typer.Option(False, "--experimental", help="Allow the config's experimental sections (research "
                                      "objectives and model variants, not part of a production recipe)."),
    nproc_per_node: int = typer.Option(0, "--nproc-per-node", min=0, help="Train on N processes of this machine (torchrun; gloo, NCCL "
                                       "on CUDA): TorchRec-sharded tables, the rest data parallel (docs/distributed_training.md)."),
    sharding: str = typer.Option("auto", help="Distributed training: auto (TorchRec's planner chooses) | row_wise | table_wise."),
) -> None:
    """Train a model on the store's train split, early-stopping on validation."""
    from eventrec.training.launch import launch, launched_by_torchrun, without_option

    if nproc_per_node and not launched_by_torchrun():
        raise typer.Exit(launch(without_option(sys.argv[1:], "--nproc-per-node"), nproc_per_node))
    _set_threads(threads)
    from eventrec.store.reader import EventStore
    from eventrec.training.trainer import Trainer

    from eventrec.store.reader import StoreError

    model_config, train_config = _load_configs(model, config, {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed})
    sections = _experimental_sections(model_config, train_config)
    if sections and not experimental:
        _fail(ValueError(f"{config}: {' and '.join(sections)}: research settings, not part of a production recipe; "
                         "pass --experimental to train with them"))
    rank = 0
    try:
        loaded = EventStore.open(store)
        for where, objective in train_config.all_objectives():  # refused before anything is built
            objective.check(loaded, model_config, where)
        if launched_by_torchrun():  # one of N processes (TorchRec imported only here)
            from eventrec.training.distributed import DistributedTrainer
            from eventrec.training.sharding import DistributedEnv

            env = DistributedEnv.from_torchrun()
            rank = env.rank
            trainer = DistributedTrainer(loaded, model_config, train_config, out, env, sharding)
        else:
            trainer = Trainer(loaded, model_config, train_config, out)  # refuses empty splits, another store or config to resume
    except (StoreError, ValueError) as error:
        _fail(error)
    _, result = trainer.fit()
    if launched_by_torchrun():
        env.leave()
    if rank != 0:
        return  # rank 0 reports
    typer.echo(f"best_epoch {result.best_epoch} (counted from 0, as in result.json and the logs; the progress bar's "
               f"'epoch {result.best_epoch + 1}/{train_config.epochs}'), {result.steps} steps, {result.seconds:.1f}s; checkpoint {out / 'best'}")
    typer.echo(json.dumps(json_ready(result.best_validation), indent=1))
    _warn(worse_than_constant(result.best_validation, loaded.label_names[0]), "validation of the selected checkpoint")


@app.command()
def evaluate(
    store: Path = typer.Option(..., help="The store the model was trained on."),
    checkpoint: Path = typer.Option(..., help="A checkpoint directory, e.g. RUN/best."),
    split: str = typer.Option("test", help="train | validation | test"),
    predictions: Optional[Path] = typer.Option(None, help="Write per-impression ids, labels and scores to this Parquet file "
                                               "(its folder is created first)."),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
    allow_store_mismatch: bool = typer.Option(False, "--allow-store-mismatch", help="Use a store whose vocabularies or "
                                              "statistics differ from the training store's (experts only: ids may mean other things)."),
    table_precision: Literal["fp32", "fp16", "int8"] = typer.Option(
        "fp32", help="The embedding tables at inference: fp32, fp16 or int8 (row-wise scale and offset; docs/serving.md)."),
    user_batches: bool = typer.Option(False, "--user-batches", help="Score impressions grouped by user: each user's history encoded "
                                      "once per batch, the same scores (for long histories; needs candidate search and histories "
                                      "within max_length, docs/models.md)."),
) -> None:
    """Metrics of a trained model on a split: per task, by history length and by streams present (segments under
    100 labelled impressions or without both classes are listed under segments_too_small, not measured), and
    the rule baselines on the same split (candidate count and recency in history, the user's earlier positive
    rate, item popularity; the best one per task chosen on the validation split). Undefined metrics print as null."""
    _set_threads(threads)
    from eventrec.evaluation.predict import metrics_by_segment, metrics_by_task, predict, predict_by_user, predictions_frame, segments_too_small
    from eventrec.evaluation.rules import rule_report
    from eventrec.store.reader import EventStore, StoreError
    from eventrec.model.quantized_tables import quantize_tables
    from eventrec.training.factory import batch_function, load_trained_model

    if predictions:  # before hours of scoring, not after
        try:
            predictions.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _fail(ValueError(f"--predictions {predictions}: cannot create its folder ({error})"))
    try:
        loaded = EventStore.open(store)
        model, config, _, info = load_trained_model(checkpoint, loaded, allow_store_mismatch)
        quantize_tables(model, table_precision)
        indices = loaded.split_indices(split)
        probs = predict_by_user(model, loaded, indices) if user_batches else predict(model, loaded, indices, batch_function(config))
        tasks = metrics_by_task(loaded, indices, probs)
        rules = rule_report(loaded, split)
        report = {"split": split, "tasks": tasks, "segments": metrics_by_segment(loaded, indices, probs),
                  "segments_too_small": segments_too_small(loaded, indices), "rules": rules}
    except (StoreError, FileNotFoundError, ValueError) as error:  # incl. another store, a damaged checkpoint, NaN scores
        _fail(error)
    typer.echo(json.dumps(json_ready(report), indent=1))
    for task, metrics in tasks.items():
        best = rules["best_on_validation"][task]
        typer.echo(f"{task}: model AUC {metrics.get('auc', float('nan')):.4f}, best rule ({best}) AUC "
                   f"{rules['metrics'][best][task]['auc']:.4f} on {split}", err=True)
    primary = loaded.label_names[0]
    _warn(worse_than_constant((info.get("state") or {}).get("best_validation") or {}, primary), "validation of this checkpoint")
    _warn(worse_than_constant(tasks, primary), f"the {split} split")
    if predictions:
        predictions_frame(loaded, indices, probs).write_parquet(predictions)
        typer.echo(f"wrote {predictions}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Where the world, the store, the runs and the report go."),
    users: int = typer.Option(50_000, min=100, help="Users in the synthetic world."),
    seeds: int = typer.Option(3, min=1, help="Training seeds per model."),
    epochs: int = typer.Option(1, min=1, help="Epochs (validation 4 times per epoch, early stopping; click models over-fit from the second epoch on)."),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
) -> None:
    """The main job: generate the synthetic world, build its store, train the sequence model and the
    DLRM baselines (engineered features, and id bags only) over seeds, print the comparison table with
    the best rule baseline and the offline A/B, write plots."""
    import polars as pl

    from eventrec.evaluation.experiment import format_table, run_comparison, summarize
    from eventrec.store.inspect import format_statistics, store_statistics
    from eventrec.evaluation.plots import write_plots
    from eventrec.evaluation.rules import rule_metrics
    from eventrec.training.factory import COMPARED_MODELS, default_config
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.synthetic import generate_world
    from eventrec.training.trainer import TrainConfig

    _set_threads(threads)
    world, store_dir, runs_dir = workdir / "world", workdir / "store", workdir / "runs"
    started = time.perf_counter()
    if (world / "world.json").exists() and json.loads((world / "world.json").read_text()).get("config", {}).get("num_users") == users:
        typer.echo(f"[1/4] reusing the synthetic world in {world}")
    else:
        typer.echo(f"[1/4] generating the synthetic world ({users:,} users) into {world}")
        generate_world(world, num_users=users, seed=0)
    typer.echo(f"[2/4] building the event store into {store_dir}")
    if not (store_dir / "manifest.json").exists():
        with _stage_bar("build") as say:
            build_store(load_schema(builtin_schema_path("synthetic")), world, store_dir, progress=say)
    store = EventStore.open(store_dir)
    typer.echo(format_statistics(store_statistics(store)))
    typer.echo(f"[3/4] training the sequence model and the DLRM baselines, {seeds} seed(s) each (runs resume if killed)")
    models = {name: default_config(name) for name in COMPARED_MODELS}
    candidates = pl.read_parquet(world / "candidates.parquet") if (world / "candidates.parquet").exists() else None
    train_config = TrainConfig(epochs=epochs, batch_size=512, validations_per_epoch=4, patience=2)
    runs = run_comparison(store, models, train_config, list(range(seeds)), runs_dir, candidates=candidates, top_k=3, conversion_given_click=False)
    typer.echo("[4/4] results on the test split (mean ± std over seeds)")
    rules = {split: rule_metrics(store, split) for split in ("validation", "test")}
    table = format_table(summarize(runs), baseline=list(COMPARED_MODELS)[1:], rules=rules)
    plots = write_plots(store, runs_dir, runs)
    report = workdir / "report.md"
    report.write_text(f"# eventrec demo\n\n{table}\n\nPlots: " + ", ".join(p.name for p in plots) + "\n")
    typer.echo(table)
    typer.echo(f"plots: {', '.join(str(p) for p in plots)}; report: {report}; {time.perf_counter() - started:.0f}s in all")


@app.command()
def serve(
    model: Path = typer.Option(..., help="A checkpoint directory of the sequence model, e.g. RUN/best."),
    store: Path = typer.Option(..., help="The event store (histories of known users, vocabularies)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535),
    max_candidates: int = typer.Option(10_000, min=1, help="More candidates per request get HTTP 413."),
    cache_mb: int = typer.Option(512, min=1, help="Memory bound of the per-user state cache (MiB); with --redis-url, of this replica's "
                                 "decoded copies of the states in Redis."),
    redis_url: str = typer.Option(None, help="Share user states and appended events with other replicas through Redis, e.g. redis://127.0.0.1:6379/0."),
    state_ttl: int = typer.Option(3600, min=0, help="With --redis-url: seconds a user state stays in Redis (0: no expiry)."),
    max_state_mb: int = typer.Option(64, min=1, help="With --redis-url: larger user states are kept by the replica that computed them, not in Redis."),
    threads: int = typer.Option(0, min=0, help="torch threads for scoring (0: torch's default)."),
    precision: Literal["fp32", "bf16"] = typer.Option(
        "fp32", help="fp32 (scores equal `eventrec evaluate`'s) or bf16 (candidate side in bfloat16: about 2x faster on CPUs with "
        "AVX512-BF16 or AMX, probabilities within a few 1e-3; see docs/serving.md)."),
    scoring_slots: int = typer.Option(1, min=1, help="Requests scored at the same time (the torch threads are shared; 1 suits a few cores)."),
    scoring_device: str = typer.Option("cpu", help="Where candidates are scored: cpu or cuda[:index] (the user side stays on the CPU)."),
    max_body_mb: int = typer.Option(32, min=1, help="Larger request bodies get HTTP 413 before they are parsed (MiB)."),
    future_tolerance_s: int = typer.Option(86_400, min=0, help="Appended events may be at most this many seconds past the server's clock."),
    table_precision: Literal["fp32", "fp16", "int8"] = typer.Option(
        "fp32", help="The embedding tables at inference: fp32, fp16 or int8 (row-wise scale and offset: about 3x fewer bytes per row)."),
    state_precision: Literal["fp32", "bf16", "int8"] = typer.Option(
        "fp32", help="Cached user states: fp32, bf16 or int8 (per-row scale: about 3.7x less memory per user; scores within 1e-2)."),
    kv_cache_precision: Optional[Literal["fp32", "bf16", "int8", "int4"]] = typer.Option(
        None, help="The encoder layers' keys/values in a cached state (read only when events are appended): fp32, bf16, int8 or "
        "int4 (per head); default: --state-precision. int8 states with an int4 KV cache: about 4.9x less memory per user than fp32."),
    allow_store_mismatch: bool = typer.Option(False, "--allow-store-mismatch", help="Serve a checkpoint with a store whose encodings "
                                              "differ from its training store's (ids may mean other things; experts only)."),
) -> None:
    """Serve the ranking API (POST /rank, POST /events, GET /health, GET /metrics; see docs/serving.md)."""
    from eventrec.serving import RankingService
    from eventrec.serving.http import serve as run_server

    import torch

    from eventrec.store.reader import EventStore

    if threads:
        torch.set_num_threads(threads)
    shared = {}
    if redis_url:
        from eventrec.serving.redis_store import redis_stores

        opened = EventStore.open(store)
        states, events = redis_stores(redis_url, opened, ttl_s=state_ttl or None, max_entry_bytes=max_state_mb << 20, local_bytes=cache_mb << 20)
        shared, store = {"state_store": states, "event_log": events}, opened
    try:
        service = RankingService.load(model, store, max_candidates=max_candidates, user_cache_bytes=cache_mb << 20, precision=precision,
                                      scoring_slots=scoring_slots, scoring_device=scoring_device, future_tolerance_s=future_tolerance_s,
                                      allow_store_mismatch=allow_store_mismatch, table_precision=table_precision,
                                      state_precision=state_precision, kv_cache_precision=kv_cache_precision, **shared)
    except ValueError as error:
        _fail(error)
    where = f"; user state in Redis at {redis_url}" if redis_url else ""
    kv = f" (KV cache {service.kv_cache_precision})" if service.kv_cache_precision != state_precision else ""
    typer.echo(f"model {service.version} ({precision}), tables {table_precision}, states {state_precision}{kv}, scoring on {service.scoring_device}, "
               f"{service.store.num_users:,} users{where}; "
               f"listening on http://{host}:{port}")
    run_server(service, host=host, port=port, max_body_bytes=max_body_mb << 20)


if __name__ == "__main__":
    app()
