"""trivago_lists_small on the real 100k-row sample: the user sample, trivago's lists shown one second
before their clickout, and the derived label ``clickout`` (a clickout of the same user and hotel in
(t, t + 1 h]) in a built store, checked against the raw rows and the plain ``trivago`` adapter."""

from __future__ import annotations

import polars as pl
import pytest
from adapter_checks import check_output_against_schema, raw_trivago, check_store_and_batch, files_bytes, schema_of, source_dir

from eventrec.adapters import ADAPTERS, SOURCE_FOLDERS, AdapterError, trivago_lists_small
from eventrec.adapters._common import history_lengths, sample_key

NAME = "trivago_lists_small"
WINDOW = 3600
STREAMS = ["item_interaction", "clickout", "search_filter"]


@pytest.fixture(scope="module")
def raw() -> pl.DataFrame:
    return raw_trivago()


@pytest.fixture(scope="module")
def raw_clickouts(raw) -> pl.DataFrame:
    return raw.filter(pl.col("action_type") == "clickout item").select("user_id", pl.col("hotel").alias("item_id"), pl.col("timestamp").alias("tc"))


@pytest.fixture(scope="module")
def plain(prepared) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``trivago`` adapter's (events, impressions) restricted to this output's users."""
    out, _ = prepared(NAME)
    base, _ = prepared("trivago")
    users = pl.read_parquet(out / "events.parquet")["user_id"].unique().implode()
    events = pl.read_parquet(base / "events.parquet").filter(pl.col("user_id").is_in(users))
    impressions = pl.read_parquet(base / "impressions.parquet").filter(pl.col("user_id").is_in(users))
    return events, impressions


@pytest.fixture(scope="module")
def store(prepared, plain, tmp_path_factory):
    """(examples beside their impressions and trivago's logged ``click``, row for row; manifest)."""
    from eventrec.store.build import build_store

    out, _ = prepared(NAME)
    store_dir = tmp_path_factory.mktemp("lists_small_store") / "store"
    manifest = build_store(schema_of(NAME), out, store_dir)
    examples = pl.read_parquet(store_dir / "examples.parquet")
    impressions = pl.read_parquet(out / "impressions.parquet")
    assert examples.height == impressions.height == plain[1].height
    assert (examples["request_id"] == impressions["request_id"]).all(), "examples keep the impressions' order"
    columns = ["split", "label__clickout"] + [f"cut__{s}" for s in STREAMS]
    joined = pl.concat([examples.select(columns), impressions, plain[1].select("click")], how="horizontal")
    return joined, manifest


def test_registered():
    assert ADAPTERS[NAME] == (trivago_lists_small.prepare, trivago_lists_small.SCHEMA)
    assert SOURCE_FOLDERS[NAME] == "trivago"
    schema, base = schema_of(NAME), schema_of("trivago")
    assert schema.impressions.labels == [] and schema.impressions.all_labels == ["clickout"]
    (derived,) = schema.impressions.derived_labels
    assert derived.events == ["clickout_item"] and derived.window_seconds == WINDOW == trivago_lists_small.WINDOW
    assert [(m.impression, m.event) for m in derived.match_columns] == [("item_id", "item_id")]
    assert [s.model_dump() for s in schema.streams] == [s.model_dump() for s in base.streams]
    for part in ("item_attributes", "context_attributes"):
        assert [a.model_dump() for a in getattr(schema.impressions, part)] == [a.model_dump() for a in getattr(base.impressions, part)], part
    assert schema.impressions.extra_columns == base.impressions.extra_columns
    assert schema.splits.model_dump() == base.splits.model_dump()


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_user_sample(prepared, raw, tmp_path):
    out, summary = prepared(NAME)
    users = sorted(pl.read_parquet(out / "events.parquet")["user_id"].unique().to_list())
    listed = raw.filter((pl.col("action_type") == "clickout item") & pl.col("impressions").is_not_null())["user_id"].unique().to_list()
    assert len(users) == summary["users"] == 1000 < summary["users_with_impression_lists"] == len(listed)
    keys = sorted((sample_key(u, 0), u) for u in listed)
    assert users == sorted(u for _, u in keys[:1000]), "the 1000 smallest blake2b keys among users with a list"
    assert pl.read_parquet(out / "impressions.parquet")["user_id"].n_unique() == 1000
    small = trivago_lists_small.prepare(source_dir(NAME), tmp_path / "small", max_users=50)
    small_users = set(pl.read_parquet(tmp_path / "small" / "events.parquet")["user_id"].unique().to_list())
    assert small["users"] == len(small_users) == 50 and small_users <= set(users)
    other = trivago_lists_small.prepare(source_dir(NAME), tmp_path / "other", max_users=50, seed=1)
    other_users = set(pl.read_parquet(tmp_path / "other" / "events.parquet")["user_id"].unique().to_list())
    assert other["users"] == 50 and other_users != small_users
    for bad in ({"max_users": 0}, {"max_users": True}, {"seed": 1.5}):
        with pytest.raises(AdapterError, match="max_users|seed"):
            trivago_lists_small.prepare(source_dir(NAME), tmp_path / "bad", **bad)


def test_all_users_kept_when_fewer(raw, tmp_path):
    subset = tmp_path / "subset.parquet"
    raw.drop("hotel").head(3000).write_parquet(subset)
    summary = trivago_lists_small.prepare(subset, tmp_path / "out", max_users=10**6)
    assert summary["users"] == summary["users_with_impression_lists"] > 0
    assert pl.read_parquet(tmp_path / "out" / "impressions.parquet")["user_id"].n_unique() == summary["users"]


def test_events_are_the_trivago_events_of_the_sample(prepared, plain):
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    assert events.equals(plain[0])
    assert events.height == summary["events"]


def test_impressions_are_trivago_lists_one_second_before_the_clickout(prepared, plain, raw):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    base = plain[1]
    assert "click" not in impressions.columns and impressions.height == summary["impressions"] == base.height
    assert impressions.columns == [c for c in base.columns if c != "click"]
    assert (impressions["timestamp"] == base["timestamp"] - 1).all(), "impression time = clickout time - 1"
    assert impressions.drop("request_id", "timestamp").equals(base.drop("request_id", "timestamp", "click"))
    # requests renumbered 0, 1, ... in trivago's order, one request per trivago request
    firsts = impressions["request_id"].unique(maintain_order=True)
    assert firsts.to_list() == list(range(summary["requests"]))
    pairs = pl.DataFrame({"a": impressions["request_id"], "b": base["request_id"]}).unique()
    assert pairs.height == summary["requests"] == base["request_id"].n_unique()
    # straight from the raw rows: each list is a raw clickout of its user one second later, same hotels
    requests = impressions.group_by("request_id", maintain_order=True).agg(
        pl.col("user_id").first(), pl.col("timestamp").first(), pl.col("item_id").sort_by("position").alias("hotels")
    )
    lists = raw.filter(pl.col("action_type") == "clickout item").select(
        "user_id", (pl.col("timestamp") - 1).alias("timestamp"), pl.col("impressions").str.split("|").cast(pl.List(pl.Int64)).alias("hotels")
    )
    assert requests.join(lists, on=["user_id", "timestamp", "hotels"], how="semi").height == requests.height


def test_deterministic(prepared, tmp_path):
    out, summary = prepared(NAME)
    again = trivago_lists_small.prepare(source_dir(NAME), tmp_path / "again")
    assert again == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")


def test_label_is_a_clickout_of_the_same_hotel_within_the_hour(store, prepared, raw_clickouts):
    examples, manifest = store
    out, _ = prepared(NAME)
    counts = manifest["counts"]
    data_end = int(pl.read_parquet(out / "events.parquet")["timestamp"].max())
    train_end, validation_end = manifest["splits"]["train_end"], manifest["splits"]["validation_end"]
    label = examples["label__clickout"]
    missing = label.is_nan()
    assert int(missing.sum()) == counts["labels.clickout.missing"] > 0
    assert 0 < int(label.fill_nan(0).sum()) == counts["labels.clickout.positives"]

    # censored exactly where t + 1 h runs past the impression's split or the data
    last = examples.select(
        pl.when(pl.col("split") == 0).then(train_end - 1).when(pl.col("split") == 1).then(validation_end - 1).otherwise(data_end)
    ).to_series()
    ends = examples["timestamp"] + WINDOW
    assert (missing == ((ends > last) | (ends > data_end))).all()

    # each list's clicked hotel is a positive unless its window is censored
    labelled = examples.filter(~missing)
    clicked = labelled.filter(pl.col("click") == 1)
    assert clicked.height > 1000 and (clicked["label__clickout"] == 1.0).all()
    assert (labelled["label__clickout"] >= labelled["click"].cast(pl.Float32)).all(), "never 0 where trivago logged a click"
    later = labelled.filter((pl.col("label__clickout") == 1.0) & (pl.col("click") == 0))
    assert later.height > 0, "listed hotels clicked out on later within the hour"

    # every labelled row: 1 exactly when a raw clickout of the same user and hotel is in (t, t + 3600]
    hits = (
        labelled.select("user_id", "item_id", "timestamp", "label__clickout").with_row_index("_i")
        .join(raw_clickouts, on=["user_id", "item_id"], how="left")
        .with_columns(((pl.col("tc") > pl.col("timestamp")) & (pl.col("tc") <= pl.col("timestamp") + WINDOW)).fill_null(False).alias("hit"))
        .group_by("_i", maintain_order=True)
        .agg(pl.col("hit").any(), pl.col("label__clickout").first())
    )  # fmt: skip
    assert (hits["label__clickout"] == hits["hit"].cast(pl.Float32)).all()

    # and a sample of rows by hand, second by second over the window (its edges included)
    rows = {tuple(r) for r in raw_clickouts.iter_rows()}
    picked = pl.concat([labelled.filter(pl.col("label__clickout") == 0.0).sample(20, seed=0), clicked.head(10), later.head(10)])
    for row in picked.iter_rows(named=True):
        t = row["timestamp"]
        expected = any((row["user_id"], row["item_id"], t + dt) in rows for dt in range(1, WINDOW + 1))
        assert row["label__clickout"] == float(expected), row


def test_summary_compares_with_the_logged_click(prepared, store):
    out, summary = prepared(NAME)
    examples, _ = store
    data_end = int(pl.read_parquet(out / "events.parquet")["timestamp"].max())
    comparison = summary["label_vs_logged_click"]
    # before split censoring: every row whose hour ends by the data's last event
    observed = examples.filter(pl.col("timestamp") + WINDOW <= data_end)
    assert comparison["rows"] == observed.height and comparison["rows_hour_past_end_of_data"] == examples.height - observed.height
    assert comparison["logged_clicks"] == int(observed["click"].sum())
    assert comparison["derived_0_logged_1"] == 0
    # the store agrees wherever it has a label
    labelled = observed.filter(~pl.col("label__clickout").is_nan())
    assert int((labelled["label__clickout"] == 1.0).sum()) <= comparison["derived_positives"]
    extra = labelled.filter((pl.col("label__clickout") == 1.0) & (pl.col("click") == 0)).height
    assert 0 < extra <= comparison["derived_1_logged_0"] == comparison["derived_positives"] - comparison["logged_clicks"]
    shares = comparison["touched_before"]
    assert 0 <= shares["negatives"] < shares["positives"] <= 1


def test_history_is_strictly_before_the_list(store, prepared):
    """Cuts hold the events strictly before t = clickout - 1; events in the second before the
    clickout leave the history (they were in trivago's), as the summary counts."""
    examples, _ = store
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    schema = schema_of(NAME)
    requests = examples.select("user_id", "timestamp")
    lost_rows = pl.Series([False] * examples.height)
    for stream in schema.streams:
        rows = events.filter(pl.col("event_type").is_in(stream.event_types))
        at_list = history_lengths(rows, requests, "user_id", "timestamp")
        at_clickout = history_lengths(rows, requests.with_columns(pl.col("timestamp") + 1), "user_id", "timestamp")
        assert (examples[f"cut__{stream.name}"] == at_list).all(), stream.name
        lost_rows = lost_rows | (at_list != at_clickout)
    shift = summary["history_shift"]
    assert int(lost_rows.sum()) == shift["impressions_losing_events"] > 0
    assert examples.filter(lost_rows)["request_id"].n_unique() == shift["requests_losing_events"]
    at_list_second = events.join(requests.unique(), on=["user_id", "timestamp"], how="semi")
    assert at_list_second.height == shift["events_lost"] == sum(shift["events_lost_by_type"].values())
    # a clickout of the row's own hotel in the list's second: in neither the history nor the window
    own = examples.join(at_list_second.filter(pl.col("event_type") == "clickout_item").select("user_id", "item_id", "timestamp").unique(),
                        on=["user_id", "item_id", "timestamp"], how="semi")
    assert own.height == shift["impressions_with_own_hotel_clicked_out_at_list_second"]


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])
