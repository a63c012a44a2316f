"""Vectors kept at float16, int8 or int4 (per-row scale) in the store: per-event columns and content tables
round-trip within their precision, batches get float32, the schema and the files are checked at load
time with errors naming the field, and a model of the float32 store reads the lower-precision one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from eventrec.data.gather import make_batch
from eventrec.schema import SchemaError, load_schema, parse_schema
from eventrec.store.build import build_store
from eventrec.store.encoding import AttributeEncoder
from eventrec.store.layout import schema_fingerprint
from eventrec.store.reader import EventStore, StoreError
from eventrec.store.vector_precision import (StoredVectors, dequantize_int4, dequantize_int8, from_stored, quantize_int4, quantize_int8,
                                             round_trip, stored_width, to_stored)
from tiny_world import SCHEMA, write_tiny_world

DIM = 3
PRECISIONS = ("float32", "float16", "int8", "int4")


def test_int8_rows_reference():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 7)).astype(np.float32) * np.logspace(-4, 3, 40, dtype=np.float32)[:, None]
    rows[3] = 0.0
    codes, scales = quantize_int8(rows)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and np.abs(codes).max() <= 127
    back = dequantize_int8(codes, scales)
    assert np.array_equal(back[3], np.zeros(7)) and scales[3] == 0
    assert (np.abs(back - rows).max(axis=1) <= scales / 2 * (1 + 1e-6)).all()  # within half a step
    assert np.array_equal(quantize_int8(back)[0], codes)  # a dequantized row quantizes to its codes again
    for precision in PRECISIONS:
        stored = to_stored(rows, precision)
        assert stored.shape == (40, stored_width(7, precision)) and stored.nbytes == 40 * {"float32": 28, "float16": 14, "int8": 11, "int4": 6}[precision]
        vectors = from_stored(stored, precision, 7, "rows")
        np.testing.assert_array_equal(vectors[np.arange(40)], round_trip(rows, precision))
        np.testing.assert_array_equal(vectors[5:9], vectors[np.arange(5, 9)])
        np.testing.assert_array_equal(vectors[5], vectors[5:6][0])
    np.testing.assert_array_equal(round_trip(rows, "int8"), back)
    np.testing.assert_array_equal(round_trip(rows, "float16"), rows.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="rows: stored as float32 rows of \\(7,\\), but the schema says precision 'int8'"):
        from_stored(rows, "int8", 7, "rows")
    with pytest.raises(ValueError, match="precision: expected one of"):
        to_stored(rows, "int2")


@pytest.mark.parametrize("dim", [3, 7, 8, 19])
def test_int4_rows_reference(dim):
    """int4: one float16 scale per 8 elements; every element within half a step of its group's scale
    (the scale is rounded before the codes are taken), zero groups stay zero, two codes per byte as the
    module says (an odd width pads a zero code), and a dequantized row quantizes to its codes again."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(40, dim)).astype(np.float32) * np.logspace(-3, 3, 40, dtype=np.float32)[:, None]
    rows[3] = 0.0
    groups = -(-dim // 8)
    packed, scales = quantize_int4(rows)
    assert packed.dtype == np.uint8 and packed.shape == (40, (dim + 1) // 2) and scales.dtype == np.float16 and scales.shape == (40, groups)
    back = dequantize_int4(packed, scales, dim)
    wide = np.repeat(scales.astype(np.float32), 8, axis=1)[:, :dim]  # each element's scale
    assert np.array_equal(back[3], np.zeros(dim)) and (scales[3] == 0).all()
    assert (np.abs(back - rows) <= wide / 2 * (1 + 1e-3) + np.maximum(np.abs(rows) - 7 * wide, 0)).all()
    for g in range(groups):  # each group's scale is its own largest |x| / 7
        np.testing.assert_array_equal(scales[:, g], (np.abs(rows[:, 8 * g : 8 * g + 8]).max(axis=1) / 7).astype(np.float16))
    codes = np.clip(np.rint(rows / np.where(wide > 0, wide, 1)), -7, 7).astype(np.int64)
    assert np.array_equal((packed & 15).astype(np.int64) - 8, codes[:, 0::2]) and np.array_equal((packed[:, : dim // 2] >> 4).astype(np.int64) - 8, codes[:, 1::2])
    again = quantize_int4(back)
    assert np.array_equal(again[0], packed) and np.array_equal(again[1], scales)
    vectors = from_stored(to_stored(rows, "int4"), "int4", dim, "rows")
    assert vectors.precision == "int4" and vectors.shape == (40, dim) and vectors.nbytes == 40 * ((dim + 1) // 2 + 2 * groups)
    np.testing.assert_array_equal(vectors[:], back)
    np.testing.assert_array_equal(vectors[[5, 2]], back[[5, 2]])


def vector_world(directory: Path, precision: str) -> Path:
    """The tiny world with a per-event vector column ``vec`` (clicks and impressions) and the content
    table, all at ``precision``; returns the schema path."""
    path = write_tiny_world(directory)
    events = pl.read_parquet(directory / "events.parquet")
    events.with_columns(pl.Series("vec", [[i * 0.37, -0.5 * i, 0.25] for i in range(events.height)], dtype=pl.List(pl.Float32))) \
        .write_parquet(directory / "events.parquet")
    impressions = pl.read_parquet(directory / "impressions.parquet")
    impressions.with_columns(pl.Series("vec", [[1.0, 2.0, i / 3] for i in range(impressions.height)], dtype=pl.List(pl.Float32))) \
        .write_parquet(directory / "impressions.parquet")
    schema = yaml.safe_load(path.read_text())
    schema["streams"][0]["attributes"].append({"name": "vec", "kind": "embedding", "dim": DIM, "precision": precision})
    schema["impressions"]["item_attributes"].append({"name": "vec", "kind": "embedding", "dim": DIM, "precision": precision})
    schema["content_tables"][0]["precision"] = precision
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, EventStore]:
    root = tmp_path_factory.mktemp("vector_precision")
    out = {}
    for precision in PRECISIONS:
        schema = vector_world(root / f"logs_{precision}", precision)
        build_store(load_schema(schema), root / f"logs_{precision}", root / f"store_{precision}")
        out[precision] = EventStore.open(root / f"store_{precision}")
    return out


@pytest.mark.parametrize("precision", ["float16", "int8", "int4"])
def test_stores_keep_vectors_at_their_precision_and_batches_get_float32(stores, precision):
    full, low = stores["float32"], stores[precision]
    column, content = low.streams["click"].attributes["vec"], low.content["ad_content/ad_id"]
    assert isinstance(column, StoredVectors) and column.precision == precision and isinstance(low.item["vec"], StoredVectors)
    assert isinstance(content, StoredVectors) and low.streams["click"].looked_up["content"][1] is content
    for stored, reference in ((column, full.streams["click"].attributes["vec"]), (content, full.content["ad_content/ad_id"]),
                              (low.item["vec"], full.item["vec"])):
        assert isinstance(reference, np.ndarray) and reference.dtype == np.float32 and stored.shape == reference.shape
        np.testing.assert_array_equal(stored[:], round_trip(reference, precision))
        dim = reference.shape[1]
        assert stored.nbytes == len(reference) * {"float16": dim * 2, "int8": dim + 4, "int4": (dim + 1) // 2 + 2 * -(-dim // 8)}[precision]
    every = np.arange(full.num_examples)
    a, b = make_batch(full, every), make_batch(low, every)
    tolerance = {"float16": 1e-3, "int8": 0.5 / 127, "int4": 0.5 / 7 * (1 + 1e-3)}[precision]
    for name, x, y in (("click.vec", a.streams["click"].attributes["vec"], b.streams["click"].attributes["vec"]),
                       ("click.content", a.streams["click"].attributes["content"], b.streams["click"].attributes["content"]),
                       ("item.vec", a.item["vec"], b.item["vec"]), ("item.content", a.item["content"], b.item["content"])):
        assert y.dtype == x.dtype and y.shape == x.shape, name
        scale = x.abs().amax(dim=1, keepdim=True)
        assert ((y - x).abs() <= tolerance * scale + 1e-7).all(), name
    assert full.encoding_fingerprint == low.encoding_fingerprint  # precision changes no id nor statistic


def test_encoded_records_read_like_the_store(stores):
    """Serving encodes new events and candidates with the store's encoder: their vectors come back as
    the store would give them (dequantized), equal to what the store holds for the same raw values."""
    for precision, store in stores.items():
        encoder = AttributeEncoder.fitted(store.schema, store.manifest["splits"]["train_end"], store.vocabularies, store.statistics)
        raw = pl.read_parquet(store.path.parent / f"logs_{precision}" / "events.parquet").filter(pl.col("event_type") == "click")
        attribute = next(a for a in store.schema.stream("click").attributes if a.name == "vec")
        encoded = encoder.encode_records("streams.click", [attribute], raw)["vec"]
        assert isinstance(encoded, np.ndarray) and encoded.dtype == np.float32
        stored = store.streams["click"].attributes["vec"][:]
        np.testing.assert_array_equal(np.sort(encoded, axis=0), np.sort(stored, axis=0))


def test_default_precision_changes_no_schema_dump():
    schema = parse_schema(SCHEMA)
    dumped = json.dumps(schema.model_dump(mode="json"))
    assert "precision" not in dumped
    explicit = json.loads(json.dumps(SCHEMA))
    explicit["content_tables"][0]["precision"] = "float32"
    assert schema_fingerprint(parse_schema(explicit)) == schema_fingerprint(schema)
    explicit["content_tables"][0]["precision"] = "int8"
    assert schema_fingerprint(parse_schema(explicit)) != schema_fingerprint(schema)
    assert parse_schema(explicit).model_dump(mode="json")["content_tables"][0]["precision"] == "int8"


def test_precisions_are_validated_naming_the_field(tmp_path):
    bad = json.loads(json.dumps(SCHEMA))
    bad["content_tables"][0]["precision"] = "int2"
    with pytest.raises(SchemaError, match="content_tables.0.precision: Input should be 'float32', 'float16', 'int8' or 'int4'"):
        parse_schema(bad, "s.yaml")
    bad = json.loads(json.dumps(SCHEMA))
    bad["streams"][0]["attributes"][3]["precision"] = "int8"  # a table-looked-up vector: the table's precision
    with pytest.raises(SchemaError, match="streams.0.attributes.3.*set content_tables.ad_content.precision instead"):
        parse_schema(bad, "s.yaml")
    bad = json.loads(json.dumps(SCHEMA))
    bad["impressions"]["item_attributes"].append({"name": "vec", "kind": "embedding", "dim": 3, "precision": "bf16"})
    with pytest.raises(SchemaError, match="impressions.item_attributes.3.*precision"):
        parse_schema(bad, "s.yaml")


def _copy_store(store: EventStore, to: Path) -> Path:
    import shutil

    shutil.copytree(store.path, to)
    return to


def test_files_that_disagree_with_the_schema_are_refused_at_load(stores, tmp_path):
    # a content file written at float32 while the manifest's schema says int8
    copied = _copy_store(stores["int8"], tmp_path / "content")
    np.save(copied / "content__ad_content__ad_id.npy", stores["float32"].content["ad_content/ad_id"], allow_pickle=False)
    with pytest.raises(StoreError, match="content_tables.ad_content.precision .*stored as float32 rows of \\(2,\\).*precision 'int8'"):
        EventStore.open(copied)
    # a stream column at float16 while the schema says int8
    copied = _copy_store(stores["int8"], tmp_path / "column")
    manifest = json.loads((copied / "manifest.json").read_text())
    manifest["schema"]["content_tables"][0]["precision"] = "int8"
    for attribute in manifest["schema"]["streams"][0]["attributes"]:
        if attribute["name"] == "vec":
            attribute["precision"] = "float16"
    (copied / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="streams.click.vec.precision: stored as int8 rows of \\(7,\\).*precision 'float16', dim 3"):
        EventStore.open(copied)


def test_a_model_trained_on_the_float32_store_reads_the_int8_store(stores, tmp_path):
    """Storage precision is not an encoding: the checkpoint's store check accepts the int8 store of the
    same logs, and its predictions move by the vectors' rounding only."""
    import torch

    from eventrec.evaluation.predict import predict
    from eventrec.model.config import SequenceModelConfig
    from eventrec.training.factory import batch_function, load_trained_model
    from eventrec.training.trainer import TrainConfig, train

    torch.manual_seed(0)
    config = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])
    train(stores["float32"], config, TrainConfig(epochs=1, batch_size=4, warmup_steps=1), tmp_path / "run", show_progress=False)
    every = np.arange(stores["float32"].num_examples)
    probs = {}
    for precision, store in stores.items():
        model, _, _, _ = load_trained_model(tmp_path / "run" / "best", store)  # no StoreMismatch
        probs[precision] = predict(model, store, every, batch_function(config))
    assert np.abs(probs["float16"] - probs["float32"]).max() < 1e-2
    assert np.abs(probs["int8"] - probs["float32"]).max() < 5e-2
    assert np.abs(probs["int4"] - probs["float32"]).max() < 1e-1
