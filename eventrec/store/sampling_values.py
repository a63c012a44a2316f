"""Per-event values for value-based sampling (``sampling: {policy: value, ...}``, :class:`~eventrec.schema.ValueSampling`).

The store keeps no event type per event (a stream is a set of event types, its rows are not told
apart), and numeric attributes are stored standardised. So the value of every event of a stream with
a value policy is derived once, from the event's own raw row, when the store is built, and stored as
one float32 list column ``{stream}___sampling_value`` beside the stream's attributes (4 bytes per
event; three underscores: attribute names cannot start with one, so it never collides with
``{stream}__{attribute}``). Serving derives the values of appended events with the same function. A
stream with another policy gets no such column: its store is byte-identical to one built before value
sampling existed.

``value = event_type_values[type] × (1 + max(0, transform(x)))`` (types not listed: 1.0; ``x`` the
raw value of the optional numeric ``attribute``, ``transform`` its own; missing ``x``: ×1). A
function of the event's own row only: point-in-time by construction.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from eventrec.schema import Stream, ValueSampling
from eventrec.store.vocab import transformed

EVENT_TYPE = "_type"  # the raw event type, carried through the build for value sampling only


def value_column(stream: str) -> str:
    """The name of a stream's per-event value list column in ``users.parquet``."""
    return f"{stream}___sampling_value"


def value_sampling(stream: Stream) -> ValueSampling | None:
    """The stream's value policy, or None when it samples otherwise."""
    return stream.sampling if isinstance(stream.sampling, ValueSampling) else None


def needs_event_type(stream: Stream) -> bool:
    """Whether the build must carry the raw event type of the stream's rows (a value policy that values types)."""
    sampling = value_sampling(stream)
    return sampling is not None and bool(sampling.event_type_values)


def sampling_values(stream: Stream, n: int, types: pl.Series | None, numbers: pl.Series | None) -> np.ndarray:
    """``[n]`` float32 values of ``n`` raw events of ``stream`` (which must have a value policy).

    ``types [n]``: the events' raw types (``None`` when the policy values no type: every type is 1.0);
    ``numbers [n]``: the raw values of the policy's ``attribute`` (``None`` when it has none).
    """
    sampling = value_sampling(stream)
    if sampling is None:
        raise ValueError(f"stream {stream.name!r}: sampling {stream.sampling!r} has no per-event values")
    if any(column is not None and len(column) != n for column in (types, numbers)):
        raise ValueError(f"stream {stream.name!r}: {n} events but types / numbers of another length")
    if sampling.event_type_values:
        if types is None:
            raise ValueError(f"stream {stream.name!r}: sampling.event_type_values needs the events' types")
        mapping = {str(k): float(v) for k, v in sampling.event_type_values.items()}
        value = types.cast(pl.String).replace_strict(mapping, default=1.0, return_dtype=pl.Float64)
        value = value.fill_null(1.0).to_numpy().astype(np.float64)
    else:
        value = np.ones(n, dtype=np.float64)
    if sampling.attribute is not None:
        if numbers is None:
            raise ValueError(f"stream {stream.name!r}: sampling.attribute {sampling.attribute!r} needs its raw values")
        attribute = stream.attribute(sampling.attribute)
        x = transformed(numbers, attribute.transform)  # null / NaN / inf → NaN
        value = value * (1.0 + np.where(np.isfinite(x) & (x > 0), x, 0.0))
    return np.minimum(value, np.finfo(np.float32).max).astype(np.float32)  # a huge x stays finite
