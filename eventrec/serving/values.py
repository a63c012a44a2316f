"""Per-value checks of raw request records, before any encoding: every bad value is an
:class:`InvalidInput` (HTTP 422) naming its field, never a server error.

What each attribute kind accepts (``None`` is a null everywhere, as in the raw logs):

* ``hashed``: an integer or a string (not a float such as ``1.5``, a boolean, a list or an object);
* ``categorical``: an integer, a string or a boolean;
* ``multi_categorical``: a list of integers / strings;
* ``numeric``: an integer or a float, NaN included (a null, as the build counts it), not ±inf;
* ``embedding`` read from a column: a list of ``dim`` finite numbers;
* a timestamp: an integer (or an integral float) in the build's range, ``[1970-01-01, 2200-01-01)``
  once converted to seconds (:data:`~eventrec.store.raw_logs.MAX_TIMESTAMP_SECONDS`).
"""

from __future__ import annotations

import math
from typing import Any

from eventrec.schema import CategoricalAttribute, EmbeddingAttribute, HashedAttribute, MultiCategoricalAttribute, NumericAttribute
from eventrec.serving.errors import InvalidInput
from eventrec.store.raw_logs import MAX_TIMESTAMP_SECONDS, TIMESTAMP_SCALE


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _id_like(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


def value_problem(attribute: Any, value: Any) -> str | None:
    """Why ``value`` is not a valid raw value of ``attribute`` (None: it is)."""
    if value is None:
        return None
    if isinstance(attribute, HashedAttribute):
        return None if _id_like(value) else f"a hashed id must be an integer or a string, got {type(value).__name__} {value!r:.40}"
    if isinstance(attribute, CategoricalAttribute):
        ok = _id_like(value) or isinstance(value, bool)
        return None if ok else f"a category must be an integer, a string or a boolean, got {type(value).__name__} {value!r:.40}"
    if isinstance(attribute, MultiCategoricalAttribute):
        ok = isinstance(value, list) and all(v is None or _id_like(v) for v in value)
        return None if ok else f"must be a list of integers or strings, got {value!r:.60}"
    if isinstance(attribute, NumericAttribute):
        if not _is_number(value):
            return f"must be a number, got {type(value).__name__} {value!r:.40}"
        return None if not (isinstance(value, float) and math.isinf(value)) else f"must be finite (or NaN / null), got {value!r}"
    if isinstance(attribute, EmbeddingAttribute) and not attribute.table:
        ok = isinstance(value, list) and len(value) == attribute.dim and all(_is_number(v) and math.isfinite(v) for v in value)
        return None if ok else f"must be a list of {attribute.dim} finite numbers, got {value!r:.60}"
    return None


def check_value(attribute: Any, value: Any, field: str) -> None:
    """Raise :class:`InvalidInput` naming ``field`` when ``value`` is not a valid raw value of ``attribute``."""
    problem = value_problem(attribute, value)
    if problem is not None:
        raise InvalidInput(f"{field}: {problem}", field)


_ID_TYPES = {HashedAttribute: frozenset({int, str, type(None)}), CategoricalAttribute: frozenset({int, str, bool, type(None)})}
_NUMBER_TYPES = frozenset({int, float, type(None)})


def column_valid(attribute: Any, values: list) -> bool:
    """Whether every value of a column is certainly valid, from the exact types of its values (one
    pass at C speed): True only where :func:`value_problem` accepts every value; False means "check
    value by value" (there may be no problem at all, e.g. a subclass of ``int``)."""
    types = set(map(type, values))
    kind = type(attribute)
    if kind in _ID_TYPES:
        return types <= _ID_TYPES[kind]
    if kind is NumericAttribute:
        if not types <= _NUMBER_TYPES:
            return False
        return float not in types or not any(map(math.isinf, (v for v in values if type(v) is float)))
    if kind is MultiCategoricalAttribute:
        if not types <= {list, type(None)}:
            return False
        inner = set(map(type, (v for value in values if value is not None for v in value)))
        return inner <= _ID_TYPES[HashedAttribute]
    if kind is EmbeddingAttribute and attribute.table:
        return True  # looked up by key: nothing of its own to check
    return False


def check_column(attribute: Any, values: list, field: str) -> None:
    """:func:`check_value` of every value of a column (``field[i]`` names the first bad one), with
    whole columns of plainly valid values accepted in one pass (the columnar form of a request)."""
    if column_valid(attribute, values):
        return
    for i, value in enumerate(values):
        check_value(attribute, value, f"{field}[{i}]")


def timestamp_seconds(value: Any, unit: str, field: str, latest_seconds: int | None = None) -> int:
    """A raw timestamp in ``unit`` as whole seconds, checked like the build checks raw logs (and, when
    ``latest_seconds`` is given, not later than it); :class:`InvalidInput` naming ``field`` otherwise."""
    if not _is_number(value) or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise InvalidInput(f"{field}: must be an integer timestamp (unit {unit!r}), got {type(value).__name__} {value!r:.40}", field)
    seconds = int(value) // TIMESTAMP_SCALE[unit]
    if not 0 <= seconds < MAX_TIMESTAMP_SECONDS:
        raise InvalidInput(f"{field}: timestamp {value!r} out of range: {seconds} s is not in [1970-01-01, 2200-01-01) "
                           f"(unit {unit!r}: a time in another unit?)", field)
    if latest_seconds is not None and seconds > latest_seconds:
        raise InvalidInput(f"{field}: timestamp {value!r} ({seconds} s) is later than the server's clock allows ({latest_seconds} s: "
                           f"now + future_tolerance_s; unit {unit!r}: a time in another unit?)", field)
    return seconds
