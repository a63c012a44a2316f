"""Next-item ranking over the whole catalogue: eventrec's sequence model against RecBole's SASRec.

    .venv/bin/python bench/quality/next_item.py --dataset ml100k
    .venv/bin/python bench/quality/next_item.py --dataset amazon_grocery --test-users 3000

Protocol (``bench/quality/next_item_data.py``): leave-one-out by time per user (last item test,
second-to-last validation). eventrec trains the ad-keyed sequence model as a ranker: every training
position (the 2nd item onwards) is a request whose positive is the item the user took next and whose
negatives are ``--negatives`` items drawn uniformly from the catalogue (a fresh draw per seed; with
``--negative-rounds R`` each training target is written R times with its own draw: R passes over
the targets see R different negative sets); validation requests alike, for early stopping on their AUC (never the
test), or, with ``--select ndcg``, early stopping and model selection on the full-catalogue NDCG@10
of the validation items. The loss is a softmax
over each request's positive and negatives (``--loss request_softmax``, default) or binary
cross-entropy per candidate (``--loss bce``). At test time each user's request
at the target's time ranks **every catalogue item** through the serving core
(``eventrec.serving.RankingService``: the user side once, the keyed pooling and head per item),
and HR@10 / NDCG@10 come from the target's rank (ties pessimistic). The peer's numbers are read
from ``bench/out/quality/<dataset>/sasrec/seed*/result.json`` (``bench/quality/peers/recbole_sasrec.py``).

Writes the ``<dataset>-next-item`` section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench.quality.next_item_data import TEST_USERS_SEED, VALIDATION_USERS_SEED, prepare_next_item, user_sample, work_dir  # noqa: E402
from bench.quality.next_item_variant import option_flags, variant_tag  # noqa: E402
from bench.quality.ranking_metrics import hit_rate_and_ndcg, target_ranks  # noqa: E402
from bench.quality.report import KEPT_NOTE, cell_mean, markdown_table, mean_std, with_kept_rows, write_section  # noqa: E402

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
EVENT_TYPE = {"ml100k": "rating", "amazon_grocery": "purchase"}


def item_table(dataset: str, work: Path) -> pl.DataFrame:
    """Per catalogue item: ``item_id`` and its side attributes (genres and year, or category)."""
    from eventrec.adapters import default_data_dir

    if dataset == "ml100k":
        from eventrec.adapters import ml100k

        side = work / "ml100k_adapter"
        if not (side / "movies.parquet").exists():
            ml100k.prepare(default_data_dir() / "ml-100k", side)
        return pl.read_parquet(side / "movies.parquet").select(pl.col("movie_id").alias("item_id"), "genres", "year")
    meta = pl.read_csv(default_data_dir() / "amazon-grocery" / "item_meta.csv", separator="\t")
    return meta.select("item_id", pl.col("i_category").alias("category"))


def negative_weights(sequences: pl.DataFrame, catalogue: np.ndarray, sampling: str) -> np.ndarray | None:
    """Sampling weights over ``catalogue``: None (uniform), or training counts ** 0.75 (+1 smoothing)."""
    if sampling == "uniform":
        return None
    counts = sequences.filter(pl.col("split") == "train").group_by("item_id").len()
    lookup = dict(zip(counts["item_id"].to_list(), counts["len"].to_list()))
    weights = (np.array([lookup.get(int(i), 0) for i in catalogue], dtype=np.float64) + 1.0) ** 0.75
    return weights / weights.sum()


def history_negatives(sequences: pl.DataFrame, targets: pl.DataFrame, count: int, seed: int) -> pl.DataFrame:
    """``request_id, item_id``: for each target (``targets``: ``request_id, user_id, order, item_id``) up
    to ``count`` of its user's earlier items (strictly earlier in the sequence), drawn at random
    without replacement among them, never the target's own item; fewer when the history is shorter."""
    earlier = (
        targets.select("request_id", "user_id", pl.col("order").alias("_target_order"), pl.col("item_id").alias("_positive"))
        .join(sequences.select("user_id", "order", "item_id"), on="user_id")
        .filter((pl.col("order") < pl.col("_target_order")) & (pl.col("item_id") != pl.col("_positive")))
        .unique(["request_id", "item_id"])
        .sort(["request_id", "item_id"])
    )
    earlier = earlier.with_columns(pl.Series("_key", np.random.default_rng(seed).random(earlier.height)))
    return (earlier.with_columns(pl.col("_key").rank("ordinal").over("request_id").alias("_pick"))
            .filter(pl.col("_pick") <= count).select("request_id", "item_id"))


