"""Candidates checked a column at a time: the same acceptance and the same first error as value by
value, and the same frame from records as from columns (mixed types take their supertype)."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventrec.schema import CategoricalAttribute, EmbeddingAttribute, HashedAttribute, MultiCategoricalAttribute, NumericAttribute
from eventrec.serving import RankingService
from eventrec.serving.errors import InvalidInput
from eventrec.serving.values import check_column, check_value, column_valid

ATTRIBUTES = [
    HashedAttribute(name="h", kind="hashed", buckets=101),
    CategoricalAttribute(name="c", kind="categorical"),
    MultiCategoricalAttribute(name="m", kind="multi_categorical"),
    NumericAttribute(name="n", kind="numeric"),
    EmbeddingAttribute(name="e", kind="embedding", dim=2),
]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=3), st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=2)), max_size=3),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def first_error(attribute, values: list) -> str | None:
    for i, value in enumerate(values):
        try:
            check_value(attribute, value, f"x[{i}]")
        except InvalidInput as error:
            return str(error)
    return None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ATTRIBUTES), st.lists(VALUES, max_size=6))
def test_a_column_is_judged_as_its_values(attribute, values):
    """``column_valid`` never accepts a column with a bad value, and ``check_column`` raises the
    error value-by-value checking raises first (or none)."""
    expected = first_error(attribute, values)
    if column_valid(attribute, values):
        assert expected is None
    try:
        check_column(attribute, values, "x")
        got = None
    except InvalidInput as error:
        got = str(error)
    assert got == expected


def test_plain_columns_take_the_one_pass_path():
    assert column_valid(ATTRIBUTES[0], [1, "a", None]) and not column_valid(ATTRIBUTES[0], [1, True])
    assert column_valid(ATTRIBUTES[1], [1, "a", True, None])
    assert column_valid(ATTRIBUTES[2], [[1, "a"], None, []]) and not column_valid(ATTRIBUTES[2], [[1.5]])
    assert column_valid(ATTRIBUTES[3], [1, 2.5, math.nan, None]) and not column_valid(ATTRIBUTES[3], [1.0, math.inf])
    with pytest.raises(InvalidInput, match=r"x\[1\]: must be finite"):
        check_column(ATTRIBUTES[3], [1.0, -math.inf], "x")


def test_records_and_columns_give_one_frame(served):
    """Mixed id types (an integer and a string) give the same String column either way; a bad value
    is named by its record or by its column's index."""
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    records = [{"ad_id": 5, "category": "hats"}, {"ad_id": "6", "category": "shoes"}, {"ad_id": 7, "category": 3}]
    columns = {k: [r[k] for r in records] for k in records[0]}
    as_records, as_columns = service.candidate_frame(records), service.candidate_frame(columns)
    assert as_records.equals(as_columns) and as_records.schema == as_columns.schema
    assert as_records.schema["ad_id"] == pl.String
    np_scores = [service.rank(1, c, {"placement": "feed"}, 1000).scores for c in (records, columns)]
    assert (np_scores[0] == np_scores[1]).all()
    bad = [dict(r) for r in records]
    bad[2]["ad_id"] = True
    with pytest.raises(InvalidInput, match=r"candidates\[2\]\.ad_id"):
        service.candidate_frame(bad)
    with pytest.raises(InvalidInput, match=r"candidates\.ad_id\[2\]"):
        service.candidate_frame({k: [r[k] for r in bad] for k in bad[0]})
    with pytest.raises(InvalidInput, match=r"candidates\[1\]: missing attribute 'category'"):
        service.candidate_frame([records[0], {"ad_id": 5}])
