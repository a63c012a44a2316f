"""The training period's items: the ids a codebook may be fitted on.

An item belongs to the training period when its id appears before the store's ``train_end`` in any
column the schema reads with the id's vocabulary: the impressions' item attribute ``key`` and every
stream attribute sharing its vocabulary (e.g. ``movie_id`` in the rating events). ``train_end`` is
resolved exactly as ``eventrec build`` resolves it (:func:`eventrec.store.splits.resolve_splits` on
the checked impressions of :func:`eventrec.store.load.read_logs`), so a store built from the same
logs and splits has the same boundary (the bench checks it against the store's manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from eventrec.schema import Schema
from eventrec.store.encoding import BuildReport
from eventrec.store.layout import TIME
from eventrec.store.load import read_logs
from eventrec.store.splits import resolve_splits


@dataclass(frozen=True)
class TrainingItems:
    """``ids``: the distinct raw ids seen before ``train_end`` (sorted); ``places``: how many of
    them each place (``impressions.ATTR``, ``streams.S.ATTR``) shows."""

    ids: pl.Series
    train_end: int
    validation_end: int
    places: dict[str, int]


def id_places(schema: Schema, key: str) -> tuple[str, list[tuple[str, str]]]:
    """The vocabulary of the impressions' item attribute ``key`` and the ``(place, raw column)`` of
    every categorical or hashed attribute that shares it (the impressions' first)."""
    item = {a.name: a for a in schema.impressions.item_attributes}
    if key not in item or item[key].kind not in ("categorical", "hashed"):
        ids = sorted(n for n, a in item.items() if a.kind in ("categorical", "hashed"))
        raise ValueError(f"key: {key!r} is not a categorical or hashed item attribute of the schema's impressions; those are {ids}")
    vocabulary = item[key].vocabulary_name
    places = [(f"impressions.{key}", item[key].source_column)]
    for stream in schema.streams:
        places += [(f"streams.{stream.name}.{a.name}", a.source_column) for a in stream.attributes
                   if a.kind in ("categorical", "hashed") and a.vocabulary_name == vocabulary]
    return vocabulary, places


def training_items(schema: Schema, data_dir: Path, key: str) -> TrainingItems:
    """The items of the training period of ``schema``'s logs in ``data_dir`` (see the module doc)."""
    _, places = id_places(schema, key)
    _, impressions, streams, _ = read_logs(schema, Path(data_dir), BuildReport(), lambda stage: None)
    train_end, validation_end = resolve_splits(schema, impressions[TIME].to_numpy())
    found: dict[str, pl.Series] = {}
    for place, column in places:
        frame = impressions if place.startswith("impressions.") else streams[place.split(".")[1]][1]
        found[place] = frame.filter(pl.col(TIME) < train_end)[column].drop_nulls().unique()
    dtypes = {s.dtype for s in found.values()}
    series = list(found.values()) if len(dtypes) == 1 else [s.cast(pl.String) for s in found.values()]
    ids = pl.concat(series).unique().sort()
    return TrainingItems(ids, int(train_end), int(validation_end), {place: s.len() for place, s in found.items()})
