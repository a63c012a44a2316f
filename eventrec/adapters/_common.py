"""Shared helpers of the dataset adapters: checked reading, atomic deterministic output, statistics.

Every adapter turns a public dataset into eventrec's raw-log format (``events.parquet``,
``impressions.parquet``, side tables) in an output directory. The helpers here give them the same
guarantees:

- **Clear errors.** :class:`AdapterError` names the file, the column and, where it applies, the first
  offending row (0-based data row, header excluded) and its value.
- **Determinism.** Output rows are fully ordered by explicit sort keys (stable sorts, file order as the
  last tie-break) and written single-file with fixed compression, so the same input gives
  byte-identical files.
- **Atomicity.** :func:`atomic_output` writes into a temporary sibling directory and renames it into
  place only when everything succeeded; a failed or killed run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Hashable, Iterable, Iterator, TypeVar

import numpy as np
import polars as pl

ROW = "_row"
SUMMARY_FILE = "summary.json"
UserId = TypeVar("UserId", bound=Hashable)


class AdapterError(ValueError):
    """Bad raw input for an adapter; the message names the file, the column and the first bad row."""


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise AdapterError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AdapterError(f"{path}: empty file")
    return path


def require_columns(frame: pl.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = sorted(c for c in frame.columns if c != ROW)
        raise AdapterError(f"{path}: missing column(s) {missing}; columns present: {present}")


def read_parquet_checked(path: Path, columns: list[str]) -> pl.DataFrame:
    """Read the named columns of a Parquet file, with the file row number as ``_row``."""
    require_file(path)
    try:
        present = list(pl.read_parquet_schema(path))
    except Exception as error:  # polars raises several types for unreadable files
        raise AdapterError(f"{path}: cannot be read as Parquet: {error}") from None
    missing = [c for c in columns if c not in present]
    if missing:
        raise AdapterError(f"{path}: missing column(s) {missing}; columns present: {sorted(present)}")
    return pl.read_parquet(path, columns=columns).with_row_index(ROW)


def read_tsv_checked(path: Path, columns: list[str], strip_types: bool = False) -> pl.DataFrame:
    """Read a tab-separated file as strings (parsing is done by :func:`parse_column`).

    ``strip_types``: RecBole atomic files type their headers (``user_id:token``); the suffix after
    ``:`` is dropped so columns are named by their base name.
    """
    require_file(path)
    try:
        frame = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False, has_header=True)
    except Exception as error:
        raise AdapterError(f"{path}: cannot be read as tab-separated text: {error}") from None
    if strip_types:
        names = [c.split(":", 1)[0] for c in frame.columns]
        if len(set(names)) != len(names):
            raise AdapterError(f"{path}: header has repeated column names after removing ':type' suffixes: {frame.columns}")
        frame.columns = names
    require_columns(frame, path, columns)
    if frame.height == 0:
        raise AdapterError(f"{path}: no data rows")
    return frame.select(columns).with_row_index(ROW)


def _first_bad(frame: pl.DataFrame, bad: pl.Series, column: str) -> tuple[int, object]:
    hit = frame.filter(bad).select(ROW, column).row(0)
    return int(hit[0]), hit[1]


def check_not_null(frame: pl.DataFrame, path: Path, column: str, what: str) -> None:
    bad = frame[column].is_null()
    if bad.any():
        row, _ = _first_bad(frame, bad, column)
        raise AdapterError(f"{path}: column {column!r}, row {row}: null {what} ({int(bad.sum())} null row(s))")


def parse_column(frame: pl.DataFrame, path: Path, column: str, dtype: pl.DataType, what: str, integral: bool = False) -> pl.Series:
    """``frame[column]`` cast to ``dtype``; an unparsable non-null value raises naming file, column, row.

    ``integral``: a string such as ``"881250949.0"`` is accepted for an integer column only if it
    is a whole number (RecBole declares timestamps as ``float``).
    """
    source = frame[column]
    if integral and source.dtype == pl.String:
        as_float = source.str.strip_chars().cast(pl.Float64, strict=False)
        parsed = as_float.cast(dtype, strict=False)
        bad = (source.is_not_null() & (parsed.is_null() | (as_float != as_float.floor()).fill_null(True))).fill_null(False)
    else:
        cleaned = source.str.strip_chars() if source.dtype == pl.String else source
        parsed = cleaned.cast(dtype, strict=False)
        bad = source.is_not_null() & parsed.is_null()
    if bad.any():
        row, value = _first_bad(frame, bad, column)
        raise AdapterError(
            f"{path}: column {column!r}, row {row}: cannot parse {value!r} as {what} ({int(bad.sum())} bad row(s))"
        )
    return parsed.alias(column)


def check_timestamps(frame: pl.DataFrame, path: Path, column: str) -> None:
    """Timestamps must be non-null unix seconds in [1970, 2200)."""
    check_not_null(frame, path, column, "timestamp")
    bad = (frame[column] < 0) | (frame[column] >= 7_258_118_400)
    if bad.any():
        row, value = _first_bad(frame, bad, column)
        raise AdapterError(f"{path}: column {column!r}, row {row}: timestamp {value!r} out of range (unix seconds 1970..2200)")


def check_sample_options(max_users: object, seed: object) -> None:
    """``max_users`` must be a positive integer and ``seed`` an integer (bools refused)."""
    if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
        raise AdapterError(f"max_users must be a positive integer, got {max_users!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AdapterError(f"seed must be an integer, got {seed!r}")


def sample_key(user_id: object, seed: int) -> int:
    """The user's sampling key: the first 8 bytes of ``blake2b(f"{seed}:{user_id}")`` as an integer
    (big-endian; an integer id is written in decimal)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest(), "big")


