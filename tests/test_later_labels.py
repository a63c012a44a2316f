"""Labels from later events (``impressions.derived_labels``): a hand-computed world, censoring at the
end of the data and at split boundaries, point-in-time safety, errors naming the field."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from eventrec.schema import SchemaError, parse_schema
from eventrec.store.build import build_store
from eventrec.store.layout import schema_fingerprint
from eventrec.store.raw_logs import DataError
from eventrec.store.reader import EventStore

NAN = float("nan")
# (user, time, type, item): u1 buys a at 15, 40 and 225; u2 carts a at 55 (wrong type) and buys a
# at 90, c at 130; u1 views; the last event (t=250) ends the data
EVENTS = [
    (1, 5, "view", "a"), (1, 15, "buy", "a"), (1, 40, "buy", "a"), (2, 55, "cart", "a"), (1, 60, "view", "a"),
    (2, 90, "buy", "a"), (2, 130, "buy", "c"), (1, 225, "buy", "a"), (1, 250, "view", "b"),
]
# (user, time, item, expected purchase within 20 s), in time order (the examples' order): splits train < 100 <= validation < 200 <= test
IMPRESSIONS = [
    (1, 10, "a", 1.0),   # buy a at 15 in (10, 30]
    (1, 15, "a", 0.0),   # the buy at 15 is not strictly after; 40 is past 35
    (1, 20, "b", 0.0),   # buy at 40 is in (20, 40] but of item a, not b
    (1, 20, "a", 1.0),   # ... and for item a it counts: the window's end is included
    (2, 50, "a", 0.0),   # u2's cart at 55 is not a buy; u1's buys are another user's
    (2, 85, "a", NAN),   # (85, 105] crosses train_end: censored although u2 buys a at 90
    (2, 120, "c", 1.0),  # validation: buy c at 130
    (2, 185, "c", NAN),  # (185, 205] crosses validation_end
    (1, 210, "a", 1.0),  # test: buy at 225
    (3, 215, "d", 0.0),  # a user without any event of the key: observed, no purchase
    (1, 240, "a", NAN),  # (240, 260] runs past the end of the data (250)
]
DERIVED = {"name": "purchase", "events": ["buy"], "match": ["item_id"], "window": "20s"}


def _schema_dict(derived: list[dict] | None = None) -> dict:
    impressions = {
        "path": "impressions.parquet", "labels": ["click"],
        "item_attributes": [{"name": "item_id", "kind": "categorical"}],
    }
    if derived is not None:
        impressions["derived_labels"] = derived
    return {
        "name": "later", "events": {"path": "events.parquet", "type_column": "event_type"},
        "streams": [{"name": "view", "event_types": ["view", "buy"], "max_length": 8,
                     "attributes": [{"name": "item_id", "kind": "categorical"}]}],
        "impressions": impressions,
        "splits": {"train_end": 100, "validation_end": 200},
    }


@pytest.fixture()
def world(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    pl.DataFrame(EVENTS, schema=["user_id", "timestamp", "event_type", "item_id"], orient="row").write_parquet(data / "events.parquet")
    rows = [(u, t, i, 0) for u, t, i, _ in IMPRESSIONS]
    pl.DataFrame(rows, schema=["user_id", "timestamp", "item_id", "click"], orient="row").write_parquet(data / "impressions.parquet")
    return data


def _build(world: Path, out: Path, derived: list[dict] | None) -> EventStore:
    build_store(parse_schema(_schema_dict(derived)), world, out)
    return EventStore(out)


def test_hand_computed_labels_and_counts(world, tmp_path):
    store = _build(world, tmp_path / "store", [DERIVED])
    assert store.label_names == ["click", "purchase"]
    expected = np.array([e for *_, e in IMPRESSIONS], dtype=np.float32)
    np.testing.assert_array_equal(store.labels[:, 1], expected)  # NaN == NaN for assert_array_equal
    counts = store.manifest["counts"]
    assert counts["labels.purchase.censored.split_boundary"] == 2
    assert counts["labels.purchase.censored.end_of_data"] == 1
    assert counts["labels.purchase.missing"] == 3
    assert counts["labels.purchase.positives"] == 4


def test_without_match_any_item_counts_and_types_select_events(world, tmp_path):
    derived = [{"name": "purchase", "events": ["buy", "cart"], "window": 20}]
    labels = _build(world, tmp_path / "store", derived).labels[:, 1]
    # impression 2 (item b) now sees u1's buy of a at 40; impression 4 sees u2's cart at 55
    assert labels[2] == 1.0 and labels[4] == 1.0


def test_match_columns_with_different_names(world, tmp_path):
    events = pl.read_parquet(world / "events.parquet").rename({"item_id": "sku"})
    events.with_columns(item_id=pl.col("sku")).write_parquet(world / "events.parquet")
    derived = [dict(DERIVED, match=[{"impression": "item_id", "event": "sku"}])]
    labels = _build(world, tmp_path / "store", derived).labels[:, 1]
    np.testing.assert_array_equal(labels, np.array([e for *_, e in IMPRESSIONS], dtype=np.float32))


def test_a_derived_label_never_feeds_a_history(world, tmp_path):
    plain, labelled = _build(world, tmp_path / "a", None), _build(world, tmp_path / "b", [DERIVED])
    users = [hashlib.sha256((s.path / "users.parquet").read_bytes()).hexdigest() for s in (plain, labelled)]
    assert users[0] == users[1]
    a = pl.read_parquet(plain.path / "examples.parquet")
    b = pl.read_parquet(labelled.path / "examples.parquet")
    assert a.equals(b.drop("label__purchase"))
    # the buy at 15 is in the stream, but not the history of the impression at 15 (strictly before)
    assert plain.cuts["view"].tolist()[:3] == [1, 1, 2]


def test_a_schema_without_derived_labels_dumps_and_fingerprints_as_before():
    plain, empty = parse_schema(_schema_dict()), parse_schema(_schema_dict([]))
    assert "derived_labels" not in plain.model_dump(mode="json")["impressions"]
    assert schema_fingerprint(plain) == schema_fingerprint(empty)
    with_label = parse_schema(_schema_dict([DERIVED]))
    assert with_label.model_dump(mode="json")["impressions"]["derived_labels"][0]["window"] == "20s"
    assert parse_schema(with_label.model_dump(mode="json")) == with_label  # the manifest's schema reloads


@pytest.mark.parametrize("change, field", [
    ({"window": "24 hours"}, "impressions.derived_labels.0.window"),
    ({"window": 0}, "impressions.derived_labels.0.window"),
    ({"events": []}, "impressions.derived_labels.0.events"),
    ({"censored": "negative"}, "impressions.derived_labels.0.censored"),
    ({"name": "click"}, "repeated: ['click']"),
    ({"match": [{"impression": "item_id"}]}, "impressions.derived_labels.0.match.0"),
    ({"windw": "1h"}, "impressions.derived_labels.0.windw"),
])
def test_schema_errors_name_the_field(change, field):
    with pytest.raises(SchemaError, match=field.replace("[", r"\[").replace(".", r"\.")):
        parse_schema(_schema_dict([dict(DERIVED, **change)]))


def test_derived_labels_need_typed_events():
    schema = _schema_dict([DERIVED])
    schema["events"] = {"path": "events.parquet", "type_column": None}
    schema["streams"][0].pop("event_types")
    with pytest.raises(SchemaError, match="derived_labels.purchase: needs events with a type column"):
        parse_schema(copy.deepcopy(schema))


def test_a_missing_match_column_is_named(world, tmp_path):
    derived = [dict(DERIVED, match=[{"impression": "item_id", "event": "sku"}])]
    with pytest.raises(DataError, match="missing column 'sku'"):
        _build(world, tmp_path / "store", derived)


@pytest.mark.parametrize("kind", ["sequence", "dlrm"])
def test_a_derived_label_is_one_more_task(world, tmp_path, kind):
    import torch

    from eventrec.model.config import DlrmConfig, SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.training.factory import batch_function, build_model
    from eventrec.training.objectives.losses import multitask_loss

    store = _build(world, tmp_path / "store", [DERIVED])
    config = (SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8]) if kind == "sequence"
              else DlrmConfig(attribute_dim=4, bottom_mlp=[8, 4], top_mlp=[8]))
    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(store), config)
    batch = batch_function(config)(store, np.arange(store.num_examples))
    logits = model(batch)
    assert logits.shape == (store.num_examples, 2) and batch.labels.shape == (store.num_examples, 2)
    assert torch.isfinite(multitask_loss(logits, batch.labels)[0])  # censored (NaN) labels are skipped


def test_the_docs_example_builds(tmp_path):
    import re

    import yaml

    text = (Path(__file__).parents[1] / "docs" / "schema.md").read_text()
    section = text.split("## Labels from later events", 1)[1].split("\n## ", 1)[0]
    schema = parse_schema(yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1)))
    assert schema.impressions.all_labels == ["purchase"]  # no logged label: the derived one is the store's only label
    assert schema.impressions.derived_labels[0].window_seconds == 86400
    hour, data = 3600, tmp_path / "data"
    data.mkdir()
    events = [(1, h * hour, "view", "a", "x") for h in range(0, 96, 6)] + [(1, 7 * hour, "purchase", "a", "x")]
    pl.DataFrame(events, schema=["user_id", "ts", "event_type", "item_id", "category"], orient="row").write_csv(data / "events.csv")
    views = [(1, h * hour, "a", "x") for h in range(0, 96, 6)]
    pl.DataFrame(views, schema=["user_id", "ts", "item_id", "category"], orient="row").write_csv(data / "impressions.csv")
    build_store(schema, data, tmp_path / "store")
    labels = EventStore(tmp_path / "store").labels[:, 0]
    assert labels[0] == 1.0 and labels[1] == 1.0 and labels[2] == 0.0  # views at 0 h and 6 h precede the purchase at 7 h
    assert np.isnan(labels[-1])


def test_a_schema_needs_some_label():
    from eventrec.schema import SchemaError

    document = {"name": "x", "events": {"path": "e.parquet"}, "streams": [{"name": "s", "event_types": ["v"], "max_length": 4,
                "attributes": [{"name": "item_id", "kind": "categorical"}]}],
                "impressions": {"path": "i.parquet", "item_attributes": [{"name": "item_id", "kind": "categorical"}]},
                "splits": {"train_fraction": 0.8, "validation_fraction": 0.1}}
    with pytest.raises((SchemaError, ValueError), match="at least one label"):
        parse_schema(document)
