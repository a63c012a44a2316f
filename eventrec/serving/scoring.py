"""The candidate side of serving in one precision and on one device: the model's own methods on a cast copy.

:class:`CandidateScorer` holds the model (float32, its own device: nothing copied) or, for bf16 or
another scoring device, a copy of the model whose candidate-side modules (``candidate_norm``,
``pooling``, ``candidate_projection``, ``cross``, ``heads``, ``dot_item``) are cast once; the user
side's modules and tables are shared, never changed. Scoring is :meth:`SequenceRanker.score` of that
model with a :class:`~eventrec.ops.keyed_pooling_one_user.OneUserPlan`: the keyed pooling runs through
the op's ``"one_user"`` backend (one user, thousands of candidates; ``docs/kernels.md``).

In bf16 the heads' output layer (``[B, 64] → [B, T]``) and their calibration stay float32, and so do
the dot term's user vectors, the returned logits, the user state and the candidate cache: rounding
the logits themselves to bf16 was most of bf16's error on the trained demo model (mean |dp| 2.5e-4 →
5.5e-5, top-100 overlap 97.2 → 99.1 of 100) at no measurable cost. In bf16 the match term is folded
into the keys (a logits product with 32 inner dims costs less there than the separate match product
and broadcast add); in fp32 the separate path is cheaper and stays.
"""

from __future__ import annotations

import copy
import logging
import platform
from typing import Literal

import torch
from torch import nn

from eventrec.model.sequence_ranker import SequenceRanker, UserSide
from eventrec.ops.keyed_pooling_one_user import EXP_SAFE_LOGIT, OneUserPlan, Workspace

Precision = Literal["fp32", "bf16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
log = logging.getLogger(__name__)
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


class CandidateScorer:
    """The candidate side of a :class:`SequenceRanker` in ``dtype`` on ``device`` (see the module's doc)."""

    MODULES = ("candidate_norm", "pooling", "candidate_projection", "cross", "heads", "dot_item")

    def __init__(self, model: SequenceRanker, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else model.candidate_projection.weight.device
        self.max_unshifted_logit = EXP_SAFE_LOGIT  # see OneUserPlan (0: always normalise by the row maximum)
        weight = model.candidate_projection.weight
        self.cast = dtype != weight.dtype or self.device != weight.device
        self.model = cast_candidate_side(model, dtype, self.device) if self.cast else model

    def plan(self, workspace: Workspace | None = None, chunk: int | None = None) -> OneUserPlan:
        """How the one-user pooling runs here: base-2 logits, unnormalised where provably safe; the match
        term folded into the keys in a low precision."""
        return OneUserPlan(chunk, workspace if workspace is not None else Workspace(), self.max_unshifted_logit,
                           fold_match=self.dtype != torch.float32, base2=self.max_unshifted_logit > 0)

    def user(self, user: UserSide) -> UserSide:
        """The user side on the scoring device (its float32 tensors; the pooling casts what it reads),
        its search index moved with it (not rebuilt there)."""
        if not self.cast or user.keys.device == self.device:
            return user
        moved = (t.to(self.device) if t is not None else None for t in (user.encoded, user.keys, user.values, user.timestamps))
        times, ids, match_keys = (t.to(self.device) if t is not None else None for t in (user.request_times, user.match_ids, user.match_keys))
        index = user.search_index.to(self.device) if user.search_index is not None else None
        return UserSide(user.offsets.to(self.device), user.max_len, *moved, None, times, ids, index, match_keys)

    @torch.no_grad()
    def score(self, user: UserSide, rows: torch.Tensor, context: torch.Tensor | None, workspace: Workspace | None = None,
              chunk: int | None = None, plan: OneUserPlan | None = None, candidate_ids: torch.Tensor | None = None,
              item_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits ``[C, T]`` of embedded candidates ``rows [C, Q_item (+ V·E)]`` in the request's
        context ``[1, Q_ctx]`` for one user: :meth:`SequenceRanker.score` of this scorer's model, run as
        ``plan`` says (default :meth:`plan` of ``workspace`` and ``chunk``); ``candidate_ids [C, V]`` with
        ``candidate_search`` (:meth:`SequenceRanker.candidate_ids`); ``item_counts [C, K]`` with ``item_counters``."""
        rows = rows.to(self.device, self.dtype)
        context = context.to(self.device, self.dtype) if context is not None else None
        ids = candidate_ids.to(self.device) if candidate_ids is not None else None
        counts = item_counts.to(self.device) if item_counts is not None else None
        return self.model.score(self.user(user), rows, context, plan=plan if plan is not None else self.plan(workspace, chunk), candidate_ids=ids,
                                item_counts=counts).float()


class Float32Output(nn.Module):
    """``module`` (float32) applied to a lower-precision input: ``[..., F] → [..., F']`` float32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


def cast_candidate_side(model: SequenceRanker, dtype: torch.dtype, device: torch.device) -> SequenceRanker:
    """A shallow copy of ``model`` whose candidate-side modules are copies in ``dtype`` on ``device``
    (the heads' output layer and calibration, and the dot term's user projection, float32); the other
    modules are the model's own (shared, not changed)."""
    clone = copy.copy(model)
    clone._modules = dict(model._modules)  # the copy's own module table: setting one leaves the model's
    for name in CandidateScorer.MODULES:
        if name in model._modules:
            clone._modules[name] = copy.deepcopy(model._modules[name]).to(device=device, dtype=dtype).eval()
    clone.heads.logits = Float32Output(copy.deepcopy(model.heads.logits).to(device))
    clone.heads.calibration_scale = model.heads.calibration_scale.detach().to(device, copy=True)
    clone.heads.calibration_bias = model.heads.calibration_bias.detach().to(device, copy=True)
    if "dot_user" in model._modules:
        clone._modules["dot_user"] = copy.deepcopy(model.dot_user).to(device)
    return clone
