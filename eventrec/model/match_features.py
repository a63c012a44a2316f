"""Exact candidate-match features: how often the history holds the candidate's id, and how long ago it last did.

Softmax attention pooling returns a weighted *average* of the events: whether the candidate occurs
once or twenty times in the history, the pooled vector can be the same (DIN dropped the softmax
normalisation for this reason). The rules that are hard to beat on repeat-heavy logs read exactly
that: "how many times did this user act on this item" and "how long since the last time". With
``experimental.match_features`` the heads read them, exactly, per match vocabulary ``v`` (a
vocabulary the candidate shares with the events: its item id, its category):

    count_v(c)  = #{e in history : id_v(e) = id_v(c)}      (a reserved candidate id matches nothing)
    features_v  = [log1p(count_v),  1[count_v > 0],  1[count_v > 0] · log1p(T - t_last) / log1p(MAX_GAP)]

with ``T`` the request time and ``t_last`` the time of the most recent matching event (gaps in
seconds, clamped to ``[0, MAX_GAP]``). With ``windows`` (seconds; ``experimental.match_windows``), one
more feature per window ``w``: ``log1p(#{e : id_v(e) = id_v(c), t_e >= T - w})``, the windowed counts
that an engineered DLRM reads per window (a dormant interest: many matches, none in the last week). The features read only ids and times, so they cost
``O((N + C) log N)`` per user, not ``O(C·N)`` like the soft count of ``match_count``: the events are
sorted by (history, id) once and each candidate is found by binary search; serving reuses the
user's :class:`~eventrec.model.candidate_search.UserSearchIndex` (built once per cached state).

Two forms of one definition, compared in ``tests/test_match_features.py`` with the loop of
:func:`match_features_reference`:

* :func:`match_features`: G histories (training, evaluation);
* :func:`match_features_one_user`: one user's index (serving);
* :func:`match_features_before`: one user's index, each candidate over a prefix of the history
  (impressions grouped by user: :mod:`eventrec.data.user_batches`).

Shapes: ``event_ids [sum(N_g), V]`` int64 (``NO_ID`` at a summary token and where a stream lacks
the vocabulary; positions time-ordered within each history), ``offsets [G+1]``, ``times [sum(N_g)]``
int64 seconds, ``request_times [G]``, ``candidate_ids [B, V]`` (``NO_MATCH`` where reserved),
``history_index [B]`` → ``[B, FEATURES·V]`` float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eventrec.model.candidate_search import UserSearchIndex

FEATURES = 3
"""Features per match vocabulary without windows: log1p(count), whether any event matches, the scaled log age of the last match."""
MAX_GAP = 2**31 - 1
_LOG_MAX_GAP = math.log1p(MAX_GAP)
Windows = tuple[int, ...]


def features_per_vocabulary(windows: Windows = ()) -> int:
    """How many features each match vocabulary gives: :data:`FEATURES` plus one per window."""
    return FEATURES + len(windows)


def _features(count: Tensor, last_time: Tensor, request_time: Tensor, windowed: list[Tensor] = ()) -> Tensor:
    """``[C, FEATURES + W]`` from ``count [C]`` int64, the last match's time, the request time ``[C]`` and the
    windowed counts (``W`` tensors ``[C]`` int64)."""
    has = (count > 0).to(torch.float32)
    age = (request_time - last_time).clamp(0, MAX_GAP).to(torch.float32)
    return torch.stack([torch.log1p(count.to(torch.float32)), has, has * torch.log1p(age) / _LOG_MAX_GAP,
                        *[torch.log1p(w.to(torch.float32)) for w in windowed]], dim=-1)


def _counts_since(run_start: Tensor, element_times: Tensor, lo: Tensor, hi: Tensor, request: Tensor, windows: Windows) -> list[Tensor]:
    """Per window ``w``, ``[C]`` int64: per query, ``#{i in [lo, hi) : element_times[i] >= request - w}``.

    ``run_start [P]`` bool marks where a run of equal keys starts in a sorted array whose ``element_times
    [P]`` are non-decreasing within every run, and each ``[lo, hi)`` lies within one run (empty: 0).
    The keys ``(run number, time)`` are built once; one binary search per query and window."""
    if not windows:
        return []
    since = request.unsqueeze(0) - torch.tensor(windows, dtype=request.dtype, device=request.device).unsqueeze(1)  # [W, C]
    if len(element_times) == 0:
        return [torch.zeros_like(lo) for _ in windows]
    run = torch.cumsum(run_start.to(torch.int64), 0)  # [P]: 1, 1, 2, ... (the run of each element)
    low = int(torch.minimum(element_times.min(), since.min()))
    span = int(torch.maximum(element_times.max(), since.max())) - low + 1
    if int(run[-1]) + 1 >= 2**62 // span:
        raise ValueError(f"match windows: {int(run[-1])} runs over a time span of {span} s do not fit one int64 key")
    keys = run * span + (element_times - low)  # sorted: runs in order, times non-decreasing within each
    first = torch.searchsorted(keys, (run[lo.clamp(max=len(run) - 1)] * span + (since - low)).reshape(-1)).view_as(since)
    return list(torch.where(hi > lo, (hi - torch.maximum(first, lo)).clamp(min=0), 0).unbind(0))


def match_features(event_ids: Tensor, offsets: Tensor, times: Tensor, request_times: Tensor, candidate_ids: Tensor,
                   history_index: Tensor, windows: Windows = ()) -> Tensor:
    """``[B, (FEATURES + W)·V]``: the features of B candidates over G histories (see the module)."""
    batch, vocabularies = candidate_ids.shape
    device = candidate_ids.device
    width_out = features_per_vocabulary(windows)
    if batch == 0 or vocabularies == 0:
        return torch.zeros(batch, width_out * vocabularies, device=device)
    positions = len(event_ids)
    lengths = offsets[1:] - offsets[:-1]
    row = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths, output_size=positions)
    request = request_times[history_index]
    blocks = []
    for v in range(vocabularies):
        wanted = candidate_ids[:, v]
        if positions == 0:
            none = torch.zeros_like(wanted)
            blocks.append(_features(none, request, request, [none] * len(windows)))
            continue
        # dense ranks of the ids (events and candidates together), so that (history, id) fits one int64 key
        rank = torch.unique(torch.cat([event_ids[:, v], wanted]), return_inverse=True)[1]
        width = int(rank.max()) + 1
        sorted_keys, order = torch.sort(row * width + rank[:positions], stable=True)  # equal keys: positions in time order
        keys = history_index * width + rank[positions:]
        high = torch.searchsorted(sorted_keys, keys, right=True)
        low = torch.where(wanted >= 0, torch.searchsorted(sorted_keys, keys), high)
        last = order[(high - 1).clamp(min=0)]
        windowed = []
        if windows:
            run_start = torch.ones(positions, dtype=torch.bool, device=device)
            run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
            windowed = _counts_since(run_start, times[order], low, high, request, windows)
        blocks.append(_features(high - low, times[last], request, windowed))
    return torch.cat(blocks, dim=-1)


def _windowed_counts(index: UserSearchIndex, v: int, times: Tensor, low: Tensor, high: Tensor, request: Tensor, windows: Windows) -> list[Tensor]:
    """Per window, ``[C]`` int64: the matches in ``[low, high)`` of the index's vocabulary ``v`` at or after ``request - w``."""
    if not windows:
        return []
    ids = index.ids[v]
    run_start = torch.ones(len(ids), dtype=torch.bool, device=ids.device)
    run_start[1:] = ids[1:] != ids[:-1]
    element_times = times[index.positions[v]]  # within an id: positions, so times, increasing
    return _counts_since(run_start, element_times, low, high, request, windows)


