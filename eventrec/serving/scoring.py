"""The candidate side for one user, restructured for thousands of candidates (same math, fewer FLOPs).

:meth:`KeyedAttentionPooling.pool` builds per-slot queries of width ``d + V·E`` (the content part
plus the match part, repeated for every slot and head) against keys and values of the same width
(the values' match part is zeros). For one user and many candidates that wastes most of the work:

* the match logit ``sum_v w[h, v] · cos(E_v[c], E_v[e])`` does not depend on the slot, and its cosine
  part not on the head either: computed once per (candidate, event) as ``[V, B, N]``, mixed per head
  with ``w`` (``[H, V]``) and broadcast over the M slots;
* the values' zero match dims are dropped: ``softmax(logits) @ values`` runs over the ``d`` content
  dims only;
* the score scale is folded into the keys and into ``w`` once per request.

Logits are ``scale · (q_content · k_content + match)`` exactly as in the model; only the summation
order differs (float rounding, ~1e-7). Shapes: ``H`` heads, ``d`` head dim, ``M`` slots, ``N``
positions of the user (events + summary token), ``B`` candidates of a chunk, ``V`` match
vocabularies of ``E`` dims each.

Precision: :class:`CandidateScorer` holds the candidate-side modules in one dtype. In float32 they are
the model's own; in bfloat16 (``RankingService(precision="bf16")``) a copy cast once, and the user's
prepared tensors and the candidate rows are cast per request, so that the attention's two batched
matrix products, the softmax, the projections, the cross network and the heads' tower run in
bfloat16; the heads' output layer and calibration stay float32, and so do the returned logits, the
user state and the candidate cache. In bfloat16 the match logit is folded back into the logits
product (:class:`PreparedUser`), which is cheaper there than the separate path above.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from eventrec.model.heads import interaction_input
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.model.sequence_ranker import SequenceRanker

Precision = Literal["fp32", "bf16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
log = logging.getLogger(__name__)
EXP_SAFE_LOGIT = 60.0  # |logit| < 60: exp(logit) in [1e-26, 1e26] (exp2 in base-2 units: [1e-18, 1e18]), so sums over any history stay finite and non-zero
_warned_slow_bf16 = False


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a serving precision; a ValueError naming the ``precision`` field for another value."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return PRECISIONS[precision]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: CUDA with bf16 support; an
    x86 CPU with AVX512-BF16 or AMX; another CPU whose oneDNN supports bf16 (e.g. Arm with BF16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_slow_bf16(device: torch.device) -> None:
    """Log once per process that bf16 scoring on this device is emulated (correct, but slow)."""
    global _warned_slow_bf16
    if not _warned_slow_bf16 and not native_bf16(device):
        _warned_slow_bf16 = True
        log.warning("precision bf16: this %s has no native bfloat16 support (AVX512-BF16 / AMX / CUDA bf16); scores stay "
                    "correct but may be slower than fp32", "CPU" if device.type == "cpu" else device.type)


class Float32Output(nn.Module):
    """``module`` (float32) applied to a lower-precision input: ``[..., F] → [..., F']`` float32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


class CandidateScorer(nn.Module):
    """The candidate side of a :class:`SequenceRanker` in one dtype: ``candidate_norm``, ``pooling``
    (slots, query/out projections, match weights), ``candidate_projection``, ``cross`` and ``heads``.

    In the model's own dtype these are the model's modules (shared, nothing copied); in another dtype
    (bf16 serving) a copy cast once per model, so that the model itself never changes. The heads'
    output layer (``[B, 64] → [B, T]``) and their calibration stay float32 in the copy: rounding the
    logits themselves to bf16 was most of bf16's error on the trained demo model (mean |dp| 2.5e-4 →
    5.5e-5, top-100 overlap 97.2 → 99.1 of 100) at no measurable cost."""

    MODULES = ("candidate_norm", "pooling", "candidate_projection", "cross", "heads")

    def __init__(self, model: SequenceRanker, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else model.candidate_projection.weight.device
        self.max_unshifted_logit = EXP_SAFE_LOGIT  # see pool_candidates (0 would force the softmax path)
        self.item_dim = model.item_embedder.out_dim
        self.uses_match = bool(model.match_vocabularies)
        weight = model.candidate_projection.weight
        cast = dtype != weight.dtype or self.device != weight.device
        self.dot_term = bool(model.config.dot_term)
        for name in self.MODULES + (("dot_item",) if self.dot_term else ()):
            module = getattr(model, name)
            setattr(self, name, copy.deepcopy(module).to(device=self.device, dtype=dtype).eval() if cast else module)
        if cast:
            self.heads.logits = Float32Output(copy.deepcopy(model.heads.logits).to(self.device))
            self.heads.calibration_scale = model.heads.calibration_scale.detach().to(self.device, copy=True)
            self.heads.calibration_bias = model.heads.calibration_bias.detach().to(self.device, copy=True)

    def prepare_user(self, pooling: KeyedAttentionPooling, keys: torch.Tensor, values: torch.Tensor) -> "PreparedUser":
        """:func:`prepare_user` in this scorer's dtype (``pooling``: the model's own, float32). In bf16 the
        match part is folded into the keys: a logits product with 32 inner dims instead of 16 costs less
        than the separate match product and broadcast add in bf16 (measured: 13 vs 8 + 21 ms per 5000
        candidates at N=1024, 1 thread); in fp32 the separate path is cheaper and stays (parity)."""
        return prepare_user(pooling, keys, values, self.dtype, fold_match=self.dtype != torch.float32, base2=self.max_unshifted_logit > 0,
                            device=self.device)

    def candidate(self, rows: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Item rows ``[B, Q_item (+ V·E)]`` and the request's context ``[1, Q_ctx]`` → normalised
        candidate input ``[B, Q]`` (in this scorer's dtype)."""
        parts = [rows[:, : self.item_dim].to(self.device, self.dtype)]
        if context is not None:
            parts.append(context.to(self.device, self.dtype).expand(len(rows), -1))
        return self.candidate_norm(torch.cat(parts, dim=-1))

    def match_query(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The match-attention queries ``[B, V·E]`` of the item rows (None without match attention)."""
        return rows[:, self.item_dim :].to(self.device, self.dtype) if self.uses_match else None

    def head(self, pooled: torch.Tensor, candidate: torch.Tensor, dot_user: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled ``[B, M, D]`` and candidate ``[B, Q]`` → logits ``[B, T]``: dot interaction of the pooled
        vectors with the projected candidate, cross network, task heads; plus, for a model with
        ``dot_term``, ``<dot_user[t], dot_item(candidate)>`` (``dot_user [T, D]`` float32: the user's
        vectors, :meth:`SequenceRanker.dot_user_vectors`) before the calibration, as in the model."""
        x = interaction_input(pooled, candidate, self.candidate_projection(candidate))
        logits = self.heads.raw(self.cross(x))
        if self.dot_term:
            if dot_user is None:
                raise ValueError("this model has a dot term: pass the user's dot vectors")
            logits = logits.float() + self.dot_item(candidate).float() @ dot_user.to(self.device).T
        return self.heads.calibrate(logits)


@dataclass
class PreparedUser:
    """One user's pooling inputs in the layout of :func:`pool_candidates`.

    ``keys_t [H, d, N]`` (content keys times the score scale, transposed), ``values_t [H, d, N]``
    (content values, transposed: the values product runs as ``values_t @ weightsᵀ``),
    ``match_keys_t [V, E, N]`` (the events' unit match embeddings; None without match attention),
    ``match_weight [H, V]`` (times the score scale). With ``match_folded`` the match embeddings are
    instead rows ``d:`` of ``keys_t [H, d + V·E, N]`` (``match_keys_t`` None): the match logit is then
    part of the one logits product, whose queries get the matching ``V·E`` dims
    (:func:`folded_match_queries`). With ``base2`` the logits come out in base-2 units (keys and match
    weights also times ``log2(e)``): the unshifted path of :func:`pool_candidates` then takes ``exp2``,
    cheaper than ``exp`` in bf16 (about 2 ms of 34 per request at C=5000, N=1024)."""

    keys_t: torch.Tensor
    values_t: torch.Tensor
    match_keys_t: torch.Tensor | None
    match_weight: torch.Tensor | None
    match_folded: bool = False
    base2: bool = False

    @property
    def positions(self) -> int:
        return self.values_t.shape[2]


def prepare_user(pooling: KeyedAttentionPooling, keys: torch.Tensor, values: torch.Tensor, dtype: torch.dtype | None = None,
                 fold_match: bool = False, base2: bool = False, device: torch.device | None = None) -> PreparedUser:
    """From the cached keyed-pooling keys/values ``[N, H, d (+ V·E)]`` of one user (the model's own
    ``pooling``), computed in their dtype and then cast to ``dtype`` and moved to ``device`` (default: unchanged).
    ``fold_match``: the match embeddings as extra rows of the keys; ``base2``: logits in base-2 units
    (see :class:`PreparedUser`)."""
    d = pooling.head_dim
    scale = d**-0.5 * (math.log2(math.e) if base2 else 1.0)
    keys_t = (keys[..., :d] * scale).permute(1, 2, 0).contiguous()  # [H, d, N]
    content_values = values[..., :d].permute(1, 2, 0).contiguous()  # [H, d, N]
    match_keys_t = match_weight = None
    if pooling.match_vocabularies and keys.shape[-1] > d:
        v = pooling.match_vocabularies
        # the match part of the keys is the same for every head: take head 0
        match_keys_t = keys[:, 0, d:].reshape(len(keys), v, pooling.match_dim // v).permute(1, 2, 0).contiguous()  # [V, E, N]
        match_weight = (pooling.match_weight * scale).contiguous()  # [H, V]
        if fold_match:
            every_head = match_keys_t.reshape(1, pooling.match_dim, len(keys)).expand(pooling.num_heads, -1, -1)
            keys_t, match_keys_t = torch.cat([keys_t, every_head], dim=1), None  # [H, d + V·E, N]
    folded = fold_match and match_weight is not None
    return PreparedUser(*(_cast(t, dtype, device) for t in (keys_t, content_values, match_keys_t, match_weight)), folded, base2)


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype | None, device: torch.device | None) -> torch.Tensor | None:
    return tensor if tensor is None else tensor.to(device=device, dtype=dtype)


def folded_match_queries(user: PreparedUser, match_query: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The query dims that meet the folded match rows of ``user.keys_t``: per candidate, head h and
    vocabulary v, ``match_weight[h, v] · E_v[c]`` (the same for every slot). ``match_query [B, V·E]``
    (None: zeros) → ``[B, H, V·E]``."""
    match_weight = user.match_weight
    heads, vocabularies = match_weight.shape
    if match_query is None:
        return match_weight.new_zeros(batch, heads, user.keys_t.shape[1] - user.values_t.shape[1])
    per_head = match_query.view(batch, 1, vocabularies, -1) * match_weight.view(1, heads, vocabularies, 1)  # [B, H, V, E]
    return per_head.view(batch, heads, -1)


class Workspace:
    """Reused buffers for the attention blocks (logits and weights ``[H, chunk·M, N]``): a fresh
    multi-MiB tensor per block costs page faults (the allocator returns large blocks to the OS).
    Not thread-safe: one per caller at a time (the service holds its lock while scoring)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        size = 1
        for s in shape:
            size *= s
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)


def block_queries(q: torch.Tensor, match: torch.Tensor | None, chunk: int, workspace: "Workspace") -> torch.Tensor:
    """The attention's queries laid out block by block, so that each block of ``chunk`` candidates is
    one contiguous ``[H, chunk·M, F]`` tensor (a strided slice of ``[H, B·M, F]`` made every
    ``bmm`` copy its input: 79 copies per request at C=5000). ``q [B, M, H, d]`` (content), ``match
    [B, H, V·E]`` (folded match dims, the same for every slot; None: none) → ``[blocks, H, chunk·M,
    d (+ V·E)]``; rows past the last candidate of the last block are left unset (never read)."""
    b, m, h, d = q.shape
    f = d + (0 if match is None else match.shape[-1])
    blocks = -(-b // chunk)
    out = workspace.get("queries", (blocks, h, chunk, m, f), q)
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
    return out.view(blocks, h, chunk * m, f)


BLOCK_BYTES = 4 << 20  # logits of one attention block: about this CPU's L2 plus a share of L3
DEVICE_BLOCK_BYTES = 1 << 30  # on a GPU: few large blocks (each block costs kernel launches, not cache misses)


def block_candidates(pooling: KeyedAttentionPooling, positions: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Candidates per attention block so that its logits ``[H, chunk·M, N]`` take ``block_bytes`` in
    fp32: 64 at N=1024 with the default config, 16 at N=4096. The same count in bf16 (half the bytes)
    was the fastest measured there too (32 / 64 / 128 / 256 candidates: 85 / 79 / 80 / 85 ms at
    C=5000, N=1024, 1 thread)."""
    per_candidate = pooling.num_heads * pooling.num_slots * max(1, positions) * 4
    return max(8, block_bytes // per_candidate)


def logit_bound(user: PreparedUser, q: torch.Tensor, folded: torch.Tensor | None) -> float:
    """An upper bound of ``|logit|`` (in ``user``'s units, see ``PreparedUser.base2``) over every candidate, slot, head and position of one request
    (Cauchy–Schwarz): per head the largest query norm times the largest key norm, plus, when the
    match logit is added separately, the largest it can be (``sum_v |w[h, v]|``: cosines are in
    [-1, 1]). ``q [B, M, H, d]`` content queries, ``folded [B, H, V·E]`` folded match queries."""
    query_sq = torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32).amax(dim=(0, 1)).square()  # [H]
    if folded is not None:
        query_sq = query_sq + torch.linalg.vector_norm(folded, dim=-1, dtype=torch.float32).amax(0).square()
    key_sq = user.keys_t.float().square().sum(1).amax(-1)  # [H]
    bound = (query_sq * key_sq).sqrt()
    if user.match_keys_t is not None:
        bound = bound + user.match_weight.float().abs().sum(-1)
    return float(bound.max())


def pool_candidates(pooling: KeyedAttentionPooling, user: PreparedUser, candidate: torch.Tensor, match_query: torch.Tensor | None,
                    chunk: int | None = None, workspace: Workspace | None = None, max_unshifted_logit: float = 0.0) -> torch.Tensor:
    """``pooling.pool`` for one user: ``candidate [B, Q]``, ``match_query [B, V·E]`` → ``[B, M, D]``.

    The query projection runs over all B candidates at once; the attention (logits ``[H, chunk·M, N]``,
    softmax, weighted values) runs ``chunk`` candidates at a time so that its logits stay in cache (default: :func:`block_candidates`).

    The softmax: with ``max_unshifted_logit > 0`` (:class:`CandidateScorer` passes
    :data:`EXP_SAFE_LOGIT`, 60) and every logit of the request provably within that bound
    (:func:`logit_bound`: then ``exp`` / ``exp2`` neither overflows nor underflows to zero in float32
    or bfloat16, which share its exponent range, even summed over millions of positions), the block's
    logits are exponentiated in place without the row-max shift and the normalisation is left to the
    values product: ``[values | 1]ᵀ @ exp(logits)ᵀ`` gives each row's weighted sum and its
    denominator, divided once per row. Same math as the softmax (shift-invariant), one pass over the
    logits instead of three. Larger logits take the softmax (also ``max_unshifted_logit=0``, the
    default). Measured by ``bench/serving_softmax_paths.py`` (C=5000, N=1024, 2 threads,
    interleaved, 2026-11-29, with ``exp2`` and the transposed values product): bf16 36.9-37.1 against
    45.1-45.4 ms p50, fp32 70.8-70.9 against 79.9-80.1 ms (largest fp32 score difference 6e-8)."""
    b, m, h, d = len(candidate), pooling.num_slots, pooling.num_heads, pooling.head_dim
    n = user.positions
    if n == 0 or b == 0:  # an empty history pools to zeros (then the output projection); no candidates: an empty batch
        return pooling.out(candidate.new_zeros(b, m, pooling.model_dim))
    q = (pooling.query(candidate).view(b, m, pooling.model_dim) + pooling.slots).view(b, m, h, d)
    folded = folded_match_queries(user, match_query, b) if user.match_folded else None  # [B, H, V·E]
    use_match = user.match_keys_t is not None and match_query is not None
    if use_match:
        vocabularies = user.match_keys_t.shape[0]
        match_query = match_query.view(b, vocabularies, -1).transpose(0, 1)  # [V, B, E]
    workspace = workspace if workspace is not None else Workspace()
    chunk = min(b, chunk or block_candidates(pooling, n, BLOCK_BYTES if candidate.device.type == "cpu" else DEVICE_BLOCK_BYTES))
    queries = block_queries(q, folded, chunk, workspace)  # [blocks, H, chunk·M, d (+ V·E)]
    unshifted = max_unshifted_logit > 0 and logit_bound(user, q, folded) < max_unshifted_logit
    values_t = torch.cat([user.values_t, user.values_t.new_ones(h, 1, n)], dim=1) if unshifted else user.values_t  # [H, d (+ 1), N]
    f = values_t.shape[1]
    pooled_t = workspace.get("pooled", (len(queries), h, f, chunk * m), q)  # per block: [H, d (+ 1), chunk·M]
    for block, start in enumerate(range(0, b, chunk)):
        c = min(chunk, b - start)
        logits = workspace.get("logits", (h, c * m, n), q)
        torch.bmm(queries[block, :, : c * m], user.keys_t, out=logits)  # [H, c·M, N]
        if use_match:
            cosine = workspace.get("cosine", (vocabularies, c, n), q)
            torch.bmm(match_query[:, start : start + c], user.match_keys_t, out=cosine)  # [V, c, N]
            match = workspace.get("match", (h, c * n), q)
            torch.mm(user.match_weight, cosine.view(vocabularies, c * n), out=match)  # [H, c·N]
            logits.view(h, c, m, n).add_(match.view(h, c, 1, n))
        if unshifted:  # unnormalised: the values' row of ones gives the denominators
            weights = logits.exp2_() if user.base2 else logits.exp_()
        else:
            if user.base2:
                logits.mul_(math.log(2.0))
            weights = workspace.get("weights", (h, c * m, n), q)
            torch.ops.aten._softmax.out(logits, -1, False, out=weights)
        # values_t @ weightsᵀ: the same product as weights @ values, transposed; with d + 1 = 17 columns
        # the plain form ran at half speed in bf16 (10.1 vs 5.8 ms per request at C=5000, N=1024)
        if c == chunk:
            torch.bmm(values_t, weights.transpose(1, 2), out=pooled_t[block])
        else:  # the last, partial block: its slice of the buffer is not contiguous
            pooled_t[block, :, :, : c * m] = torch.bmm(values_t, weights.transpose(1, 2))
    pooled = pooled_t.view(-1, h, f, chunk, m).permute(0, 3, 4, 1, 2).reshape(-1, m, h, f)[:b]  # [B, M, H, d (+ 1)]
    pooled = pooled[..., :d] / pooled[..., d:] if unshifted else pooled
    return pooling.out(pooled.reshape(b, m, h * d))


def score_candidates(scorer: CandidateScorer, user: PreparedUser, rows: torch.Tensor, context: torch.Tensor | None,
                     chunk: int | None = None, workspace: Workspace | None = None, dot_user: torch.Tensor | None = None) -> torch.Tensor:
    """``SequenceRanker.candidate_side`` for one user over cached item rows ``[B, Q_item (+ V·E)]``
    (item embedding, then the match queries) and the request's context ``[1, Q_ctx]`` → float32 logits
    ``[B, T]``, computed in the scorer's dtype (``user`` prepared in the same dtype; ``dot_user``: see
    :meth:`CandidateScorer.head`)."""
    candidate = scorer.candidate(rows, context)
    pooled = pool_candidates(scorer.pooling, user, candidate, scorer.match_query(rows), chunk, workspace, scorer.max_unshifted_logit)
    return scorer.head(pooled, candidate, dot_user).float()
