"""Keyed pooling for one user and many candidates: the ``"one_user"`` backend of
:func:`eventrec.ops.keyed_pooling_attention` (same result as the reference, fewer FLOPs).

Serving scores thousands of candidates against one user's events. The generic backends take the
target-attention (match) term as ``V·E`` more dimensions of every query and key, or as a dense score
bias ``[candidates, H, N]``; for one user and many candidates both waste most of the work. Here:

* the match term, given factored (:class:`FactoredMatch`: ``bias[c, h, j] = sum_v w[h, v] ·
  <match_q[c, v], match_k[j, v]>``), is computed per block of candidates as ``[V, chunk, N]``
  cosines mixed per head with ``w`` and broadcast over the M slots of a candidate;
* the score scale is folded into the keys and into ``w`` once per call;
* the attention runs ``chunk`` candidates at a time, so that its logits ``[H, chunk·M, N]`` stay in
  cache, in reused buffers (:class:`Workspace`);
* with every logit provably small (:func:`logit_bound`), the softmax becomes an unshifted ``exp``
  (``exp2`` in base-2 units) with the denominators from the values product (one pass over the
  logits instead of three).

Only the summation order differs from the reference (float rounding, ~1e-7 in float32). Shapes:
``H`` heads, ``d`` head dim, ``M`` slots (``bias_group``), ``N`` positions of the user, ``B``
candidates, ``V`` match vocabularies of ``E`` dims each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

EXP_SAFE_LOGIT = 60.0  # |logit| < 60: exp(logit) in [1e-26, 1e26] (exp2 in base-2 units: [1e-18, 1e18]), so sums over any history stay finite and non-zero
BLOCK_BYTES = 4 << 20  # logits of one attention block: about this CPU's L2 plus a share of L3
DEVICE_BLOCK_BYTES = 1 << 30  # on a GPU: few large blocks (each block costs kernel launches, not cache misses)


@dataclass
class FactoredMatch:
    """A score bias in factored form: ``bias[c, h, j] = sum_v weight[h, v] · <queries[c, v], keys[j, v]>``
    for candidate ``c`` (one per ``bias_group`` query rows), head ``h`` and position ``j``.
    ``queries [B, V, E]``, ``keys [N, V, E]``, ``weight [H, V]`` (the caller's score scale included)."""

    queries: Tensor
    keys: Tensor
    weight: Tensor

    def dense(self) -> Tensor:
        """The bias ``[B, H, N]`` (what the generic backends take as ``bias``)."""
        return torch.einsum("cve,jve,hv->chj", self.queries, self.keys, self.weight)


class Workspace:
    """Reused buffers for the attention blocks (logits and weights ``[H, chunk·M, N]``): a fresh
    multi-MiB tensor per block costs page faults (the allocator returns large blocks to the OS).
    Not thread-safe: one per caller at a time."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)


@dataclass
class OneUserPlan:
    """How the one-user backend runs (never what it computes). ``chunk``: candidates per attention
    block (None: :func:`block_candidates`); ``max_unshifted_logit``: take the unshifted ``exp`` when
    every logit is provably below it (0: always the softmax; :data:`EXP_SAFE_LOGIT` is safe in float32
    and bfloat16); ``fold_match``: the match term as ``V·E`` more rows of the keys (cheaper in bf16);
    ``base2``: logits in base-2 units, ``exp2`` (cheaper than ``exp`` in bf16)."""

    chunk: int | None = None
    workspace: Workspace = field(default_factory=Workspace)
    max_unshifted_logit: float = 0.0
    fold_match: bool = False
    base2: bool = False


@dataclass
class PreparedUser:
    """One user's keys and values in the layout of the blocks, in the queries' dtype and device.

    ``keys_t [H, d (+ V·E), N]`` (content keys times the score scale, transposed; with ``match_folded``
    the match keys as further rows), ``values_t [H, d, N]`` (transposed: the values product runs as
    ``values_t @ weightsᵀ``), ``match_keys_t [V, E, N]`` (None without a match term or when folded),
    ``match_weight [H, V]`` (times the score scale; base-2 units with ``base2``)."""

    keys_t: Tensor
    values_t: Tensor
    match_keys_t: Tensor | None
    match_weight: Tensor | None
    match_folded: bool = False
    base2: bool = False

    @property
    def positions(self) -> int:
        return self.values_t.shape[2]


def prepare_user(keys: Tensor, values: Tensor, scale: float, match: FactoredMatch | None, like: Tensor,
                 fold_match: bool = False, base2: bool = False) -> PreparedUser:
    """Keys/values ``[N, H, d]`` (and the match term's keys) scaled in their own dtype, then cast to
    ``like``'s dtype and device."""
    scale = scale * (math.log2(math.e) if base2 else 1.0)
    keys_t = (keys * scale).permute(1, 2, 0).contiguous()  # [H, d, N]
    values_t = values.permute(1, 2, 0).contiguous()  # [H, d, N]
    match_keys_t = match_weight = None
    if match is not None:
        n, vocabularies, e = match.keys.shape
        match_keys_t = match.keys.permute(1, 2, 0).contiguous()  # [V, E, N]
        match_weight = (match.weight * (math.log2(math.e) if base2 else 1.0)).contiguous()  # [H, V]
        if fold_match:
            every_head = match_keys_t.reshape(1, vocabularies * e, n).expand(keys_t.shape[0], -1, -1)
            keys_t, match_keys_t = torch.cat([keys_t.to(every_head.dtype), every_head], dim=1), None  # [H, d + V·E, N]
    cast = [None if t is None else t.to(device=like.device, dtype=like.dtype) for t in (keys_t, values_t, match_keys_t, match_weight)]
    return PreparedUser(*cast, match_folded=fold_match and match is not None, base2=base2)


def folded_match_queries(user: PreparedUser, match_queries: Tensor | None, batch: int) -> Tensor:
    """The query dims that meet the folded match rows of ``user.keys_t``: per candidate, head h and
    vocabulary v, ``match_weight[h, v] · E_v[c]`` (the same for every slot). ``match_queries [B, V, E]``
    (None: zeros) → ``[B, H, V·E]``."""
    heads, vocabularies = user.match_weight.shape
    if match_queries is None:
        return user.match_weight.new_zeros(batch, heads, user.keys_t.shape[1] - user.values_t.shape[1])
    per_head = match_queries.view(batch, 1, vocabularies, -1) * user.match_weight.view(1, heads, vocabularies, 1)  # [B, H, V, E]
    return per_head.view(batch, heads, -1)


def block_queries(q: Tensor, match: Tensor | None, chunk: int, workspace: Workspace) -> Tensor:
    """The queries laid out block by block, so that each block of ``chunk`` candidates is one
    contiguous ``[H, chunk·M, F]`` tensor (a strided slice of ``[H, B·M, F]`` made every ``bmm`` copy
    its input). ``q [B, M, H, d]``, ``match [B, H, V·E]`` (folded match dims, the same for every slot;
    None: none) → ``[blocks, H, chunk·M, d (+ V·E)]``; rows past the last candidate are never read."""
    b, m, h, d = q.shape
    f = d + (0 if match is None else match.shape[-1])
    out = workspace.get("queries", (-(-b // chunk), h, chunk, m, f), q)
    by_candidate = out.permute(0, 2, 3, 1, 4)  # [blocks, chunk, M, H, F] (a view)
    full = (b // chunk) * chunk
    for target, rows in ((by_candidate[: b // chunk], slice(0, full)), (by_candidate[b // chunk :, : b - full], slice(full, b))):
        count = rows.stop - rows.start
        if not count:
            continue
        per_block = min(chunk, count)
        target[..., :d].copy_(q[rows].view(count // per_block, per_block, m, h, d))
        if match is not None:
            target[..., d:].copy_(match[rows].view(count // per_block, per_block, 1, h, f - d).expand(-1, -1, m, -1, -1))
    return out.view(-1, h, chunk * m, f)


def block_candidates(heads: int, slots: int, positions: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Candidates per attention block so that its logits ``[H, chunk·M, N]`` take ``block_bytes`` in
    fp32: 64 at N=1024 with the default config, 16 at N=4096 (the same count was the fastest in bf16)."""
    return max(8, block_bytes // (heads * slots * max(1, positions) * 4))


def logit_bound(user: PreparedUser, q: Tensor, folded: Tensor | None) -> float:
    """An upper bound of ``|logit|`` (in ``user``'s units) over every candidate, slot, head and position
    (Cauchy–Schwarz): per head the largest query norm times the largest key norm, plus, when the match
    term is added separately, ``sum_v |w[h, v]|`` (its cosines are in [-1, 1]: unit match vectors).
    ``q [B, M, H, d]`` content queries, ``folded [B, H, V·E]`` folded match queries."""
    query_sq = torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32).amax(dim=(0, 1)).square()  # [H]
    if folded is not None:
        query_sq = query_sq + torch.linalg.vector_norm(folded, dim=-1, dtype=torch.float32).amax(0).square()
    key_sq = user.keys_t.float().square().sum(1).amax(-1)  # [H]
    bound = (query_sq * key_sq).sqrt()
    if user.match_keys_t is not None:
        bound = bound + user.match_weight.float().abs().sum(-1)
    return float(bound.max())


def keyed_pooling_one_user(q: Tensor, k: Tensor, v: Tensor, scale: float, group: int, match: FactoredMatch | None = None,
                           plan: OneUserPlan | None = None) -> Tensor:
    """One user's keyed pooling: ``q [B·M, H, d]`` (M = ``group`` consecutive rows per candidate), ``k, v
    [N, H, d]`` (any float dtype: scaled in theirs, then cast to q's), optional factored match term →
    ``[B·M, H, d]`` in q's dtype. A user with no positions pools to zeros."""
    plan = plan if plan is not None else OneUserPlan()
    rows, h, d = q.shape
    b, m, n = rows // group, group, len(k)
    if n == 0 or b == 0:
        return q.new_zeros(rows, h, d)
    user = prepare_user(k, v, scale, match, q, plan.fold_match, plan.base2)
    q = q.view(b, m, h, d)
    match_queries = None if match is None else match.queries.to(q.dtype)
    folded = folded_match_queries(user, match_queries, b) if user.match_folded else None  # [B, H, V·E]
    use_match = user.match_keys_t is not None
    if use_match:
        vocabularies = user.match_keys_t.shape[0]
        match_queries = match_queries.transpose(0, 1)  # [V, B, E]
    workspace = plan.workspace
    chunk = min(b, plan.chunk or block_candidates(h, m, n, BLOCK_BYTES if q.device.type == "cpu" else DEVICE_BLOCK_BYTES))
    queries = block_queries(q, folded, chunk, workspace)  # [blocks, H, chunk·M, d (+ V·E)]
    unshifted = plan.max_unshifted_logit > 0 and logit_bound(user, q, folded) < plan.max_unshifted_logit
    values_t = torch.cat([user.values_t, user.values_t.new_ones(h, 1, n)], dim=1) if unshifted else user.values_t  # [H, d (+ 1), N]
    f = values_t.shape[1]
    pooled_t = workspace.get("pooled", (len(queries), h, f, chunk * m), q)  # per block: [H, d (+ 1), chunk·M]
    for block, start in enumerate(range(0, b, chunk)):
        c = min(chunk, b - start)
        logits = workspace.get("logits", (h, c * m, n), q)
        torch.bmm(queries[block, :, : c * m], user.keys_t, out=logits)  # [H, c·M, N]
        if use_match:
            cosine = workspace.get("cosine", (vocabularies, c, n), q)
            torch.bmm(match_queries[:, start : start + c], user.match_keys_t, out=cosine)  # [V, c, N]
            bias = workspace.get("match", (h, c * n), q)
            torch.mm(user.match_weight, cosine.view(vocabularies, c * n), out=bias)  # [H, c·N]
            logits.view(h, c, m, n).add_(bias.view(h, c, 1, n))
        if unshifted:  # unnormalised: the values' row of ones gives the denominators
            weights = logits.exp2_() if user.base2 else logits.exp_()
        else:
            if user.base2:
                logits.mul_(math.log(2.0))
            weights = workspace.get("weights", (h, c * m, n), q)
            torch.ops.aten._softmax.out(logits, -1, False, out=weights)
        # values_t @ weightsᵀ: the same product as weights @ values, transposed (the plain form ran at
        # half speed in bf16 with d + 1 = 17 columns)
        if c == chunk:
            torch.bmm(values_t, weights.transpose(1, 2), out=pooled_t[block])
        else:  # the last, partial block: its slice of the buffer is not contiguous
            pooled_t[block, :, :, : c * m] = torch.bmm(values_t, weights.transpose(1, 2))
    pooled = pooled_t.view(-1, h, f, chunk, m).permute(0, 3, 4, 1, 2).reshape(-1, m, h, f)[:b]  # [B, M, H, d (+ 1)]
    pooled = pooled[..., :d] / pooled[..., d:] if unshifted else pooled
    return pooled.reshape(rows, h, d)
