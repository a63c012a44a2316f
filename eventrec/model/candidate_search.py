"""Candidate search: which of a user's events each candidate's keyed pooling reads (``candidate_search``).

SIM's two stages (search the events relevant to the candidate, then attend over them exactly), on
the ids the schema declares: with ``candidate_search: {recent: R, per_match: K}`` the pooling of
candidate ``c`` reads only

* the summary token (when the model has one),
* the ``R`` most recent events, and
* per match vocabulary ``v`` (a vocabulary the candidate shares with the events: its item id, its
  category), the ``K`` most recent events whose id in ``v`` equals the candidate's; a reserved
  candidate id (missing, out of vocabulary) matches nothing.

so that ranking costs ``O(R + V·K)`` per candidate, not ``O(N)``. Two forms of one definition:

* :func:`search_mask`: ``[B, L]`` booleans over padded histories, for training and evaluation (the
  pooling masks the rest with ``-inf``);
* :class:`UserSearchIndex` / :meth:`UserSearchIndex.positions_for`: one user's events sorted by id per
  vocabulary, built once per user state; a request finds each candidate's events by binary search
  (serving; what :func:`eventrec.ops.selected_pooling.selected_pooling_attention` pools over);
  :meth:`UserSearchIndex.positions_before` does the same for candidates that each read a prefix of
  the history (impressions grouped by user: :mod:`eventrec.data.user_batches`).

Tests compare them (``tests/test_candidate_search.py``).

Ids: ``event_ids [sum(N_g), V]`` int64, the events' ids in the match vocabularies (:data:`NO_ID` at
the summary token and where a stream lacks the vocabulary); ``candidate_ids [B, V]`` int64
(:data:`NO_MATCH` where the candidate's id is reserved).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eventrec.model.config import CandidateSearchConfig
from eventrec.ops.jagged_helpers import padded_index

NO_ID = -2
"""An event's id where it has none in a vocabulary (and the summary token's)."""
NO_MATCH = -1
"""A candidate's id that matches no event (a reserved id: missing, out of vocabulary)."""


@dataclass
class Search:
    """What a search reads: the positions' ids ``event_ids [sum(N_g), V]``, the candidates' ids
    ``candidate_ids [B, V]`` (in the candidates' order), the search's sizes and whether position 0 of
    every history is a summary token."""

    event_ids: Tensor
    candidate_ids: Tensor
    config: CandidateSearchConfig
    summary_token: bool


def search_mask(event_ids: Tensor, offsets: Tensor, candidate_ids: Tensor, candidate_offsets: Tensor, recent: int, per_match: int,
                summary_token: bool) -> Tensor:
    """``[B, L]``: which positions of its history each candidate reads (L: the longest history).

    ``event_ids [sum(N_g), V]`` over G histories (``offsets [G+1]``, the summary token at position 0
    of each when ``summary_token``); ``candidate_ids [B, V]`` sorted by history (``candidate_offsets
    [G+1]``). Rows in the order of the candidates, positions past a history's end False."""
    histories = len(offsets) - 1
    if histories == 0 or len(candidate_ids) == 0:
        return torch.zeros(len(candidate_ids), 1, dtype=torch.bool, device=candidate_ids.device)
    every = torch.arange(histories, device=offsets.device)
    lengths = offsets[1:] - offsets[:-1]
    longest = max(int(lengths.max()), 1)
    most = max(int((candidate_offsets[1:] - candidate_offsets[:-1]).max()), 1)
    key_index, key_valid = padded_index(offsets, every, longest)  # [G, L]
    query_index, query_valid = padded_index(candidate_offsets, every, most)  # [G, C]
    ids = torch.where(key_valid.unsqueeze(-1), event_ids[key_index], NO_ID)  # [G, L, V]
    wanted = candidate_ids[query_index]  # [G, C, V]
    matches = (ids.unsqueeze(1) == wanted.unsqueeze(2)) & (wanted.unsqueeze(2) >= 0)  # [G, C, L, V]
    later = matches.flip(2).cumsum(2).flip(2) - matches.to(torch.int64)  # matching events after each position
    chosen = (matches & (later < per_match)).any(-1)  # [G, C, L]
    position = torch.arange(longest, device=offsets.device)
    from_end = lengths.unsqueeze(1) - 1 - position  # [G, L]: 0 = the most recent position
    first_event = 1 if summary_token else 0
    shared = key_valid & (from_end < recent) & (position >= first_event)
    if summary_token:
        shared |= key_valid & (position == 0)
    chosen |= shared.unsqueeze(1)
    return chosen[query_valid]


@dataclass
class SearchGroups:
    """What :meth:`UserSearchIndex.groups_for` selects, in two parts. Every candidate reads ``shared
    [S]``. The candidates ``simple [C_s]`` (indices into the request's candidates) read besides their
    group's list: ``group_positions [G, P]`` (valid where ``group_valid [G, P]``, in increasing order)
    of ``candidate_group [C_s]`` (``-1``: none). The candidates ``mixed [C_x]`` read the positions
    ``extra [T]`` of ``extra_candidate [T]`` (indices into ``mixed``), as :meth:`UserSearchIndex.positions_for`
    gives them."""

    shared: Tensor
    group_positions: Tensor
    group_valid: Tensor
    simple: Tensor
    candidate_group: Tensor
    mixed: Tensor
    extra: Tensor
    extra_candidate: Tensor