def sample_users(users: Iterable[UserId], max_users: int, seed: int) -> list[UserId]:
    """The ``max_users`` distinct users of ``users`` with the smallest :func:`sample_key` (ties by id),
    sorted by id; all of them when there are fewer.

    The choice depends only on ``seed`` and the ids (not on their order), and the sample for
    ``max_users = n`` holds the one for any smaller ``n``. Ids of one type (all strings or all
    integers): they are compared on ties and in the final sort.
    """
    ranked = sorted(set(users), key=lambda user: (sample_key(user, seed), user))
    return sorted(ranked[:max_users])


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """One deterministic Parquet file: fixed compression, statistics, a single row-group size."""
    frame.write_parquet(path, compression="zstd", compression_level=3, statistics=True, row_group_size=1 << 20)


def write_summary(summary: dict, out_dir: Path) -> None:
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def check_output_dir(out_dir: Path, source_dir: Path | None = None) -> None:
    """Refuse an ``out_dir`` that this adapter did not create: anything but an absent or empty folder
    or a previous prepared output (its ``summary.json`` beside ``events.parquet``), and any folder
    equal to, inside or holding ``source_dir`` (symlinks resolved)."""
    resolved = out_dir.resolve()
    if source_dir is not None:
        source = Path(source_dir).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise AdapterError(f"--out {out_dir}: is, is inside or holds --source {source_dir}; give the output its own folder")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    prepared = (out_dir / SUMMARY_FILE).is_file() and (out_dir / "events.parquet").is_file()
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not prepared):
        raise AdapterError(f"--out {out_dir}: exists and is not a prepared-logs folder (no {SUMMARY_FILE}); not replacing it: "
                           "remove it yourself or choose another folder")


