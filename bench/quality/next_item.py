"""Next-item ranking over the whole catalogue (MovieLens-100K, Amazon grocery): one seed of a variant.

    .venv/bin/python -m bench.quality.run bench/quality/variants/ml100k --jobs 3
    .venv/bin/python -m bench.quality.run bench/quality/variants/amazon_grocery --jobs 3

Protocol (``bench/quality/next_item_data.py``): leave-one-out by time per user (last item test,
second-to-last validation). eventrec trains the ad-keyed sequence model as a ranker: every training
position (the 2nd item onwards) is a request whose positive is the item the user took next and whose
negatives are ``protocol.negatives`` items drawn from the catalogue (a fresh draw per seed; with
``protocol.negative_rounds`` R each training target is written R times with its own draw);
validation requests alike, for early stopping on their AUC (never the test), or, with ``protocol.select:
ndcg``, early stopping and model selection on the full-catalogue NDCG@10 of the validation items.
At test time each user's request at the target's time ranks **every catalogue item** through the
serving core (``eventrec.serving.RankingService``), and HR@10 / NDCG@10 come from the target's rank
(ties pessimistic). Runs live in ``bench/out/quality/<dataset>[-ties-shuffled]/runs/<run id>/seed<k>/``.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from bench.quality.next_item_data import TEST_USERS_SEED, VALIDATION_USERS_SEED, prepare_next_item, user_sample, work_dir
from bench.quality.ranking_metrics import hit_rate_and_ndcg, target_ranks
from bench.quality.variant import NextItemProtocol, NextItemVariant

ROOT = Path(__file__).resolve().parents[2]

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
               sampling: str = "uniform", rounds: int = 1, history: int = 0) -> None:
    """``events.parquet`` (every interaction) and ``impressions.parquet`` (targets + sampled negatives).

    Negatives are drawn from the catalogue uniformly, or (``sampling="popularity"``) in proportion to
    the items' training counts to the power 0.75: harder negatives, closer to the popular items that
    compete for the top of a full-catalogue ranking. ``rounds``: each training target becomes that
    many requests, each with its own draw of negatives, so that one pass over the data sees every
    positive against ``rounds`` different negative sets (fresh negatives, as ``rounds`` epochs with a
    new draw each would); validation and test targets stay one request each. ``history``: each
    request also gets up to that many of the user's earlier items as negatives
    (:func:`history_negatives`): in a full-catalogue ranking they are candidates like any other, and
    uniform draws almost never show them to the model."""
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


def data_dirs(work: Path, protocol: NextItemProtocol, seed: int) -> tuple[Path, Path]:
    """The logs and the store a seed trains on: ``logs_n32_uniform_seed0`` (+ ``_r2``, ``_h8``), and
    its store (+ ``_exact`` with exact item ids; the same raw rows either way)."""
    p = protocol
    name = f"n{p.negatives}_{p.sampling}_seed{seed}" + (f"_r{p.negative_rounds}" if p.negative_rounds > 1 else "") \
        + (f"_h{p.history_negatives}" if p.history_negatives else "")
    return work / f"logs_{name}", work / (f"store_{name}" + ("_exact" if p.item_ids == "exact" else ""))


@dataclass(frozen=True)
class Benchmark:
    """What every variant of one dataset and tie rule shares: the sequences, items and user draws."""

    dataset: str
    work: Path
    sequences: pl.DataFrame
    stats: dict
    items: pl.DataFrame
    all_users: np.ndarray

    def users(self, count: int, seed: int = TEST_USERS_SEED) -> np.ndarray:
        return user_sample(self.all_users, count, seed)

    def run_dir(self, variant: NextItemVariant, seed: int) -> Path:
        return self.work / "runs" / variant.run_id / f"seed{seed}"

    def done_file(self, variant: NextItemVariant, seed: int) -> Path:  # one per test-user sample (train() writes result.json)
        return self.run_dir(variant, seed) / f"ranking_{len(self.users(variant.protocol.test_users))}users.json"


@lru_cache(maxsize=4)
def benchmark(dataset: str, ties: str) -> Benchmark:
    """The shared data of ``dataset`` with tie rule ``ties`` (written once under ``bench/out/quality``)."""
    work = work_dir(ROOT / "bench" / "out" / "quality", dataset, ties)
    sequences, stats = prepare_next_item(dataset, work, ties)
    return Benchmark(dataset, work, sequences, stats, item_table(dataset, work), np.sort(sequences["user_id"].unique().to_numpy()))


def prepare(variant: NextItemVariant) -> None:
    """Everything the seeds share (sequences, item table), written before any worker starts."""
    benchmark(variant.dataset, variant.protocol.ties)


def variant_schema(variant: NextItemVariant):
    """The dataset's next-item schema with the protocol's item ids."""
    from eventrec.schema import load_schema

    schema = load_schema(ROOT / "bench" / "quality" / "schemas" / f"{variant.dataset}_next_item.yaml")
    if variant.protocol.item_ids == "exact":
        schema = with_exact_item_ids(schema)
    return schema


def train_seed(variant: NextItemVariant, seed: int) -> None:
    """Train one seed of ``variant`` and rank its test users' items against the whole catalogue
    (skipped when done): ``runs/<run id>/seed<seed>/ranking_<N>users.json`` and ``test_ranks_<N>users.npy``."""
    from eventrec.serving import RankingService
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from eventrec.training.trainer import train

    bench = benchmark(variant.dataset, variant.protocol.ties)
    run_dir, done, p = bench.run_dir(variant, seed), bench.done_file(variant, seed), variant.protocol
    if done.exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir.parent / "variant.json").write_text(json.dumps(variant.resolved(), indent=1) + "\n")
    earlier = [json.loads(f.read_text()) for f in run_dir.glob("ranking_*users.json")]
    logs, store_dir = data_dirs(bench.work, p, seed)
    write_logs(variant.dataset, bench.sequences, bench.items, logs, p.negatives, seed, p.sampling, p.negative_rounds, p.history_negatives)
    if not (store_dir / "manifest.json").exists():
        build_store(variant_schema(variant), logs, store_dir)
    store = EventStore.open(store_dir)
    leave_one_out_store(store)
    selection = validation_ndcg(store, bench.sequences, bench.items, bench.users(p.validation_users, VALIDATION_USERS_SEED)) if p.select == "ndcg" else None
    started = time.perf_counter()
    _, result = train(store, variant.model, variant.train_config(seed), run_dir, show_progress=False, validation_score=selection)
    train_seconds = time.perf_counter() - started
    if earlier:  # training had finished in an earlier run (this one only resumed it): keep its time
        train_seconds = max([train_seconds] + [r["train_seconds"] for r in earlier])
    started = time.perf_counter()
    service = RankingService.load(run_dir / "best", store, max_candidates=max(10_000, bench.items.height))
    users = bench.users(p.test_users)
    ranks = full_catalogue_ranks(service, bench.sequences, bench.items, users)
    rank_seconds = time.perf_counter() - started
    np.save(run_dir / f"test_ranks_{len(users)}users.npy", ranks, allow_pickle=False)
    hr, ndcg = hit_rate_and_ndcg(ranks, 10)
    record = {"seed": seed, "hr@10": hr, "ndcg@10": ndcg, "users": len(ranks), "train_seconds": train_seconds,
              "rank_seconds": rank_seconds, "steps": result.steps, "best_validation": result.best_validation}
    done.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(record, flush=True)