def write_logs(dataset: str, sequences: pl.DataFrame, items: pl.DataFrame, logs: Path, negatives: int, seed: int,
               sampling: str = "uniform", rounds: int = 1, with_logq: bool = False, history: int = 0) -> None:
    """``events.parquet`` (every interaction) and ``impressions.parquet`` (targets + sampled negatives).

    Negatives are drawn from the catalogue uniformly, or (``sampling="popularity"``) in proportion to
    the items' training counts to the power 0.75: harder negatives, closer to the popular items that
    compete for the top of a full-catalogue ranking. ``rounds``: each training target becomes that
    many requests, each with its own draw of negatives, so that one pass over the data sees every
    positive against ``rounds`` different negative sets (fresh negatives, as ``rounds`` epochs with a
    new draw each would); validation and test targets stay one request each. ``with_logq``: an extra
    column ``log_q`` = log(negatives · q(item)) per row (positives included), q the sampler's
    distribution over the catalogue, for the sampled-softmax correction (``TrainConfig.logq_column``).
    ``history``: each request also gets up to that many of the user's earlier items as negatives
    (:func:`history_negatives`): in a full-catalogue ranking they are candidates like any other, and
    uniform draws almost never show them to the model (with ``with_logq`` they get the sampler's
    ``log_q`` of their item, as if drawn)."""
    if (logs / "impressions.parquet").exists():
        return
    logs.mkdir(parents=True, exist_ok=True)
    extra = [c for c in items.columns if c != "item_id"]
    events = sequences.join(items, on="item_id", how="left").select(
        "user_id", pl.col("event_time").alias("timestamp"), pl.lit(EVENT_TYPE[dataset]).alias("event_type"), "item_id",
        *([pl.col("rating")] if "rating" in sequences.columns else []), *extra,
    )  # fmt: skip
    targets = sequences.filter(pl.col("order") >= 1)
    if rounds > 1:
        copies = pl.when(pl.col("split") == "train").then(rounds).otherwise(1)
        targets = targets.select(pl.all().repeat_by(copies)).explode(pl.all())
    targets = targets.with_row_index("request_id")
    catalogue = np.sort(items["item_id"].to_numpy())
    rng = np.random.default_rng(seed)
    weights = negative_weights(sequences, catalogue, sampling)
    draws = rng.choice(catalogue, size=(targets.height, negatives), p=weights)
    positives = targets["item_id"].to_numpy()
    clash = draws == positives[:, None]
    while clash.any():  # redraw negatives equal to the positive
        draws[clash] = rng.choice(catalogue, size=int(clash.sum()), p=weights)
        clash = draws == positives[:, None]
    base = targets.select("request_id", "user_id", pl.col("event_time").alias("timestamp"), pl.col("split").replace_strict(SPLIT_CODES).alias("split_code"))
    negative_rows = (
        pl.DataFrame({"_r": np.repeat(np.arange(targets.height, dtype=np.int64), negatives), "item_id": draws.reshape(-1)})
        .join(base.with_row_index("_r").with_columns(pl.col("_r").cast(pl.Int64)), on="_r")
        .select(*base.columns, "item_id", pl.lit(0, dtype=pl.Int8).alias("target"))
    )
    if history:
        from_history = history_negatives(sequences, targets, history, seed + 1)
        from_history = from_history.join(base, on="request_id").with_columns(pl.lit(0, dtype=pl.Int8).alias("target"))
        negative_rows = pl.concat([negative_rows, from_history.select(negative_rows.columns)])
    positive_rows = base.with_columns(pl.Series("item_id", positives), pl.lit(1, dtype=pl.Int8).alias("target"))
    rows = pl.concat([positive_rows, negative_rows])
    impressions = rows.join(items, on="item_id", how="left").sort(["request_id", "target"], descending=[False, True])
    if with_logq:
        q = np.full(len(catalogue), 1.0 / len(catalogue)) if weights is None else weights
        log_expected = pl.DataFrame({"item_id": catalogue, "log_q": np.log(negatives * q)})
        impressions = impressions.join(log_expected, on="item_id", how="left")
    events.write_parquet(logs / "events.parquet")
    impressions.write_parquet(logs / "impressions.parquet.tmp")
    (logs / "impressions.parquet.tmp").replace(logs / "impressions.parquet")


