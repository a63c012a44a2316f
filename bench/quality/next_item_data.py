"""Next-item benchmark data (MovieLens-100K, Amazon grocery): one leave-one-out split for every model.

Each user's interactions are put in time order, ties (same second in MovieLens, same day in Amazon)
broken by file row (``ties="row"``) or by a seeded random order (``ties="shuffled"``). File row is
not neutral in Amazon grocery: its file lists each day's items in increasing item id (every one of
the 31,116 tied pairs), so with row ties the later item of a same-day basket always has the larger
id, and a model that learns the ids' order is told something about a same-day target; in MovieLens
the later id is the larger in 50.2% of tied pairs. The last interaction is the test target, the second-to-last the validation
target, the rest is training; users with fewer than 3 interactions are dropped (counted).

``sequences.parquet`` columns: ``user_id, item_id, timestamp`` (original unit), ``order`` (0-based
position in the user's sequence), ``unique_time`` (strictly increasing within a user, in
milliseconds: ``timestamp * 1000 + rank within the tie``; RecBole orders by it), ``event_time``
(strictly increasing within a user, in **seconds**: the smallest such sequence with ``event_time >=
timestamp``, i.e. each tied event one second after the one before it; eventrec's stores keep whole
seconds, so this is what makes "events strictly before the request" mean exactly "earlier in the
sequence" for eventrec too; ``unique_time`` floored to seconds would put a whole tie in one second
and hide the tie's earlier events from every later one), ``split`` (train / validation / test);
MovieLens also keeps ``rating`` (an attribute of each past event, never of the target).

For RecBole the same sequences are written as the atomic file ``<name>.inter`` with
``timestamp:float`` = ``unique_time``; RecBole's ``LS: valid_and_test`` with ``order: TO`` then
holds out exactly the same two items per user. Candidates at evaluation: the whole catalogue (every
item id of the dataset), none excluded, as RecBole does for sequential models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from eventrec.adapters import default_data_dir

SOURCES = {"ml100k": ("ml-100k", "ml-100k.inter"), "amazon_grocery": ("amazon-grocery", "train.csv")}


def read_interactions(dataset: str) -> tuple[pl.DataFrame, int]:
    """``user_id, item_id, timestamp, _row`` and the catalogue size (distinct items in the file)."""
    folder, name = SOURCES[dataset]
    path = default_data_dir() / folder / name
    frame = pl.read_csv(path, separator="\t")
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns}).rename({"time": "timestamp"}, strict=False)
    extra = [pl.col("rating").cast(pl.Float64)] if "rating" in frame.columns else []  # an attribute of the past event
    frame = frame.select(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64), pl.col("timestamp").cast(pl.Int64), *extra)
    return frame.with_row_index("_row"), frame["item_id"].n_unique()


TIES = ("row", "shuffled")
TIE_SEED = 20261129  # the one shuffle every model of a "shuffled" benchmark shares


def leave_one_out(frame: pl.DataFrame, ties: str = "row") -> tuple[pl.DataFrame, dict]:
    """Time order per user (ties by file row, or with ``ties="shuffled"`` in a random order drawn
    once with :data:`TIE_SEED`), last = test, second-to-last = validation."""
    if ties not in TIES:
        raise ValueError(f"ties: one of {TIES}, got {ties!r}")
    if ties == "shuffled":
        rng = np.random.default_rng(TIE_SEED)
        frame = frame.with_columns(pl.Series("_tie_key", rng.permutation(frame.height)))
    frame = frame.sort(["user_id", "timestamp", "_tie_key" if ties == "shuffled" else "_row"])
    frame = frame.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("order"),
        pl.len().over("user_id").alias("_n"),
        pl.int_range(pl.len(), dtype=pl.Int64).over(["user_id", "timestamp"]).alias("_tie"),
    )
    if frame["_tie"].max() >= 1000:
        raise RuntimeError("more than 1000 interactions of one user share a timestamp")
    kept = frame.filter(pl.col("_n") >= 3)
    split = (
        pl.when(pl.col("order") == pl.col("_n") - 1).then(pl.lit("test"))
        .when(pl.col("order") == pl.col("_n") - 2).then(pl.lit("validation"))
        .otherwise(pl.lit("train"))
    )  # fmt: skip
    out = kept.select(
        "user_id", "item_id", "timestamp", "order", *(["rating"] if "rating" in kept.columns else []),
        (pl.col("timestamp") * 1000 + pl.col("_tie")).alias("unique_time"),
        # t_i = i + max_{j<=i}(timestamp_j - j): the least strictly increasing sequence >= timestamp
        ((pl.col("timestamp") - pl.col("order")).cum_max().over("user_id") + pl.col("order")).alias("event_time"),
        split.alias("split"),
    )  # fmt: skip
    stats = {
        "users": out["user_id"].n_unique(),
        "dropped_users_under_3": frame.filter(pl.col("_n") < 3)["user_id"].n_unique(),
        "interactions": out.height,
        "items_in_sequences": out["item_id"].n_unique(),
    }
    return out, stats


def work_dir(root: Path, dataset: str, ties: str = "row") -> Path:
    """The benchmark's folder under ``root`` (``bench/out/quality``): one per dataset and tie rule."""
    return root / (dataset + ("" if ties == "row" else f"-ties-{ties}"))


def prepare_next_item(dataset: str, out_dir: Path, ties: str = "row") -> tuple[pl.DataFrame, dict]:
    """Write ``sequences.parquet``, ``recbole/<dataset>/<dataset>.inter`` and ``split.json`` (``ties``:
    see :func:`leave_one_out`; one ``out_dir`` per tie rule)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sequences.parquet"
    raw, catalogue = read_interactions(dataset)
    sequences, stats = leave_one_out(raw, ties)
    stats["catalogue"] = catalogue
    if not path.exists() or "event_time" not in pl.read_parquet_schema(path):  # files from before event_time: rewritten
        sequences.write_parquet(path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        recbole_dir = out_dir / "recbole" / dataset
        recbole_dir.mkdir(parents=True, exist_ok=True)
        inter = sequences.select(
            pl.col("user_id").alias("user_id:token"),
            pl.col("item_id").alias("item_id:token"),
            pl.col("unique_time").cast(pl.Float64).alias("timestamp:float"),
        )
        inter.write_csv(recbole_dir / f"{dataset}.inter", separator="\t")
        (out_dir / "split.json").write_text(json.dumps(stats, indent=1) + "\n")
    return sequences, stats


TEST_USERS_SEED, VALIDATION_USERS_SEED = 0, 1


def user_sample(all_users: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``all_users`` (sorted) drawn without replacement with ``seed``, sorted; all of them
    for ``count`` 0. The same draw in every script that ranks a run's test (or validation) users."""
    return all_users if not count else np.sort(np.random.default_rng(seed).choice(all_users, count, replace=False))