def match_features_one_user(index: UserSearchIndex, times: Tensor, request_time: Tensor, candidate_ids: Tensor, windows: Windows = ()) -> Tensor:
    """``[C, (FEATURES + W)·V]``: the features of C candidates over one user's history, from its index
    (``times [N]``: the positions' times; ``request_time``: a 0-d or ``[1]`` tensor)."""
    count_c, vocabularies = candidate_ids.shape
    request = request_time.reshape(-1)[:1].expand(count_c)
    blocks = []
    for v in range(vocabularies):
        wanted = candidate_ids[:, v].contiguous()
        if index.length == 0:
            none = torch.zeros_like(wanted)
            blocks.append(_features(none, request, request, [none] * len(windows)))
            continue
        high = torch.searchsorted(index.ids[v], wanted, right=True)
        low = torch.where(wanted >= 0, torch.searchsorted(index.ids[v], wanted), high)
        last = index.positions[v][(high - 1).clamp(min=0)]  # equal ids: positions increasing
        blocks.append(_features(high - low, times[last], request, _windowed_counts(index, v, times, low, high, request, windows)))
    if not blocks:
        return torch.zeros(count_c, 0, device=candidate_ids.device)
    return torch.cat(blocks, dim=-1)


def match_features_before(index: UserSearchIndex, times: Tensor, request_times: Tensor, candidate_ids: Tensor, cuts: Tensor,
                          windows: Windows = ()) -> Tensor:
    """``[C, (FEATURES + W)·V]``: the features of C candidates, candidate ``c`` over the first ``cuts[c]``
    positions of one user's history (its index; ``times [N]``) at its own ``request_times[c]``."""
    count_c, vocabularies = candidate_ids.shape
    n = index.length
    cuts = cuts.to(torch.int64)
    blocks = []
    for v in range(vocabularies):
        wanted = candidate_ids[:, v].contiguous()
        if n == 0:
            none = torch.zeros_like(wanted)
            blocks.append(_features(none, request_times, request_times, [none] * len(windows)))
            continue
        keyed = index.ids[v] * (n + 1) + index.positions[v]  # sorted: by id, then position
        high = torch.searchsorted(keyed, wanted * (n + 1) + cuts)  # this id's positions before the cut
        low = torch.where(wanted >= 0, torch.searchsorted(keyed, wanted * (n + 1)), high)
        last = index.positions[v][(high - 1).clamp(min=0)]
        blocks.append(_features(high - low, times[last], request_times, _windowed_counts(index, v, times, low, high, request_times, windows)))
    if not blocks:
        return torch.zeros(count_c, 0, device=candidate_ids.device)
    return torch.cat(blocks, dim=-1)


def match_features_reference(event_ids: Tensor, offsets: Tensor, times: Tensor, request_times: Tensor, candidate_ids: Tensor,
                             history_index: Tensor, windows: Windows = ()) -> Tensor:
    """The same features one candidate and one vocabulary at a time (a readable reference for the tests)."""
    rows = []
    for b in range(len(candidate_ids)):
        g = int(history_index[b])
        start, end = int(offsets[g]), int(offsets[g + 1])
        row = []
        for v in range(candidate_ids.shape[1]):
            wanted = int(candidate_ids[b, v])
            matches = [p for p in range(start, end) if wanted >= 0 and int(event_ids[p, v]) == wanted]
            count = len(matches)
            last_time = int(times[matches[-1]]) if matches else int(request_times[g])
            age = min(max(int(request_times[g]) - last_time, 0), MAX_GAP)
            has = 1.0 if count else 0.0
            row += [math.log1p(count), has, has * math.log1p(age) / _LOG_MAX_GAP]
            row += [math.log1p(sum(1 for p in matches if int(times[p]) >= int(request_times[g]) - w)) for w in windows]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(candidate_ids), features_per_vocabulary(windows) * candidate_ids.shape[1])