def with_exact_item_ids(schema):
    """The schema with its hashed ``item_id`` attributes (events and candidates) made categorical: one
    embedding per item instead of hash buckets that two items may share. The vocabulary (the training
    period's items) holds the whole catalogue here, since every item is drawn as a negative."""
    from eventrec.schema import CategoricalAttribute

    def exact(attributes):
        return [CategoricalAttribute(kind="categorical", name=a.name, column=a.column, vocabulary=a.vocabulary)
                if a.kind == "hashed" and a.name == "item_id" else a for a in attributes]

    streams = [s.model_copy(update={"attributes": exact(s.attributes)}) for s in schema.streams]
    impressions = schema.impressions.model_copy(update={"item_attributes": exact(schema.impressions.item_attributes)})
    changed = schema.model_copy(update={"streams": streams, "impressions": impressions})
    return type(schema).model_validate(changed.model_dump())  # the schema's own checks, on the new attributes


def leave_one_out_store(store) -> None:
    """Replace the store's time split (in memory) by the leave-one-out split of ``split_code``."""
    store.splits = store.extras["split_code"].astype(np.int8)


def full_catalogue_ranks(service, sequences: pl.DataFrame, items: pl.DataFrame, users: np.ndarray, split: str = "test") -> np.ndarray:
    """Pessimistic 1-based rank of each user's ``split`` item (test or validation) among all catalogue
    items ``[U]``, ranked by ``service`` (a ``RankingService``) at the item's time."""
    targets = sequences.filter(pl.col("split") == split).select("user_id", "item_id", "event_time")
    targets = targets.filter(pl.col("user_id").is_in(users.tolist())).sort("user_id")
    catalogue = items.sort("item_id")
    index = {item: i for i, item in enumerate(catalogue["item_id"].to_list())}
    ranks = np.empty(targets.height, dtype=np.int64)
    for row, (user, item, when) in enumerate(targets.iter_rows()):
        scores = service.rank(user, catalogue, timestamp=int(when)).scores[:, 0].astype(np.float64)
        ranks[row] = target_ranks(scores[None, :], np.array([index[item]]))[0]
    return ranks


def validation_ndcg(store, sequences: pl.DataFrame, items: pl.DataFrame, users: np.ndarray):
    """A ``validation_score`` for ``train()``: full-catalogue NDCG@10 (the score) and HR@10 of the
    validation items of ``users``, ranked like the test (the test split is never read)."""
    from eventrec.serving import RankingService

    calls = itertools.count()

    def score(model) -> dict[str, float]:
        service = RankingService(model, store, f"validation-{next(calls)}", max_candidates=max(10_000, items.height))
        hr, ndcg = hit_rate_and_ndcg(full_catalogue_ranks(service, sequences, items, users, "validation"), 10)
        return {"score": ndcg, "ndcg@10": ndcg, "hr@10": hr}

    return score


