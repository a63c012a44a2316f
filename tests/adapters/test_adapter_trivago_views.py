"""trivago_views adapter on the real 100k-row sample: the user sample, view impressions, and the
derived label ``clickout`` (a clickout of the same hotel within (t, t + 1 h]) in a built store,
checked against the raw rows."""

from __future__ import annotations

import polars as pl
import pytest
from adapter_checks import check_output_against_schema, raw_trivago, files_bytes, schema_of, source_dir

from eventrec.adapters import ADAPTERS, SOURCE_FOLDERS, AdapterError, trivago_views

NAME = "trivago_views"
WINDOW = 3600
RAW_VIEWS = ["interaction item image", "interaction item info", "interaction item rating", "interaction item deals"]


@pytest.fixture(scope="module")
def raw() -> pl.DataFrame:
    return raw_trivago()


@pytest.fixture(scope="module")
def store(prepared, tmp_path_factory):
    """(examples joined with the impressions on ``request_id``, manifest) of a store built from the output."""
    from eventrec.store.build import build_store

    out, _ = prepared(NAME)
    store_dir = tmp_path_factory.mktemp("views_store") / "store"
    manifest = build_store(schema_of(NAME), out, store_dir)
    examples = pl.read_parquet(store_dir / "examples.parquet")
    impressions = pl.read_parquet(out / "impressions.parquet")
    joined = examples.select("request_id", "split", "label__clickout").join(
        impressions, on="request_id", how="inner", validate="1:1"
    )
    assert joined.height == impressions.height == examples.height
    return joined, manifest


def test_registered():
    assert ADAPTERS[NAME] == (trivago_views.prepare, trivago_views.SCHEMA)
    assert SOURCE_FOLDERS[NAME] == "trivago"
    schema = schema_of(NAME)
    assert schema.impressions.all_labels == ["clickout"]
    (derived,) = schema.impressions.derived_labels
    assert derived.events == ["clickout_item"] and derived.window_seconds == WINDOW
    assert [(m.impression, m.event) for m in derived.match_columns] == [("item_id", "item_id")]
    assert [s.model_dump() for s in schema.streams] == [s.model_dump() for s in schema_of("trivago").streams]


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_user_sample(prepared, raw, tmp_path):
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    users = sorted(events["user_id"].unique().to_list())
    viewers = raw.filter(pl.col("action_type").is_in(RAW_VIEWS) & pl.col("hotel").is_not_null())["user_id"].unique().to_list()
    assert len(viewers) > 1000
    assert len(users) == summary["users"] == 1000 and summary["users_with_views"] == len(viewers)
    # the 1000 smallest keys among the users with a view of a known hotel
    keys = sorted((trivago_views.sample_key(u, 0), u) for u in viewers)
    assert users == sorted(u for _, u in keys[:1000])
    # a smaller sample is part of the larger one; another seed draws other users
    small = trivago_views.prepare(source_dir(NAME), tmp_path / "small", max_users=50)
    small_users = set(pl.read_parquet(tmp_path / "small" / "events.parquet")["user_id"].unique().to_list())
    assert len(small_users) == small["users"] == 50 and small_users <= set(users)
    other = trivago_views.prepare(source_dir(NAME), tmp_path / "other", max_users=50, seed=1)
    other_users = set(pl.read_parquet(tmp_path / "other" / "events.parquet")["user_id"].unique().to_list())
    assert other["users"] == 50 and other_users != small_users


def test_all_users_kept_when_fewer(raw, tmp_path):
    subset = tmp_path / "subset.parquet"
    raw.drop("hotel").head(3000).write_parquet(subset)
    summary = trivago_views.prepare(subset, tmp_path / "out", max_users=10**6)
    assert summary["users"] == summary["users_with_views"] > 0
    assert pl.read_parquet(tmp_path / "out" / "impressions.parquet")["user_id"].n_unique() == summary["users"]
    with pytest.raises(AdapterError, match="max_users"):
        trivago_views.prepare(subset, tmp_path / "out2", max_users=0)


def test_events_are_the_trivago_events_of_the_sample(prepared):
    out, summary = prepared(NAME)
    base, _ = prepared("trivago")
    events = pl.read_parquet(out / "events.parquet")
    users = events["user_id"].unique()
    expected = pl.read_parquet(base / "events.parquet").filter(pl.col("user_id").is_in(users.implode()))
    assert events.equals(expected)
    assert events.height == summary["events"]