@dataclass
class UserSearchIndex:
    """One user's events sorted by id, per match vocabulary: ``ids [V, N]`` (sorted within each row)
    and ``positions [V, N]`` (the position of each, increasing among equal ids); ``length`` = N
    positions (the summary token included)."""

    ids: Tensor
    positions: Tensor
    length: int

    @classmethod
    def build(cls, event_ids: Tensor) -> "UserSearchIndex":
        """The index of one history's ``event_ids [N, V]``."""
        n = len(event_ids)
        keyed = event_ids.T.to(torch.int64) * (n + 1) + torch.arange(n, device=event_ids.device)  # id first, then position
        order = torch.sort(keyed, dim=1).indices
        return cls(torch.gather(event_ids.T, 1, order), order, n)

    def to(self, device: torch.device | str) -> "UserSearchIndex":
        """The same index on ``device``."""
        return UserSearchIndex(self.ids.to(device), self.positions.to(device), self.length)

    def shared_positions(self, recent: int, summary_token: bool, device: torch.device) -> tuple[Tensor, int]:
        """The positions every candidate reads, ``[S]`` (the summary token, then the ``recent`` most
        recent events, in order), and where the recent ones start."""
        first_event = 1 if summary_token else 0
        recent_start = max(self.length - recent, first_event)
        shared = torch.cat([torch.zeros(first_event, dtype=torch.int64, device=device), torch.arange(recent_start, self.length, device=device)])
        return shared, recent_start

    def latest_matches(self, v: int, wanted: Tensor, per_match: int) -> tuple[Tensor, Tensor]:
        """``(lo, hi) [C]``: the index range in row ``v`` of the ``per_match`` latest events with each id of
        ``wanted [C]`` (empty for a reserved id, which matches nothing)."""
        hi = torch.searchsorted(self.ids[v], wanted, right=True)
        lo = torch.maximum(torch.searchsorted(self.ids[v], wanted), hi - per_match)
        return torch.where(wanted >= 0, lo, hi), hi

    def own_ranges(self, candidate_ids: Tensor, recent_start: int, per_match: int) -> tuple[Tensor, Tensor]:
        """``(starts, counts) [C, V]``: per vocabulary ``v`` the index range in row ``v`` of each
        candidate's own positions: the ``per_match`` latest events with its id there, less those at or
        after ``recent_start`` (shared already)."""
        n, count_c = self.length, len(candidate_ids)
        starts, counts = [], []
        for v in range(self.ids.shape[0]):
            wanted = candidate_ids[:, v].contiguous()
            lo, hi = self.latest_matches(v, wanted, per_match)
            keyed = self.ids[v] * (n + 1) + self.positions[v]  # sorted: by id, then position
            not_recent = torch.searchsorted(keyed, wanted * (n + 1) + recent_start)
            starts.append(lo)
            counts.append((torch.minimum(hi, not_recent) - lo).clamp(min=0))
        if not starts:
            empty = torch.zeros(count_c, 0, dtype=torch.int64, device=candidate_ids.device)
            return empty, empty
        return torch.stack(starts, 1), torch.stack(counts, 1)

    def pairs_of(self, starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """``(positions [T], candidate [T])`` of the ranges ``starts, counts [C, V]`` (:meth:`own_ranges`),
        sorted by candidate, then position, without duplicates (one position may match in two vocabularies)."""
        device, n = starts.device, self.length
        pairs = []
        for v in range(starts.shape[1]):
            count = counts[:, v]
            candidate = torch.repeat_interleave(torch.arange(len(starts), device=device), count)
            rank = torch.arange(len(candidate), device=device) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
            position = self.positions[v][torch.repeat_interleave(starts[:, v], count) + rank]
            pairs.append(candidate * (n + 1) + position)
        unique = torch.unique(torch.cat(pairs)) if pairs else torch.zeros(0, dtype=torch.int64, device=device)  # sorted
        return unique % (n + 1), unique // (n + 1)

    def positions_for(self, candidate_ids: Tensor, recent: int, per_match: int, summary_token: bool) -> tuple[Tensor, Tensor, Tensor]:
        """What :func:`search_mask` selects for ``candidate_ids [C, V]`` of this user, split into the
        positions every candidate reads, ``shared [S]`` (the summary token, then the ``recent`` most
        recent events, in order), and each candidate's other positions: ``extra [T]`` with
        ``extra_candidate [T]`` (sorted by candidate, then position; no duplicates)."""
        shared, recent_start = self.shared_positions(recent, summary_token, candidate_ids.device)
        extra, extra_candidate = self.pairs_of(*self.own_ranges(candidate_ids, recent_start, per_match))
        return shared, extra, extra_candidate

    def groups_for(self, candidate_ids: Tensor, recent: int, per_match: int, summary_token: bool) -> "SearchGroups":
        """:meth:`positions_for` with the candidates' own positions as shared lists: a candidate whose
        own positions all come from one vocabulary ``v`` reads the list of its id there, the same for
        every candidate with that id (e.g. all candidates of one category), so each distinct
        ``(v, id)`` is one group; the candidates with own positions in two or more vocabularies (their
        union may hold a position twice) keep :meth:`positions_for`'s per-candidate form."""
        device = candidate_ids.device
        n, count_c = self.length, len(candidate_ids)
        shared, recent_start = self.shared_positions(recent, summary_token, device)
        vocabularies = self.ids.shape[0]
        start_v, count_v = self.own_ranges(candidate_ids, recent_start, per_match)  # [C, V] each
        matched = count_v > 0
        several = matched.sum(1) > 1
        simple = (~several).nonzero().squeeze(1)
        mixed = several.nonzero().squeeze(1)
        vocabulary = matched.to(torch.int64).argmax(1) if vocabularies else torch.zeros(count_c, dtype=torch.int64, device=device)  # [C]
        has_group = matched.any(1) & ~several
        ids = candidate_ids.gather(1, vocabulary.unsqueeze(1)).squeeze(1) if vocabularies else vocabulary
        group_key = torch.where(has_group, ids * max(vocabularies, 1) + vocabulary, -1)[simple]
        keys, candidate_group = torch.unique(group_key, return_inverse=True)  # sorted: -1 (no group) first when present
        if len(keys) and int(keys[0]) < 0:
            keys, candidate_group = keys[1:], candidate_group - 1
        # one representative candidate per group gives the group's list
        representative = torch.full((len(keys),), -1, dtype=torch.int64, device=device)
        grouped = candidate_group >= 0
        representative[candidate_group[grouped]] = simple[grouped]
        rep_vocabulary = vocabulary[representative]
        rep_start = start_v[representative, rep_vocabulary] if vocabularies and len(keys) else torch.zeros(0, dtype=torch.int64, device=device)
        rep_count = count_v[representative, rep_vocabulary] if vocabularies and len(keys) else torch.zeros(0, dtype=torch.int64, device=device)
        longest = int(rep_count.max()) if len(keys) else 0
        rank = torch.arange(longest, device=device)
        group_valid = rank.unsqueeze(0) < rep_count.unsqueeze(1)  # [G, P]
        at = (rep_start.unsqueeze(1) + rank).clamp(max=max(n - 1, 0))
        group_positions = torch.where(group_valid, self.positions[rep_vocabulary.unsqueeze(1).expand_as(at), at] if len(keys) else at, 0)
        extra, extra_candidate = self.pairs_of(start_v.index_select(0, mixed), count_v.index_select(0, mixed))  # no second search
        return SearchGroups(shared, group_positions, group_valid, simple, candidate_group, mixed, extra, extra_candidate)

    def positions_before(self, candidate_ids: Tensor, cuts: Tensor, recent: int, per_match: int, summary_token: bool) -> tuple[Tensor, Tensor]:
        """What :func:`search_mask` selects for each of ``candidate_ids [C, V]`` over the first ``cuts[c]``
        positions of this history (the summary token included: each candidate's history is that
        prefix), as ``(positions [T], candidate [T])`` sorted by candidate, then position (no
        duplicates): the summary token, the ``recent`` positions before the cut, and per vocabulary the
        ``per_match`` most recent positions before the cut with the candidate's id."""
        device = candidate_ids.device
        n, count_c = self.length, len(candidate_ids)
        first_event = 1 if summary_token else 0
        every = torch.arange(count_c, device=device)
        cuts = cuts.to(torch.int64)

        def ranges(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:  # (candidate, offset in its range) of every [lo, hi) member
            count = (hi - lo).clamp(min=0)
            candidate = torch.repeat_interleave(every, count)
            rank = torch.arange(len(candidate), device=device) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
            return candidate, torch.repeat_interleave(lo, count) + rank

        keys = []
        if summary_token:
            keys.append(every[cuts > 0] * (n + 1))
        candidate, position = ranges((cuts - recent).clamp(min=first_event), cuts)
        keys.append(candidate * (n + 1) + position)
        for v in range(self.ids.shape[0]):
            keyed = self.ids[v] * (n + 1) + self.positions[v]  # sorted: by id, then position
            wanted = candidate_ids[:, v].contiguous()
            hi = torch.searchsorted(keyed, wanted * (n + 1) + cuts)  # this id's positions before the cut
            lo = torch.maximum(torch.searchsorted(keyed, wanted * (n + 1)), hi - per_match)
            lo = torch.where(wanted >= 0, lo, hi)  # a reserved id matches nothing
            candidate, at = ranges(lo, hi)
            keys.append(candidate * (n + 1) + self.positions[v][at])
        unique = torch.unique(torch.cat(keys))  # sorted
        return unique % (n + 1), unique // (n + 1)