@contextlib.contextmanager
def atomic_output(out_dir: Path, source_dir: Path | None = None) -> Iterator[Path]:
    """Yield a temporary directory next to ``out_dir``; on success it replaces ``out_dir``.

    ``out_dir`` is first checked by :func:`check_output_dir` (only a previous output is replaced).
    The previous ``out_dir`` (if any) is moved aside, the new one renamed into place, then the old
    one deleted; on any error the temporary directory is removed and ``out_dir`` is untouched.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, source_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    os.chmod(out_dir, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_outputs(out_dir: Path | str, source_dir: Path | str, tables: dict[str, pl.DataFrame], summary: dict) -> dict:
    """Write ``tables`` (file name → frame, e.g. ``{"events.parquet": events}``) and ``summary.json``
    into ``out_dir`` at once (:func:`atomic_output`); returns ``summary``."""
    with atomic_output(Path(out_dir), Path(source_dir)) as tmp:
        for name, frame in tables.items():
            write_parquet(frame, tmp / name)
        write_summary(summary, tmp)
    return summary


def _percentiles(values: pl.Series) -> dict[str, float]:
    if values.len() == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    out = {f"p{q}": float(values.quantile(q / 100, interpolation="nearest")) for q in (50, 90, 99)}
    out["max"] = float(values.max())
    out["mean"] = round(float(values.mean()), 2)
    return out


def history_lengths(events: pl.DataFrame, requests: pl.DataFrame, user: str, timestamp: str) -> pl.Series:
    """For each request (user, timestamp), the number of the user's events strictly before it.

    Events at the request's own timestamp are not counted (eventrec's equal-timestamp rule).
    """
    counts = (
        events.select(pl.col(user), pl.col(timestamp))
        .sort(user, timestamp)
        .group_by(user, timestamp, maintain_order=True)
        .agg(pl.len().alias("n"))
        .with_columns(pl.col("n").cum_sum().over(user).alias("before_next"))
        .sort(timestamp, user)
    )
    joined = requests.select(pl.col(user), pl.col(timestamp), pl.int_range(pl.len()).alias("_i")).sort(timestamp, user).join_asof(
        counts.select(user, timestamp, "before_next"), on=timestamp, by=user, strategy="backward", allow_exact_matches=False, check_sortedness=False
    )
    return joined.sort("_i")["before_next"].fill_null(0).alias("history_length")


def describe(out_dir: Path, schema) -> dict:
    """Statistics of a prepared dataset read back from ``out_dir`` as its schema declares it.

    Users, events per stream, impressions and requests, label rates, and per request the number of
    the user's events strictly before it (all streams together and per stream; uncapped and capped
    at the stream's ``max_length``), as p50/p90/p99/max/mean over requests.
    """
    out_dir = Path(out_dir)
    ev = schema.events
    imp = schema.impressions
    events = pl.read_parquet(out_dir / ev.path)
    impressions = pl.read_parquet(out_dir / imp.path)
    request_keys = [imp.request_column] if imp.request_column else [imp.user_column, imp.timestamp_column]
    requests = (
        impressions.select(*dict.fromkeys([*request_keys, imp.user_column, imp.timestamp_column]))
        .unique(subset=request_keys, keep="first", maintain_order=True)
        .rename({imp.user_column: ev.user_column, imp.timestamp_column: ev.timestamp_column})
    )
    stats: dict = {
        "users_with_events": events[ev.user_column].n_unique(),
        "users_with_impressions": impressions[imp.user_column].n_unique(),
        "events": events.height,
        "impressions": impressions.height,
        "requests": requests.height,
        "distinct_items_impressed": impressions[imp.item_column].n_unique(),
        "time_range": [int(events[ev.timestamp_column].min()), int(events[ev.timestamp_column].max())],
        "label_rates": {
            label: {
                "positives": int(impressions[label].sum()),
                "rate": round(float(impressions[label].mean()), 5),
                "nulls": int(impressions[label].null_count()),
            }
            for label in imp.labels
        },
        "streams": {},
    }
    total = history_lengths(events, requests, ev.user_column, ev.timestamp_column)
    stats["history_length_all_streams"] = _percentiles(total)
    for stream in schema.streams:
        rows = events.filter(pl.col(ev.type_column).is_in(stream.event_types))
        lengths = history_lengths(rows, requests, ev.user_column, ev.timestamp_column)
        stats["streams"][stream.name] = {
            "events": rows.height,
            "users": rows[ev.user_column].n_unique(),
            "max_length": stream.max_length,
            "history_length": _percentiles(lengths),
            "history_length_capped": _percentiles(lengths.clip(upper_bound=stream.max_length)),
            "requests_with_empty_history": round(float((lengths == 0).mean()), 4),
        }
    return stats


MAX_REDRAW_ROUNDS = 1000  # rounds of redrawing rejected negatives before giving up


def sample_negatives(
    requests: pl.DataFrame, owned: pl.DataFrame, catalogue: np.ndarray, negatives: int, seed: int
) -> tuple[pl.DataFrame, int]:
    """``negatives`` distinct catalogue items per request, none owned by the user at that time.

    ``requests``: (request_id, user_id, timestamp, item_id) in request order. ``owned``: (user_id,
    item_id, first_time) = when the user first had the item (bought it, rated it): an item owned at
    or before the request's timestamp is never drawn, the request's own item included when it is
    owned at that time (``amazon_grocery``, ``ml100k_conversion`` draw at the event's own time). Draws are uniform over
    ``catalogue``; rejected draws are redrawn (vectorised, in request/slot order, so the result
    depends only on the inputs and ``seed``). Returns the rows and the number of redraws.
    """
    rng = np.random.default_rng(seed)
    n = requests.height
    slots = pl.DataFrame(
        {
            "request_id": np.repeat(requests["request_id"].to_numpy(), negatives),
            "slot": np.tile(np.arange(negatives, dtype=np.int64), n),
        }
    ).join(requests.select("request_id", "user_id", "timestamp"), on="request_id", how="left", maintain_order="left")
    drawn = catalogue[rng.integers(0, len(catalogue), size=slots.height)]
    redraws = 0
    todo = np.arange(slots.height)
    for _ in range(MAX_REDRAW_ROUNDS):
        frame = slots.with_columns(pl.Series("item_id", drawn), pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"))
        frame = frame.join(owned, on=["user_id", "item_id"], how="left", maintain_order="left")
        owned_by_then = (frame["first_time"] <= frame["timestamp"]).fill_null(False)
        repeated = frame.select(~pl.struct("request_id", "item_id").is_first_distinct()).to_series()
        bad = (owned_by_then | repeated).to_numpy()
        todo = np.flatnonzero(bad)
        if len(todo) == 0:
            break
        redraws += len(todo)
        drawn[todo] = catalogue[rng.integers(0, len(catalogue), size=len(todo))]
    else:
        raise AdapterError(
            f"could not draw {negatives} distinct unowned negatives for {len(todo)} request slot(s) in "
            f"{MAX_REDRAW_ROUNDS} rounds: the catalogue ({len(catalogue)} items) is too small for that many negatives"
        )
    rows = slots.select("request_id", "slot", pl.Series("item_id", drawn))
    return rows, redraws


def requests_with_negatives(
    requests: pl.DataFrame, owned: pl.DataFrame, catalogue: np.ndarray, negatives: int, seed: int
) -> tuple[pl.DataFrame, int]:
    """Each request's own item (``slot`` −1) and its :func:`sample_negatives` draws (slots 0..N−1):
    (request_id, user_id, timestamp, item_id, slot) sorted by request, then slot; and the redraws."""
    frames = [requests.select("request_id", "user_id", "timestamp", "item_id").with_columns(pl.lit(-1, dtype=pl.Int64).alias("slot"))]
    redraws = 0
    if negatives > 0:
        drawn, redraws = sample_negatives(requests, owned, catalogue, negatives, seed)
        frames.append(
            drawn.join(requests.select("request_id", "user_id", "timestamp"), on="request_id", how="left", maintain_order="left")
            .select("request_id", "user_id", "timestamp", "item_id", "slot")
        )
    return pl.concat(frames, how="vertical").sort("request_id", "slot"), redraws