def test_impressions_are_views(prepared, raw):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    assert impressions.height == summary["impressions"] > 0
    assert impressions["request_id"].to_list() == list(range(impressions.height))
    assert impressions.select("user_id", "timestamp", "item_id").is_unique().all(), "one impression per user, second, hotel"
    assert "viewed" not in impressions.columns
    views = raw.filter(pl.col("action_type").is_in(RAW_VIEWS)).select("user_id", "timestamp", pl.col("hotel").alias("item_id")).unique()
    # every impression is a raw view of that user and hotel at that second ...
    matched = impressions.join(views, on=["user_id", "timestamp", "item_id"], how="semi")
    assert matched.height == impressions.height
    # ... and every view of a sampled user is an impression
    sampled = views.filter(pl.col("user_id").is_in(impressions["user_id"].unique().implode()) & pl.col("item_id").is_not_null())
    assert sampled.height == impressions.height
    assert impressions.equals(impressions.sort("timestamp", "user_id", maintain_order=True))


def test_deterministic(prepared, tmp_path):
    out, summary = prepared(NAME)
    again = trivago_views.prepare(source_dir(NAME), tmp_path / "again")
    assert again == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")


def _raw_clickouts(raw: pl.DataFrame) -> pl.DataFrame:
    return raw.filter(pl.col("action_type") == "clickout item").select("user_id", pl.col("hotel").alias("item_id"), pl.col("timestamp").alias("tc"))


def test_label_is_a_clickout_of_the_same_hotel_within_the_hour(store, raw, prepared):
    examples, manifest = store
    out, _ = prepared(NAME)
    data_end = int(pl.read_parquet(out / "events.parquet")["timestamp"].max())
    train_end, validation_end = manifest["splits"]["train_end"], manifest["splits"]["validation_end"]
    clickouts = _raw_clickouts(raw)
    assert "label__viewed" not in examples.columns
    label = examples["label__clickout"]
    assert label.is_nan().sum() == manifest["counts"]["labels.clickout.missing"] > 0
    assert 0 < label.fill_nan(0).sum() == manifest["counts"]["labels.clickout.positives"]

    # censored exactly where t + 1 h runs past the impression's split or the data
    last = pl.when(pl.col("split") == 0).then(train_end - 1).when(pl.col("split") == 1).then(validation_end - 1).otherwise(data_end)
    censored = examples.select(((pl.col("timestamp") + WINDOW > last) | (pl.col("timestamp") + WINDOW > data_end)).alias("c"))["c"]
    assert (label.is_nan() == censored).all()

    # every observed label: 1 exactly when a raw clickout of the same user and hotel is in (t, t + 3600]
    hits = (
        examples.join(clickouts, on=["user_id", "item_id"], how="left")
        .with_columns(((pl.col("tc") > pl.col("timestamp")) & (pl.col("tc") <= pl.col("timestamp") + WINDOW)).fill_null(False).alias("hit"))
        .group_by("request_id")
        .agg(pl.col("hit").any())
    )
    observed = examples.filter(~pl.col("label__clickout").is_nan()).join(hits, on="request_id")
    assert (observed["label__clickout"] == observed["hit"].cast(pl.Float32)).all()

    # and a handful by hand, straight from the raw rows (window edges included)
    rows = {tuple(r) for r in clickouts.iter_rows()}
    picked = pl.concat([observed.filter(pl.col("label__clickout") == v).head(10) for v in (0.0, 1.0)])
    for row in picked.iter_rows(named=True):
        t = row["timestamp"]
        expected = any((row["user_id"], row["item_id"], t + dt) in rows for dt in range(1, WINDOW + 1))
        assert row["label__clickout"] == float(expected), row


def test_same_second_clickout_is_not_a_conversion(store, raw):
    examples, _ = store
    clickouts = _raw_clickouts(raw)
    near = examples.join(clickouts, on=["user_id", "item_id"], how="inner").filter(
        (pl.col("tc") >= pl.col("timestamp")) & (pl.col("tc") <= pl.col("timestamp") + WINDOW)
    )
    only_same_second = near.group_by("request_id").agg((pl.col("tc") == pl.col("timestamp")).all().alias("same"), pl.col("label__clickout").first())
    only_same_second = only_same_second.filter(pl.col("same"))
    assert only_same_second.height > 0, "the sample has views with a clickout in their own second"
    assert not (only_same_second["label__clickout"] == 1.0).any()
    assert (only_same_second["label__clickout"].is_nan() | (only_same_second["label__clickout"] == 0.0)).all()


def test_cli_options(tmp_path, capsys):
    from eventrec.adapters.__main__ import main

    main([NAME, str(tmp_path / "out"), "--source", str(source_dir(NAME)), "--option", "max_users=20", "--option", "seed=3"])
    printed = capsys.readouterr().out
    assert '"max_users": 20' in printed and '"seed": 3' in printed
    assert pl.read_parquet(tmp_path / "out" / "events.parquet")["user_id"].n_unique() == 20
    with pytest.raises(SystemExit):
        main([NAME, str(tmp_path / "bad"), "--option", "negatives=3"])
    assert "not an option of adapter 'trivago_views'" in capsys.readouterr().err