def popularity_rule(sequences: pl.DataFrame, items: pl.DataFrame, users: np.ndarray) -> tuple[float, float]:
    """HR@10 and NDCG@10 of ranking the catalogue by training count (ties pessimistic)."""
    counts = sequences.filter(pl.col("split") == "train").group_by("item_id").len()
    catalogue = items.select("item_id").join(counts, on="item_id", how="left").fill_null(0)
    count_of = dict(zip(catalogue["item_id"].to_list(), catalogue["len"].to_list()))
    all_counts = catalogue["len"].to_numpy()
    test = sequences.filter((pl.col("split") == "test") & pl.col("user_id").is_in(users.tolist()))
    ranks = np.array([int((all_counts >= count_of.get(item, 0)).sum()) for item in test["item_id"].to_list()])
    return hit_rate_and_ndcg(ranks, 10)


def sasrec_ranks(seed_dir: Path, users: np.ndarray) -> np.ndarray:
    """SASRec's saved test rank of each of ``users``, in their order ``[U]``; raises if any is missing."""
    rank_of = dict(zip(np.load(seed_dir / "test_users.npy").astype(str).tolist(), np.load(seed_dir / "test_ranks.npy").tolist()))
    found = [rank_of.get(str(u)) for u in users.tolist()]
    missing = sum(r is None for r in found)
    if missing:
        raise RuntimeError(f"{seed_dir}: SASRec ranked {len(users) - missing} of the {len(users)} test users")
    return np.array(found, dtype=np.int64)


def sasrec_on_users(sasrec_dir: Path, users: np.ndarray) -> dict[str, list[float]]:
    """SASRec's HR@10 / NDCG@10 per seed over ``users``, from its saved per-user test ranks."""
    out: dict[str, list[float]] = {}
    for seed_dir in sorted(sasrec_dir.glob("seed*")):
        if not (seed_dir / "test_ranks.npy").exists():
            continue
        hr, ndcg = hit_rate_and_ndcg(sasrec_ranks(seed_dir, users), 10)
        out.setdefault("hr@10", []).append(hr)
        out.setdefault("ndcg@10", []).append(ndcg)
    return out


def run_seed_processes(dataset: str, seeds: list[int], jobs: int) -> None:
    """Train ``seeds`` in worker processes, ``jobs`` at a time: this script with the same arguments,
    one seed each (``--train-seeds S --jobs 1 --no-report``; the last occurrence of an option wins).
    Raises if a worker fails; a finished seed is skipped by the workers of a later run."""
    import subprocess

    base = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    pending = list(seeds)
    running: dict[int, subprocess.Popen] = {}
    failed: list[str] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                running[seed] = subprocess.Popen([*base, "--train-seeds", str(seed), "--jobs", "1", "--no-report"])
            for seed, process in list(running.items()):
                if process.poll() is not None:
                    del running[seed]
                    if process.returncode != 0:
                        failed.append(f"seed {seed} (exit status {process.returncode})")
            time.sleep(0.5)
    finally:  # interrupted: stop the workers too (each resumes from its last checkpoint when run again)
        for process in running.values():
            process.terminate()
    if failed:
        raise RuntimeError(f"{dataset}: training failed for " + ", ".join(failed))


def data_dirs(work: Path, args: argparse.Namespace, seed: int) -> tuple[Path, Path]:
    """The logs and the store a seed of this run trains on: ``logs_n32_uniform_seed0`` (+ ``_r2``,
    ``_logq``, ``_h8``), and its store (+ ``_exact`` with exact item ids; the same raw rows either way)."""
    name = f"n{args.negatives}_{args.sampling}_seed{seed}" + (f"_r{args.negative_rounds}" if args.negative_rounds > 1 else "") \
        + ("_logq" if args.logq else "") + (f"_h{args.history_negatives}" if args.history_negatives else "")
    return work / f"logs_{name}", work / (f"store_{name}" + ("_exact" if args.item_ids == "exact" else ""))


