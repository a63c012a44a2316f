"""The synthetic ads world: determinism, file format, base rates, label/event consistency, the
order dependence of the true probabilities, drift, the A/B candidates, and speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from eventrec.synthetic import World, WorldConfig, generate_world, load_world, true_probabilities
from eventrec.synthetic.world import DAY

SCHEMA = Path(__file__).resolve().parents[1] / "eventrec" / "schemas" / "synthetic.yaml"
FILES = ("events.parquet", "impressions.parquet", "ad_content.parquet", "candidates.parquet", "world.json")


@pytest.fixture(scope="module")
def world10k(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("synthetic") / "world"
    started = time.perf_counter()
    summary = generate_world(out, num_users=10_000, days=30, seed=0)
    return out, summary, time.perf_counter() - started


@pytest.fixture(scope="module")
def tables(world10k):
    out = world10k[0]
    return {name: pl.read_parquet(out / f"{name}.parquet") for name in ("events", "impressions", "ad_content",
                                                                          "candidates")}


def test_10k_users_generate_in_seconds(world10k):
    out, summary, seconds = world10k
    assert seconds < 20, f"10k users took {seconds:.1f}s"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert summary["counts"]["events"] > 50_000 and summary["counts"]["impressions"] > 30_000


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    kwargs = dict(num_users=2_000, days=10, num_candidate_requests=200)
    a = generate_world(tmp_path / "a", seed=7, **kwargs)
    generate_world(tmp_path / "b", seed=7, **kwargs)
    c = generate_world(tmp_path / "c", seed=8, **kwargs)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("events.parquet", "impressions.parquet", "candidates.parquet"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert a["counts"] != c["counts"]


def test_columns_and_dtypes(tables):
    ev, imp, content, cand = tables["events"], tables["impressions"], tables["ad_content"], tables["candidates"]
    assert dict(ev.schema) == {
        "user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "ad_id": pl.Int64,
        "advertiser_id": pl.Int64, "category": pl.Int64, "price": pl.Float64, "content_id": pl.Int64,
        "topics": pl.List(pl.String), "page_id": pl.Int64}
    assert dict(imp.schema) == {
        "request_id": pl.Int64, "user_id": pl.Int64, "ad_id": pl.Int64, "timestamp": pl.Int64,
        "advertiser_id": pl.Int64, "category": pl.Int64, "price": pl.Float64, "placement": pl.String,
        "hour_of_day": pl.Int64, "click": pl.Int8, "conversion": pl.Int8, "p_click": pl.Float64,
        "p_conversion": pl.Float64}
    assert dict(content.schema) == {"ad_id": pl.Int64, "embedding": pl.List(pl.Float32)}
    assert dict(cand.schema) == {
        "request_id": pl.Int64, "user_id": pl.Int64, "timestamp": pl.Int64, "ad_id": pl.Int64,
        "advertiser_id": pl.Int64, "category": pl.Int64, "price": pl.Float64, "placement": pl.String,
        "hour_of_day": pl.Int64, "p_click": pl.Float64, "p_conversion": pl.Float64}
    assert set(ev["event_type"].unique()) == {"ad_click", "ad_conversion", "content_view", "page_like"}
    assert set(imp["placement"].unique()) == {"feed", "story", "sidebar", "search"}
    # nulls exactly where the stream has no such attribute
    is_ad = ev["event_type"].is_in(["ad_click", "ad_conversion"])
    for col in ("ad_id", "advertiser_id", "price"):
        assert (ev[col].is_null() == ~is_ad).all(), col
    assert (ev["content_id"].is_null() == (ev["event_type"] != "content_view")).all()
    assert (ev["topics"].is_null() == (ev["event_type"] != "content_view")).all()
    assert ev["topics"].drop_nulls().list.len().is_between(1, 3).all()
    assert (ev["page_id"].is_null() == (ev["event_type"] != "page_like")).all()
    for frame in (ev, imp, cand):
        assert sum(frame[c].null_count() for c in ("user_id", "timestamp", "category")) == 0
    assert content["embedding"].list.len().unique().to_list() == [16]
    assert imp["hour_of_day"].equals(((imp["timestamp"] % DAY) // 3600).alias("hour_of_day"))
    # sorted by (user_id, timestamp)
    for frame in (ev, imp, cand):
        key = frame["user_id"] * (1 << 32) + (frame["timestamp"] - frame["timestamp"].min())
        assert key.is_sorted(), "rows must be sorted by (user_id, timestamp)"


def test_every_column_the_schema_names_exists(tables):
    schema = yaml.safe_load(SCHEMA.read_text())
    ev, imp, content = tables["events"], tables["impressions"], tables["ad_content"]
    e = schema["events"]
    assert {e["user_column"], e["timestamp_column"], e["type_column"]} <= set(ev.columns)
    types = set(ev["event_type"].unique())
    for stream in schema["streams"]:
        assert set(stream["event_types"]) <= types
        for attr in stream["attributes"]:
            if attr["kind"] != "embedding":
                assert (attr.get("column") or attr["name"]) in ev.columns, (stream["name"], attr["name"])
    i = schema["impressions"]
    needed = {i["user_column"], i["item_column"], i["timestamp_column"], i["request_column"], *i["labels"],
              *i["extra_columns"]}
    needed |= {a["name"] for a in i["item_attributes"] + i["context_attributes"] if a["kind"] != "embedding"}
    assert needed <= set(imp.columns)
    for t in schema["content_tables"]:
        assert {t["key_column"], t["vector_column"]} <= set(content.columns)


def test_base_rates(world10k, tables):
    imp = tables["impressions"]
    ctr = imp["click"].mean()
    clicked_tracked = imp.filter((pl.col("click") == 1) & pl.col("conversion").is_not_null())
    cvr = clicked_tracked["conversion"].mean()
    assert 0.015 < ctr < 0.06, ctr
    assert 0.04 < cvr < 0.2, cvr
    assert abs(imp["p_click"].mean() - ctr) < 0.005
    assert 0.1 < imp["conversion"].is_null().mean() < 0.3  # advertisers that do not track conversions
    assert (imp.filter(pl.col("click") == 0)["conversion"].drop_nulls() == 0).all()
    assert imp["p_click"].is_between(0, 1, closed="none").all() and imp["p_conversion"].is_between(0, 1).all()
    summary = json.loads((world10k[0] / "world.json").read_text())
    assert summary["counts"]["impressions"] == len(imp)
    assert summary["counts"]["clicks"] == imp["click"].sum()


def test_clicks_and_conversions_are_events_strictly_after_their_impression(tables):
    ev, imp = tables["events"], tables["impressions"]
    clicks = ev.filter(pl.col("event_type") == "ad_click")
    convs = ev.filter(pl.col("event_type") == "ad_conversion")
    assert len(clicks) == imp["click"].sum()
    assert len(convs) == imp["conversion"].fill_null(0).sum()  # only tracked conversions are logged
    shown = imp.select("request_id", "user_id", "ad_id", pl.col("timestamp").alias("t_imp"), "click", "conversion")
    for events, label, lo, hi in ((clicks, "click", 1, 60), (convs, "conversion", 62, 660)):
        joined = shown.join(events.select("user_id", "ad_id", "timestamp"), on=["user_id", "ad_id"])
        delay = joined["timestamp"] - joined["t_imp"]
        matched = joined.filter(delay.is_between(lo, hi))
        # every labelled impression has its event within the delay window, strictly after it
        positives = shown.filter(pl.col(label) == 1)
        assert matched.select("request_id", "ad_id").unique().height == len(positives)
        assert (matched[label] == 1).all()


def test_equal_timestamps_exist(tables):
    ev, imp = tables["events"], tables["impressions"]
    same_second = ev.group_by("user_id", "timestamp").len().filter(pl.col("len") > 1)
    assert len(same_second) > 100
    at_impression = ev.join(imp.select("user_id", "timestamp").unique(), on=["user_id", "timestamp"])
    assert len(at_impression) > 50
    # no exact duplicate events (stores may drop them, which would change the truth)
    assert ev.select(pl.exclude("topics")).unique().height == len(ev)


def test_recomputed_probabilities_equal_the_simulation(world10k, tables):
    imp = tables["impressions"]
    again = true_probabilities(world10k[0], imp.drop("p_click", "p_conversion"))
    assert np.array_equal(again["p_click"].to_numpy(), imp["p_click"].to_numpy())
    assert np.array_equal(again["p_conversion"].to_numpy(), imp["p_conversion"].to_numpy())


def _query(world: World, user: int, t: int, ad: int) -> pl.DataFrame:
    start = world.config.start_timestamp
    return pl.DataFrame({"user_id": [user], "timestamp": [start + t], "ad_id": [ad + 1], "placement": ["feed"]})


def _views(world: World, user: int, items: list[tuple[int, int]]) -> pl.DataFrame:
    """Content views (t, category) of one user, in the events.parquet format."""
    start = world.config.start_timestamp
    n = len(items)
    return pl.DataFrame({
        "user_id": [user] * n, "event_type": ["content_view"] * n, "timestamp": [start + t for t, _ in items],
        "ad_id": [None] * n, "advertiser_id": [None] * n, "category": [c + 1 for _, c in items],
        "price": [None] * n, "content_id": [1] * n, "topics": [["t000"]] * n, "page_id": [None] * n,
    }, schema_overrides={"ad_id": pl.Int64, "advertiser_id": pl.Int64, "price": pl.Float64, "page_id": pl.Int64})


def test_p_click_depends_on_order_not_only_on_counts():
    world = World(WorldConfig(num_users=50, days=10, num_ads=200, num_contents=500, num_pages=100))
    ad = 0
    c = int(world.ad_category[ad])
    other = next(x for x in range(world.config.num_categories) if x != c and world.next_category[x] != c)
    t = 5 * DAY
    q = _query(world, 1, t, ad)
    # same events, same timestamps, same counts in every window; only the order differs
    candidate_last = true_probabilities(world, q, _views(world, 1, [(t - 3000, other), (t - 60, c)]))
    candidate_first = true_probabilities(world, q, _views(world, 1, [(t - 3000, c), (t - 60, other)]))
    p_last, p_first = candidate_last["p_click"].item(), candidate_first["p_click"].item()
    assert p_last > 1.5 * p_first, (p_last, p_first)
    # the funnel: the most recent event's category is the predecessor of the candidate's
    prev = int(np.flatnonzero(world.next_category == c)[0])
    funnel = true_probabilities(world, q, _views(world, 1, [(t - 3000, other), (t - 60, prev)]))
    reverse = true_probabilities(world, q, _views(world, 1, [(t - 3000, prev), (t - 60, other)]))
    assert funnel["p_click"].item() > 1.5 * reverse["p_click"].item()
    # equal-timestamp rule: an event at the query's second is not history, one a second earlier is
    base = true_probabilities(world, q, _views(world, 1, [(t - 3000, other)]))["p_click"].item()
    at = true_probabilities(world, q, _views(world, 1, [(t - 3000, other), (t, c)]))["p_click"].item()
    before = true_probabilities(world, q, _views(world, 1, [(t - 3000, other), (t - 1, c)]))["p_click"].item()
    assert at == base and before > 1.5 * base


def test_p_click_co_occurrence_and_recency():
    world = World(WorldConfig(num_users=50, days=10, num_ads=200, num_contents=500, num_pages=100))
    ad = 0
    c, a = int(world.ad_category[ad]), int(world.ad_advertiser[ad])
    other_ad = next(j for j in range(world.config.num_ads) if world.ad_advertiser[j] == a and j != ad)
    t = 5 * DAY
    q = _query(world, 2, t, ad)
    start = world.config.start_timestamp
    click = pl.DataFrame({"user_id": [2], "event_type": ["ad_click"], "timestamp": [start + t - 5000],
                          "ad_id": [other_ad + 1], "advertiser_id": [a + 1],
                          "category": [int(world.ad_category[other_ad]) + 1], "price": [1.0], "content_id": [None],
                          "topics": [None], "page_id": [None]},
                         schema_overrides={"content_id": pl.Int64, "topics": pl.List(pl.String), "page_id": pl.Int64})
    filler = [(t - 200 + i, (c + 5) % world.config.num_categories) for i in range(3)]  # c is not among the last 3
    view_c = [(t - 4000, c)]
    both = pl.concat([click, _views(world, 2, view_c + filler)]).sort("timestamp")
    only_click = pl.concat([click, _views(world, 2, [(t - 4000, (c + 7) % world.config.num_categories)] + filler)])
    only_view = _views(world, 2, view_c + filler)
    p_both = true_probabilities(world, q, both)["p_click"].item()
    p_click_only = true_probabilities(world, q, only_click.sort("timestamp"))["p_click"].item()
    p_view_only = true_probabilities(world, q, only_view)["p_click"].item()
    assert p_both / p_click_only > 1.5 and p_both / p_view_only > 1.5
    # recency: the same single matching event, 2 minutes vs 20 hours ago
    recent = true_probabilities(world, q, _views(world, 2, [(t - 120, c)]))["p_click"].item()
    old = true_probabilities(world, q, _views(world, 2, [(t - 20 * 3600, c)]))["p_click"].item()
    assert recent > 1.3 * old


def test_interests_drift(world10k, tables):
    world = load_world(world10k[0])
    users = np.arange(world.config.num_users)
    T = world.config.duration
    early = world.interest(users, np.zeros(len(users)))
    late = world.interest(users, np.full(len(users), T))
    tv = 0.5 * np.abs(early - late).sum(axis=1)
    assert tv.mean() > 0.25
    # and the logs show it: the share of views in each user's initial top category falls over time
    ev = tables["events"].filter(pl.col("event_type") == "content_view")
    top = pl.DataFrame({"user_id": users + 1, "top": early.argmax(axis=1) + 1})
    start = world.config.start_timestamp
    ev = ev.join(top, on="user_id").with_columns(((pl.col("timestamp") - start) / T).alias("f"))
    share_early = ev.filter(pl.col("f") < 0.25).select((pl.col("category") == pl.col("top")).mean()).item()
    share_late = ev.filter(pl.col("f") > 0.75).select((pl.col("category") == pl.col("top")).mean()).item()
    assert share_early > share_late + 0.05, (share_early, share_late)


def test_candidates_are_held_out_requests_after_the_quantile(world10k, tables):
    imp, cand = tables["impressions"], tables["candidates"]
    summary = json.loads((world10k[0] / "world.json").read_text())
    cutoff = imp["timestamp"].sort()[int(0.8 * len(imp))]
    assert summary["candidate_cutoff_timestamp"] == cutoff
    assert (cand["timestamp"] > cutoff).all()
    per_request = cand.group_by("request_id").agg(pl.len(), pl.col("ad_id").n_unique().alias("distinct"))
    assert len(per_request) == 2000
    assert (per_request["len"] == 50).all() and (per_request["distinct"] == 50).all()
    # each is a real request (same user, time, placement): no new events, the pool is counterfactual
    requests = imp.select("request_id", "user_id", "timestamp", "placement").unique()
    keyed = cand.select("request_id", "user_id", "timestamp", "placement").unique()
    assert keyed.join(requests, on=["request_id", "user_id", "timestamp", "placement"]).height == len(keyed)
    # their probabilities are the world's truth given the logged history
    again = true_probabilities(world10k[0], cand.drop("p_click", "p_conversion"))
    assert np.allclose(again["p_click"].to_numpy(), cand["p_click"].to_numpy(), rtol=0, atol=1e-12)
    # the pools vary: ranking by truth beats a random pick
    best = cand.group_by("request_id").agg(pl.col("p_click").max()).get_column("p_click").mean()
    assert best > 3 * cand["p_click"].mean()


def test_refuses_to_replace_a_directory_that_is_not_a_world(tmp_path):
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_world(other, num_users=100, days=3, num_candidate_requests=10)
    assert (other / "notes.txt").read_text() == "keep me"
    world = tmp_path / "w"
    generate_world(world, num_users=100, days=3, num_candidate_requests=10)
    generate_world(world, num_users=120, days=3, num_candidate_requests=10)  # a world is replaced
    assert json.loads((world / "world.json").read_text())["config"]["num_users"] == 120
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="num_users"):
        WorldConfig(num_users=0)
    with pytest.raises(ValueError, match="policy_mix"):
        WorldConfig(policy_mix=(0.5, 0.5, 0.5))
    with pytest.raises(TypeError):
        generate_world("/nonexistent/never", num_users=10, no_such_parameter=1)
