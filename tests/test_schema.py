from __future__ import annotations

import copy

import pytest
import yaml

from eventrec.schema import SchemaError, builtin_schema_path, load_schema, parse_schema
from tiny_world import SCHEMA


def _write(tmp_path, data) -> str:
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tiny_schema_loads(tmp_path):
    schema = load_schema(_write(tmp_path, SCHEMA))
    assert [s.name for s in schema.streams] == ["click", "view"]
    assert schema.stream("click").max_length == 3
    assert schema.stream("click").id_attribute == "ad_id"
    assert schema.hash_buckets("ad_id") == 97


@pytest.mark.parametrize("name", ["synthetic", "trivago", "trivago_views", "trivago_lists_small", "ml100k", "ml100k_conversion", "amazon_grocery", "amazon_grocery_conversion"])
def test_builtin_schemas_load(name):
    load_schema(builtin_schema_path(name))


def _error(tmp_path, mutate) -> str:
    data = copy.deepcopy(SCHEMA)
    mutate(data)
    with pytest.raises(SchemaError) as info:
        load_schema(_write(tmp_path, data))
    return str(info.value)


def test_error_names_file_field_and_expectation(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][0]["attributes"][1].update(kind="categ"))
    assert "schema.yaml" in message
    assert "streams.0.attributes.1" in message
    assert "categorical" in message and "'categ'" in message


def test_unknown_field_is_rejected(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][0].update(max_lenght=5))
    assert "streams.0.max_lenght" in message


def test_bad_max_length(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][1].update(max_length=0))
    assert "streams.1.max_length" in message and "greater than or equal to 1" in message


def test_unknown_sampling_policy(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][0].update(sampling="value_based_v9"))
    assert "streams.0.sampling" in message and "most_recent" in message


def test_splits_need_both_boundaries(tmp_path):
    message = _error(tmp_path, lambda d: d.update(splits={"train_end": 5}))
    assert "splits" in message and "validation_end" in message


def test_missing_section(tmp_path):
    message = _error(tmp_path, lambda d: d.pop("impressions"))
    assert "impressions" in message and "Field required" in message


def test_embedding_key_must_be_categorical(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][0]["attributes"][3].update(key="price"))
    assert "key 'price'" in message


def test_unknown_content_table(tmp_path):
    message = _error(tmp_path, lambda d: d["streams"][0]["attributes"][3].update(table="nope"))
    assert "unknown content table 'nope'" in message


def test_shared_vocabulary_must_share_kind(tmp_path):
    def mutate(d):
        d["impressions"]["item_attributes"][0] = {"name": "ad_id", "kind": "categorical", "vocabulary": "ad_id"}

    assert "share its kind" in _error(tmp_path, mutate)


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("streams: [unclosed")
    with pytest.raises(SchemaError, match="not valid YAML"):
        load_schema(path)
    with pytest.raises(SchemaError, match="not found"):
        load_schema(tmp_path / "absent.yaml")
    with pytest.raises(SchemaError, match="expected a mapping"):
        parse_schema([1, 2], "x.yaml")


def test_an_attribute_is_found_by_name_and_a_missing_one_is_named():
    schema = load_schema(builtin_schema_path("ml100k"))
    assert schema.stream("rating").attribute("movie_id").kind == "hashed"
    assert schema.impressions.item_attribute("genres").kind == "multi_categorical"
    with pytest.raises(KeyError, match="streams.rating: no attribute named 'title'"):
        schema.stream("rating").attribute("title")
    with pytest.raises(KeyError, match="impressions.item_attributes: no attribute named 'rating'"):
        schema.impressions.item_attribute("rating")
