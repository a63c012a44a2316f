"""Quality benchmark: the sequence model against the DLRM baselines and the rules on one dataset, several seeds.

    .venv/bin/python bench/compare_models.py --dataset trivago --seeds 3
    .venv/bin/python bench/compare_models.py --dataset synthetic --users 50000 --seeds 3
    .venv/bin/python bench/compare_models.py --dataset synthetic_long --stream '*={"max_length": 1024}' \
        --max-steps-per-epoch 40 --validations 1 --workdir bench/out/long22_max1024     # the long-history world

Prepares the dataset (real ones through their adapter, from ../shared/data), builds the store,
trains every model of ``COMPARED_MODELS`` (the sequence model, the engineered DLRM, the id-bag
DLRM) per seed with the same loop (validation split for early stopping, never test),
and prints the test table (mean ± std over seeds) with the gain rule and the best rule baseline
(chosen on validation), and writes it with the plots
under the work directory. Finished runs are reused if the script is killed and started again (or run again with another
``--variant``: only the new model trains). ``--runs-from DIR`` reads DIR's store and copies its finished runs of the
``--models`` into this work directory, so that sequence variants trained with other settings (``--learning-rate``,
``--batch-size``) sit beside the same baseline runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample_options(dataset: str, users: int | None, parser: argparse.ArgumentParser) -> dict:
    """The adapter options for a real dataset: ``{"max_users": N}`` where its adapter samples users
    (``--users``, else the adapter's default), ``{}`` where it does not (``--users`` refused there)."""
    import inspect

    from eventrec.adapters import ADAPTERS

    parameter = inspect.signature(ADAPTERS[dataset][0]).parameters.get("max_users")
    if parameter is None:
        if users is not None:
            parser.error(f"--users: {dataset} is not a sampled dataset (its adapter takes no max_users)")
        return {}
    if users is not None and users < 1:
        parser.error(f"--users must be at least 1, got {users}")
    return {"max_users": parameter.default if users is None else users}


def schema_with_streams(path: Path, overrides: list[str]):
    """The schema at ``path`` with the ``--stream NAME=JSON`` overrides applied in order (``NAME`` a
    stream, or ``*`` for every one); validated as a schema file is, errors naming the override."""
    import yaml

    from eventrec.schema import SchemaError, parse_schema

    data = yaml.safe_load(Path(path).read_text())
    for text in overrides:
        name, _, section = text.partition("=")
        try:
            fields = json.loads(section)
        except json.JSONDecodeError as error:
            raise SchemaError(f"--stream {text!r}: not JSON: {error}") from None
        if not isinstance(fields, dict) or "name" in fields:
            raise SchemaError(f"--stream {text!r}: expected a JSON object of stream fields other than 'name'")
        streams = [stream for stream in data.get("streams", []) if name in ("*", stream.get("name"))]
        if not streams:
            raise SchemaError(f"--stream {text!r}: no stream {name!r} in {path}; streams: {[st.get('name') for st in data.get('streams', [])]}")
        for stream in streams:
            stream.update(fields)
    return parse_schema(data, f"{path} with --stream {' '.join(overrides)}" if overrides else path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="trivago",
                        help="synthetic | synthetic_long (the long-history preset) | any adapter of eventrec.adapters (trivago, ml100k, amazon_grocery, their small tasks)")
    parser.add_argument("--users", type=int, default=None,
                        help="synthetic world size (default 50,000; synthetic_long: 1,000), or the user sample of the sampled real "
                             "datasets (amazon_grocery_conversion, trivago_lists_small, trivago_views: their adapter's max_users, "
                             "default 1,000; a learning curve over sample sizes, each in its own --workdir)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="synthetic_long: an already generated long world to read (default WORKDIR/logs, generated there)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate of every model (default: TrainConfig's)")
    parser.add_argument("--validations", type=int, default=4, help="validations per epoch (early stopping reads them)")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None,
                        help="train on this many batches per epoch (a random subsample of the training impressions; "
                             "the long world's 121k training impressions with histories of thousands of events do not fit a CPU session)")
    parser.add_argument("--user-batches", action="store_true",
                        help="train, validate and test the sequence models on impressions grouped by user (experimental.user_batches: "
                             "each user's history encoded once per batch; needs candidate_search and histories within max_length)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs-from", type=Path, default=None, metavar="DIR",
                        help="an earlier comparison's work directory: read its store, and copy its finished runs of the --models "
                             "(not the --variant models; same model config) into this one's runs/ instead of training them again (they keep the "
                             "training settings they ran with, e.g. the DLRM at the default learning rate beside a sequence "
                             "model trained here with --learning-rate)")
    parser.add_argument("--schema", type=Path, default=None,
                        help="a schema file to build the store with instead of the dataset's built-in one (use its own --workdir)")
    parser.add_argument("--stream", action="append", default=[], metavar="NAME=JSON",
                        help='fields of stream NAME ("*": every stream) to replace in that schema, e.g. rating=\'{"max_length": 64}\' '
                             "(history budgets and sampling policies; repeatable, applied in order; use its own --workdir)")
    parser.add_argument("--models", nargs="+", default=None, help="named models to train (default: sequence dlrm dlrm_id_bags)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help='another model to train beside them: its name and its model section as JSON, a sequence model '
                             'unless it says "kind": "dlrm", e.g. count=\'{"experimental": {"match_count": true}}\' (repeatable)')
    args = parser.parse_args()

    import polars as pl
    import torch

    torch.set_num_threads(args.threads)

    from eventrec.adapters import ADAPTERS, prepare_dataset
    from eventrec.evaluation.experiment import format_table, run_comparison, summarize
    from eventrec.evaluation.plots import write_plots
    from eventrec.evaluation.rules import rule_metrics
    from eventrec.schema import SchemaError, builtin_schema_path
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.training.factory import COMPARED_MODELS, default_config
    from eventrec.training.trainer import TrainConfig

    try:  # every model config checked before any data is prepared
        models = {name: default_config(name) for name in (args.models or COMPARED_MODELS)}
    except ValueError as error:
        parser.error(f"--models: {error}")
    for text in args.variant:
        name, _, section = text.partition("=")
        try:
            if not name or name in models:
                raise ValueError(f"the name {name!r} is empty or already taken")
            overrides = json.loads(section)
            models[name] = default_config(overrides.pop("kind", "sequence"), overrides)
        except ValueError as error:  # bad JSON (JSONDecodeError) or a config pydantic refuses
            parser.error(f"--variant {text!r}: {error}")
    workdir = args.workdir or ROOT / "bench" / "out" / f"compare_{args.dataset}"
    logs, store_dir = workdir / "logs", (args.runs_from or workdir) / "store"
    if args.runs_from is not None and args.stream:
        parser.error("--stream builds a store of its own: not with --runs-from (whose store is read)")
    if args.runs_from is not None and not (store_dir / "manifest.json").exists():  # checked before anything is prepared
        parser.error(f"--runs-from {args.runs_from}: no store there ({store_dir}/manifest.json)")
    if args.dataset not in ("synthetic", "synthetic_long", *ADAPTERS):
        parser.error(f"--dataset {args.dataset!r}: expected synthetic, synthetic_long or one of {sorted(ADAPTERS)}")
    schema_name = args.dataset if args.dataset in ("synthetic", "synthetic_long") else ADAPTERS[args.dataset][1]
    options = {} if schema_name.startswith("synthetic") else sample_options(args.dataset, args.users, parser)
    try:  # checked before anything is prepared
        schema = schema_with_streams(args.schema or builtin_schema_path(schema_name), args.stream)
    except SchemaError as error:
        parser.error(str(error))
    started = time.perf_counter()
    candidates = None
    if args.dataset == "synthetic":
        from eventrec.synthetic import generate_world

        if not (logs / "world.json").exists():
            generate_world(logs, num_users=args.users or 50_000, seed=0)
        candidates = pl.read_parquet(logs / "candidates.parquet")
    elif args.dataset == "synthetic_long":  # no offline A/B over candidates: test AUC only
        from eventrec.synthetic import generate_world

        logs = args.logs or logs
        if not (logs / "world.json").exists():
            generate_world(logs, num_users=args.users or 1_000, seed=0, preset="long")
    else:
        if not (logs / "impressions.parquet").exists():
            prepare_dataset(args.dataset, logs, **options)
        elif options and json.loads((logs / "summary.json").read_text()).get("max_users") != options["max_users"]:
            parser.error(f"--users {options['max_users']}: {logs} holds another user sample (see its summary.json); use another --workdir")
    if not (store_dir / "manifest.json").exists():
        build_store(schema, logs, store_dir)
    store = EventStore.open(store_dir)
    if (args.schema or args.stream) and store.schema != schema:
        parser.error(f"{store_dir} was built with another schema than --schema/--stream give; use another --workdir (nothing was deleted)")
    rate = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, validations_per_epoch=args.validations, patience=2, **rate,
                               max_steps_per_epoch=args.max_steps_per_epoch, experimental={"user_batches": True} if args.user_batches else None)
    if args.runs_from is not None:
        named = args.models or list(COMPARED_MODELS)  # not the --variant models: those train here
        copy_finished_runs(args.runs_from / "runs", workdir / "runs", [f"{name}_seed{seed}" for name in named for seed in range(args.seeds)])
    runs = run_comparison(store, models, train_config, list(range(args.seeds)), workdir / "runs", candidates=candidates, top_k=3)
    rules = {split: rule_metrics(store, split) for split in ("validation", "test")}
    table = format_table(summarize(runs), baseline=list(COMPARED_MODELS)[1:], rules=rules)
    plots = write_plots(store, workdir / "runs", runs)
    seconds = {name: sum(r.seconds for r in runs if r.model == name) for name in models}
    footer = "\n\ntraining seconds (all seeds): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
    (workdir / "report.md").write_text(f"# {args.dataset}: sequence model vs DLRM\n\n{table}{footer}\n")
    print(table + footer)
    print(f"report {workdir / 'report.md'}, plots {', '.join(p.name for p in plots)}; {time.perf_counter() - started:.0f}s")


def copy_finished_runs(source: Path, target: Path, names: list[str]) -> None:
    """Copy each finished run (``run.json`` written) named ``names`` from ``source`` to ``target`` where
    ``target`` has none yet; run_comparison then reads it back (and refuses it if its config differs)."""
    import shutil

    for name in names:
        if (source / name / "run.json").exists() and not (target / name).exists():
            target.mkdir(parents=True, exist_ok=True)
            partial = target / f".{name}.copying"
            if partial.exists():  # this function's own copy, left by a killed run
                shutil.rmtree(partial)
            shutil.copytree(source / name, partial)
            partial.rename(target / name)
            print(f"reused {source / name}")


if __name__ == "__main__":
    main()