def argument_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["ml100k", "amazon_grocery"], default="ml100k")
    parser.add_argument("--ties", choices=["row", "shuffled"], default="row",
                        help="order of same-time interactions: file row, or one seeded shuffle shared by every model "
                             "(bench/quality/next_item_data.leave_one_out; its own output folder, <dataset>-ties-shuffled)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-seeds", type=int, nargs="*", default=None,
                        help="train only these of the seeds in this process (others may run in parallel); the table reports every finished seed")
    parser.add_argument("--negatives", type=int, default=8, help="sampled negatives per training / validation target")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--loss", choices=["request_softmax", "bce"], default="request_softmax",
                        help="softmax over each request's positive and negatives (listwise), or binary cross-entropy")
    parser.add_argument("--sampling", choices=["uniform", "popularity"], default="uniform", help="how negatives are drawn")
    parser.add_argument("--logq", action="store_true",
                        help="subtract log(negatives · q(item)) from every row's logit inside the training softmax (the sampled-softmax "
                        "correction for the sampler q; with --sampling popularity the loss then estimates a full-catalogue softmax)")
    parser.add_argument("--test-users", type=int, default=0, help="rank for this many users drawn at random (0 = all)")
    parser.add_argument("--select", choices=["auc", "ndcg"], default="auc",
                        help="model selection and early stopping: AUC of the sampled validation requests, or full-catalogue "
                             "NDCG@10 of the validation items (as SASRec's selection)")
    parser.add_argument("--validation-users", type=int, default=0, help="with --select ndcg: users whose validation item is ranked (0 = all)")
    parser.add_argument("--in-batch-weight", type=float, default=0.0,
                        help="build the model with dot_term and add this weight times its softmax against every item of the batch")
    parser.add_argument("--catalogue-weight", type=float, default=0.0,
                        help="build the model with dot_term and add this weight times its full softmax over the whole catalogue "
                             "(TrainConfig.catalogue_weight: SASRec's loss, on the dot term)")
    parser.add_argument("--catalogue-logit-weight", type=float, default=0.0,
                        help="TrainConfig.catalogue_logit_weight: the whole logit's full-catalogue softmax, sampled from the dot term (0 = off)")
    parser.add_argument("--catalogue-logit-draws", type=int, default=32, help="TrainConfig.catalogue_logit_draws: items drawn per positive")
    parser.add_argument("--item-ids", choices=["exact", "hashed"], default="exact",
                        help="item ids as a vocabulary (one embedding per item), or hashed into the schema's 100,003 buckets "
                             "(about 9%% of Amazon's items then share a bucket; the runs before 2026-11-29's fifth session)")
    parser.add_argument("--attribute-dim", type=int, default=None,
                        help="SequenceModelConfig.attribute_dim: the size of each attribute embedding, item ids included (default: the config's)")
    parser.add_argument("--identity-match", action="store_true",
                        help="SequenceModelConfig(identity_match=True): identity codes in the target attention, a sharp 'this very item' signal")
    parser.add_argument("--transition-match", action="store_true",
                        help="SequenceModelConfig.transition_match: a directed item-to-item channel in the target attention ('from' "
                             "embeddings of the events against 'to' embeddings of the candidate)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="SequenceModelConfig.dropout: on the event embeddings and each encoder sublayer's output (default: the config's, 0)")
    parser.add_argument("--cross-rank", type=int, default=None,
                        help="SequenceModelConfig.cross_rank: low-rank cross layers in the head (default: full rank; bench/cross_rank.py times them)")
    parser.add_argument("--weight-average", type=float, default=0.0,
                        help="TrainConfig.weight_average_decay: validate, select and rank with an exponential moving average of the "
                             "weights with this decay per step (0 = off)")
    parser.add_argument("--batch-size", type=int, default=1024, help="impressions per training batch (requests are kept whole)")
    parser.add_argument("--learning-rate", type=float, default=None, help="TrainConfig.learning_rate (default: the config's, 2e-3)")
    parser.add_argument("--history-negatives", type=int, default=0,
                        help="each request also gets up to this many of the user's earlier items as negatives (see write_logs)")
    parser.add_argument("--negative-rounds", type=int, default=1,
                        help="fresh negatives: each training target is written as this many requests with their own negatives; "
                        "--epochs stays the number of passes over the targets (the trainer runs epochs / rounds passes over the requests)")
    parser.add_argument("--patience", type=int, default=2, help="validations without improvement before stopping")
    parser.add_argument("--validations-per-epoch", type=int, default=2,
                        help="validations per pass over the training targets (each ranks the validation users' items against the whole catalogue with --select ndcg)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train this many seeds at once, each in its own process with --threads threads (on 2 cores, "
                             "3 one-thread processes finish 3 seeds sooner than one two-thread process: small ops scale poorly)")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # set on --jobs' worker processes
    return parser


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    started = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import load_schema
    from eventrec.serving import RankingService
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.training.trainer import TrainConfig, train

    work = work_dir(ROOT / "bench" / "out" / "quality", args.dataset, args.ties)
    sequences, stats = prepare_next_item(args.dataset, work, args.ties)
    items = item_table(args.dataset, work)
    all_users = np.sort(sequences["user_id"].unique().to_numpy())
    users = user_sample(all_users, args.test_users, TEST_USERS_SEED)
    schema = load_schema(ROOT / "bench" / "quality" / "schemas" / f"{args.dataset}_next_item.yaml")
    if args.item_ids == "exact":
        schema = with_exact_item_ids(schema)
    if args.logq:
        if args.loss != "request_softmax":
            parser.error("--logq: corrects the request softmax; use --loss request_softmax")
        impressions = schema.impressions.model_copy(update={"extra_columns": [*schema.impressions.extra_columns, "log_q"]})
        schema = schema.model_copy(update={"impressions": impressions})
    overrides = {k: v for k, v in (("attribute_dim", args.attribute_dim), ("dropout", args.dropout), ("cross_rank", args.cross_rank)) if v is not None}
    if args.transition_match:
        overrides["transition_match"] = True
    if args.identity_match:
        overrides["identity_match"] = True
    try:
        config = SequenceModelConfig(dot_term=bool(args.in_batch_weight or args.catalogue_weight or args.catalogue_logit_weight), **overrides)
    except ValueError as error:
        parser.error(f"--attribute-dim / --dropout / --cross-rank: {error}")
    variant = variant_tag(args, parser)
    if args.batch_size < 1 or (args.learning_rate is not None and not args.learning_rate > 0):
        parser.error(f"--batch-size must be >= 1 and --learning-rate > 0, got {args.batch_size} and {args.learning_rate}")
    if args.negative_rounds < 1 or args.epochs % args.negative_rounds:
        parser.error(f"--negative-rounds: must be >= 1 and divide --epochs ({args.epochs}), got {args.negative_rounds}")
    if not 0 <= args.weight_average < 1:
        parser.error(f"--weight-average: a decay in [0, 1) (0 = off), got {args.weight_average}")
    if args.catalogue_logit_weight < 0 or args.catalogue_logit_draws < 1:
        parser.error(f"--catalogue-logit-weight must be >= 0 and --catalogue-logit-draws >= 1, got {args.catalogue_logit_weight} and {args.catalogue_logit_draws}")
    if args.history_negatives < 0:
        parser.error(f"--history-negatives: must be >= 0, got {args.history_negatives}")
    if args.jobs < 1 or args.validations_per_epoch < 1:
        parser.error(f"--jobs and --validations-per-epoch: must be >= 1, got {args.jobs} and {args.validations_per_epoch}")
    seeds = list(range(args.seeds)) if args.train_seeds is None else args.train_seeds

    def done_file(seed: int) -> Path:  # one per test-user sample (train() writes result.json)
        return work / f"eventrec_{variant}" / f"seed{seed}" / f"ranking_{len(users)}users.json"

    trained = [seed for seed in seeds if not done_file(seed).exists()]
    if args.jobs > 1:
        run_seed_processes(args.dataset, trained, args.jobs)
    validation_users = user_sample(all_users, args.validation_users, VALIDATION_USERS_SEED)
    for seed in trained if args.jobs == 1 else []:
        run_dir = work / f"eventrec_{variant}" / f"seed{seed}"
        done = done_file(seed)
        if done.exists():
            continue
        earlier = [json.loads(p.read_text()) for p in run_dir.glob("ranking_*users.json")]
        logs, store_dir = data_dirs(work, args, seed)
        write_logs(args.dataset, sequences, items, logs, args.negatives, seed, args.sampling, args.negative_rounds, args.logq, args.history_negatives)
        if not (store_dir / "manifest.json").exists():
            build_store(schema, logs, store_dir)
        store = EventStore.open(store_dir)
        leave_one_out_store(store)
        rounds = args.negative_rounds  # one trainer epoch over the requests = `rounds` passes over the targets
        train_config = TrainConfig(epochs=args.epochs // rounds, batch_size=args.batch_size, validations_per_epoch=args.validations_per_epoch * rounds,
                                   patience=args.patience, calibrate=False, seed=seed, impression_validation=args.select != "ndcg",  # the sampled pass selects nothing then
                                   **({"learning_rate": args.learning_rate} if args.learning_rate is not None else {}),
                                   loss=args.loss, stop_on="auc" if args.select == "auc" else "score",
                                   in_batch_weight=args.in_batch_weight, catalogue_weight=args.catalogue_weight,
                                   catalogue_logit_weight=args.catalogue_logit_weight, catalogue_logit_draws=args.catalogue_logit_draws, logq_column="log_q" if args.logq else None,
                                   weight_average_decay=args.weight_average)
        selection = validation_ndcg(store, sequences, items, validation_users) if args.select == "ndcg" else None
        t0 = time.perf_counter()
        _, result = train(store, config, train_config, run_dir, show_progress=False, validation_score=selection)
        train_seconds = time.perf_counter() - t0
        if earlier:  # training had finished in an earlier run (this one only resumed it): keep its time
            train_seconds = max([train_seconds] + [r["train_seconds"] for r in earlier])
        t0 = time.perf_counter()
        service = RankingService.load(run_dir / "best", store, max_candidates=max(10_000, items.height))
        ranks = full_catalogue_ranks(service, sequences, items, users)
        rank_seconds = time.perf_counter() - t0
        np.save(run_dir / f"test_ranks_{len(users)}users.npy", ranks, allow_pickle=False)
        hr, ndcg = hit_rate_and_ndcg(ranks, 10)
        record = {"seed": seed, "hr@10": hr, "ndcg@10": ndcg, "users": len(ranks), "train_seconds": train_seconds,
                  "rank_seconds": rank_seconds, "steps": result.steps, "best_validation": result.best_validation}
        done.write_text(json.dumps(record, indent=1, default=float) + "\n")
        print(record, flush=True)

    if args.no_report:
        return
    rows: dict[str, dict[str, list[float]]] = {}
    for variant_dir in sorted(work.glob("eventrec_*")):  # every variant run so far, this one included
        found = [json.loads(p.read_text()) for p in sorted(variant_dir.glob(f"seed*/ranking_{len(users)}users.json"))]
        if found:
            rows[f"eventrec sequence model ({variant_dir.name.removeprefix('eventrec_').replace('-', ', ')})"] = {
                "hr@10": [r["hr@10"] for r in found], "ndcg@10": [r["ndcg@10"] for r in found],
                "train s": [r["train_seconds"] for r in found], "rank s": [r["rank_seconds"] for r in found]}
    this = f"eventrec sequence model ({variant.replace('-', ', ')})"
    rows["rule: most popular in training (same list for everyone)"] = dict(zip(("hr@10", "ndcg@10"), map(lambda v: [v], popularity_rule(sequences, items, users))))
    section = f"{args.dataset}-next-item" + (f"-{len(users)}-users" if args.test_users else "") + ("" if args.ties == "row" else f"-ties-{args.ties}")
    peers = []  # one row per SASRec run directory (sasrec, sasrec_60min, ...), named by how its training ended
    for sasrec_dir in sorted(work.glob("sasrec*")):
        peer = sasrec_on_users(sasrec_dir, users)
        if peer:
            runs = [json.loads(p.read_text()) for p in sorted(sasrec_dir.glob("seed*/result.json"))]
            how = "; ".join(sorted({f"{r['epochs_trained']} epochs, best {r['best_epoch']}, {r['stop_reason']}" for r in runs}))
            name = f"RecBole SASRec ({how})"
            rows[name] = peer
            peers.append(name)
    lines = [f"## {args.dataset}: next item, full-catalogue ranking" + (f" ({len(users):,} sampled test users)" if args.test_users else "")
             + ("" if args.ties == "row" else f", ties {args.ties}"), "",
             f"Command (row \"{this}\"): `.venv/bin/python bench/quality/next_item.py --dataset {args.dataset}" + ("" if args.ties == "row" else f" --ties {args.ties}") + f" --seeds {args.seeds} --negatives {args.negatives} --epochs {args.epochs} --loss {args.loss} --sampling {args.sampling}"
             + (f" --test-users {args.test_users}" if args.test_users else "")
             + (f" --select {args.select} --patience {args.patience}" if args.select != "auc" else "")
             + (f" --validation-users {args.validation_users}" if args.select != "auc" and args.validation_users else "")
             + option_flags(args, parser)
             + (f" --jobs {args.jobs} --threads {args.threads}" if args.jobs > 1 else "") + "`. "
             f"{stats['users']:,} users, {stats['interactions']:,} interactions, {stats['catalogue']:,} items with interactions, {items.height:,} ranked (every item of the item file); "
             f"test users ranked: {len(users):,}. This invocation took {time.perf_counter() - started:,.0f} s of wall time "
             f"(seeds trained by it: {len(trained)}; train s and rank s below are per seed, in its own process).", "",
             markdown_table(rows, ["hr@10", "ndcg@10", "train s", "rank s"], {"hr@10": "HR@10", "ndcg@10": "NDCG@10"}, {"train s": 0, "rank s": 0})]
    lines[-1], earlier = with_kept_rows(section, lines[-1], set(rows))  # rows whose run folders are not here (a fresh checkout)
    if earlier:
        lines[2] += KEPT_NOTE
        peers += [name for name in earlier if name.startswith("RecBole SASRec")]
    means = {name: (mean_std(v["hr@10"])[0], mean_std(v["ndcg@10"])[0]) for name, v in rows.items()}
    means |= {name: (cell_mean(cells[1]), cell_mean(cells[2])) for name, cells in earlier.items()}  # cells: seeds, HR@10, NDCG@10, ...
    if peers:  # ratios against the strongest SASRec run
        strongest = max(peers, key=lambda name: (means[name][0], name.endswith("epochs)") and "early stopping:" in name))  # ties: the early-stopped run
        lines += ["", f"Ratios against the strongest SASRec row, {strongest}:"]
        for name, (hr, ndcg) in means.items():
            if name not in peers:
                lines.append(f"- {name} / SASRec: HR@10 {hr / means[strongest][0]:.2f}×, NDCG@10 {ndcg / means[strongest][1]:.2f}× (goal ≥ 1.15×)")
    write_section(section, "\n".join(lines))
    print("\n".join(lines))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
