"""Labels derived from later events: an impression's label is 1 when a matching event of the same user
follows within a window (an attribution window, as ad systems define them); see docs/schema.md."""

from __future__ import annotations

import re
from typing import Literal, Union

from pydantic import Field, field_validator

from eventrec.schema.attributes import EventsSource, Name, _Strict


WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class MatchColumn(_Strict):
    """An impression column that must equal an event column (e.g. ``{impression: ad_id, event: item_id}``)."""

    impression: str
    event: str


class DerivedLabel(_Strict):
    """A label computed from later events (an attribution window, as ad systems define one).

    ``1`` when at least one event of type ``events`` by the same user, with every ``match`` column
    equal to the impression's, falls in ``(impression time, impression time + window]`` (strictly
    after the impression, the window's end included); ``0`` when there is none and the whole window
    is observed; missing (NaN, counted) when the window is ``censored``: it runs past the last
    timestamp of the events source, or reaches the split boundary of the impression's split (a train
    label never reads validation events). Events come from ``source`` (default: the schema's
    ``events``). A match entry is a column name present on both sides or ``{impression, event}``.
    """

    name: Name
    events: list[str] = Field(..., min_length=1)
    match: list[Union[str, MatchColumn]] = Field(default_factory=list)
    window: Union[int, str]
    censored: Literal["missing"] = "missing"
    source: EventsSource | None = None

    @field_validator("window")
    @classmethod
    def _window(cls, value: int | str) -> int | str:
        window_seconds(value)
        return value

    @property
    def window_seconds(self) -> int:
        return window_seconds(self.window)

    @property
    def match_columns(self) -> list[MatchColumn]:
        """Every match entry as (impression column, event column)."""
        return [MatchColumn(impression=m, event=m) if isinstance(m, str) else m for m in self.match]


def window_seconds(value: int | str) -> int:
    """``86400``, ``"3600s"``, ``"30m"``, ``"24h"`` or ``"7d"`` to a positive number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", str(value))
        if not found:
            raise ValueError(f"window must be seconds or a number with unit s, m, h or d (e.g. '24h'), got {value!r}")
        seconds = int(found.group(1)) * WINDOW_UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError(f"window must be positive, got {value!r}")
    return seconds
