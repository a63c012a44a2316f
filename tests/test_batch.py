"""Jagged tensors, batch gathering, the DataLoader, and the DLRM aggregates on the tiny world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eventrec.data.gather import make_batch
from eventrec.data.dlrm_features import DlrmFeatureBuilder, distinct_counts
from eventrec.data.jagged import JaggedTensor
from eventrec.data.loader import make_loader
from eventrec.data.sampling import most_recent, ranges_to_indices


def test_ranges_to_indices_and_most_recent():
    index, lengths = ranges_to_indices(np.array([3, 0, 7]), np.array([5, 0, 10]))
    assert index.tolist() == [3, 4, 7, 8, 9] and lengths.tolist() == [2, 0, 3]
    index, lengths = most_recent(np.array([0, 10]), np.array([5, 12]), 3)
    assert index.tolist() == [2, 3, 4, 10, 11] and lengths.tolist() == [3, 2]


def test_jagged_conversions_roundtrip():
    values = torch.randn(6, 4)
    jagged = JaggedTensor.from_lengths(values, torch.tensor([2, 0, 3, 1]))
    assert jagged.max_len == 3 and jagged.offsets.tolist() == [0, 2, 2, 5, 6]
    padded, mask = jagged.to_padded(padding_value=float("nan"))
    assert padded.shape == (4, 3, 4) and mask.sum().item() == 6
    torch.testing.assert_close(padded[mask], values)
    assert torch.isnan(padded[~mask]).all()
    nested = jagged.to_nested()
    for i, row in enumerate(nested.unbind()):
        torch.testing.assert_close(row, values[jagged.offsets[i] : jagged.offsets[i + 1]])
    assert jagged.cu_seqlens().dtype == torch.int32
    assert jagged.positions().tolist() == [0, 1, 0, 1, 2, 0]


def test_jagged_select_rows_matches_a_loop():
    jagged = JaggedTensor.from_numpy(np.arange(20, dtype=np.float32).reshape(10, 2), np.array([3, 0, 2, 4, 1]))
    rows = torch.tensor([3, 1, 0, 3, 4])  # any order, an empty row, a repeat
    selected = jagged.select_rows(rows)
    expected = [jagged.values[jagged.offsets[r]:jagged.offsets[r + 1]] for r in rows.tolist()]
    assert selected.lengths().tolist() == [len(e) for e in expected] and selected.max_len == 4
    torch.testing.assert_close(selected.values, torch.cat(expected))
    empty = jagged.select_rows(torch.tensor([], dtype=torch.int64))
    assert empty.batch_size == 0 and empty.values.shape == (0, 2) and empty.max_len == 0


def test_batch_histories_are_truncated_most_recent_first(tiny_store):
    batch = make_batch(tiny_store, np.arange(7))
    click = batch.streams["click"]
    # example 5: user 1 at t=250 has 5 clicks before it; max_length 3 keeps the last three
    lo, hi = click.offsets[5].item(), click.offsets[6].item()
    assert click.timestamps[lo:hi].tolist() == [50, 150, 210]
    assert click.lengths().tolist() == [1, 3, 0, 3, 0, 3, 1]
    assert click.max_len == 3
    assert click.attributes["content"].shape == (11, 2)
    topics = batch.streams["view"].multi["topics"]
    assert topics.offsets[-1].item() == len(topics.values)
    assert batch.labels.shape == (7, 2) and batch.label_names == ["click", "conversion"]
    assert batch.item["content"].shape == (7, 2)


def test_requests_share_one_history(tiny_store):
    # examples 0 and 0 again (same user and time) share one history row; 5 has its own
    batch = make_batch(tiny_store, np.array([0, 5, 0]))
    assert batch.history_index.tolist() == [0, 1, 0]
    assert batch.num_histories == 2 and batch.history_timestamps.tolist() == [50, 250]
    assert batch.streams["click"].lengths().tolist() == [1, 3]


def test_batch_composition_does_not_change_an_example(tiny_store):
    alone = make_batch(tiny_store, np.array([5]))
    together = make_batch(tiny_store, np.array([0, 5, 2]))
    h = together.history_index[1].item()
    lo, hi = together.streams["click"].offsets[h].item(), together.streams["click"].offsets[h + 1].item()
    torch.testing.assert_close(together.streams["click"].attributes["price"][lo:hi], alone.streams["click"].attributes["price"])


def test_loader_is_deterministic_and_covers_the_split(tiny_store):
    def order(workers: int, seed: int, epoch: int = 0) -> list[list[int]]:
        loader = make_loader(tiny_store, np.arange(7), batch_size=3, shuffle=True, seed=seed, num_workers=workers)
        loader.dataset.set_epoch(epoch)
        return [b.example_indices.tolist() for b in loader]

    first = order(0, seed=3)
    assert sorted(i for b in first for i in b) == list(range(7))
    assert order(2, seed=3) == first
    assert order(0, seed=3, epoch=1) != first or order(0, seed=4) != first


def test_batch_moves_and_pins():
    from eventrec.data.batch import StreamBatch

    sb = StreamBatch(offsets=torch.tensor([0, 1]), max_len=1, timestamps=torch.tensor([5]), attributes={"x": torch.tensor([1.0])})
    moved = sb.to("cpu")
    assert moved.attributes["x"].tolist() == [1.0]
    if torch.cuda.is_available():
        assert sb.pin_memory().timestamps.is_pinned()


def test_distinct_counts():
    bag = distinct_counts(np.array([0, 0, 0, 2, 2]), np.array([5, 3, 5, 1, 1]), batch_size=3)
    assert bag.ids.tolist() == [3, 5, 1] and bag.weights.tolist() == [1.0, 2.0, 2.0] and bag.offsets.tolist() == [0, 2, 2, 3]


def test_dlrm_time_since_last_and_windows(tiny_store):
    builder = DlrmFeatureBuilder({"30s": 30, "all": None})
    batch = builder(tiny_store, np.arange(7))
    names = batch.dense_names
    since = batch.dense[:, names.index("click.log_seconds_since_last")]
    has = batch.dense[:, names.index("click.has_events")]
    # example 1: user 1 at t=90, last click at 50
    assert since[1].item() == pytest.approx(np.log1p(40))
    assert has.tolist() == [1, 1, 0, 1, 0, 1, 1]
    # example 0 at t=50: the clicks at t=50 are excluded; the 30 s window (20..49] holds none
    assert batch.dense[0, names.index("click.30s.log_count")].item() == 0.0
    assert batch.dense[0, names.index("click.all.log_count")].item() == pytest.approx(np.log1p(1))
