"""The event-based-feature (EBF) batch: per-stream jagged histories, the candidate item, context, labels.

Shapes, for a batch of B impressions::

    history_index                 [B] int64       the history row (0..G-1) each impression reads
    history_timestamps            [G] int64       request time of each distinct history
    streams[s].offsets            [G+1] int64     history of stream s per distinct (user, request time)
    streams[s].timestamps         [sum(N_i)] int64 (seconds, time-ordered within each row)
    streams[s].attributes[a]      [sum(N_i)] int64 ids | [sum(N_i)] float32 | [sum(N_i), dim] float32
    streams[s].multi[a]           JaggedTensor over events: values [T] int64, offsets [sum(N_i)+1]
    item[a], context[a]           [B] int64 | [B] float32 | [B, dim] float32 (multi-valued: JaggedTensor)
    labels                        [B, num_labels] float32, NaN where the label is missing
    request_timestamps            [B] int64
    history_cuts                  [B] int64       or None: with one history per user (eventrec/data/user_batches.py),
                                                  the number of its events (a prefix) each impression reads
    item_counts                   [B, K] float32  or None: the candidates' item counters (eventrec/data/item_counters.py),
                                                  for a model that reads them
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from eventrec.data.jagged import JaggedTensor


def _move(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, JaggedTensor):
        return JaggedTensor(fn(value.values), fn(value.offsets), value.max_len)
    if isinstance(value, dict):
        return {k: _move(v, fn) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return replace(value, **{f.name: _move(getattr(value, f.name), fn) for f in fields(value)})
    return value


class _Movable:
    def to(self, device: torch.device | str, non_blocking: bool = False):
        return _move(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return _move(self, lambda t: t.pin_memory())


@dataclass
class StreamBatch(_Movable):
    """One stream's histories for a batch (see module docstring for shapes)."""

    offsets: torch.Tensor
    max_len: int
    timestamps: torch.Tensor
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    multi: dict[str, JaggedTensor] = field(default_factory=dict)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def jagged(self, attribute: str | None = None) -> JaggedTensor:
        """An attribute (or, with None, the timestamps) as a :class:`JaggedTensor`."""
        values = self.timestamps if attribute is None else self.attributes[attribute]
        return JaggedTensor(values, self.offsets, self.max_len)


@dataclass
class EventBatch(_Movable):
    """A batch of impressions with their point-in-time histories."""

    example_indices: torch.Tensor
    user_rows: torch.Tensor
    request_timestamps: torch.Tensor
    history_index: torch.Tensor
    history_timestamps: torch.Tensor
    streams: dict[str, StreamBatch]
    item: dict[str, torch.Tensor | JaggedTensor]
    context: dict[str, torch.Tensor | JaggedTensor]
    labels: torch.Tensor
    label_names: list[str]
    request_ids: torch.Tensor | None = None
    history_cuts: torch.Tensor | None = None
    item_counts: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.example_indices)

    @property
    def num_histories(self) -> int:
        return len(self.history_timestamps)
