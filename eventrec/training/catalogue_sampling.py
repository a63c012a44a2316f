"""The whole model's logit trained against the whole catalogue, by sampling from its dot term.

A model with ``dot_term`` scores ``z = r + d``: ``d = <user, item>`` factorised (cheap over every
catalogue item), ``r`` the keyed pooling, cross network and heads (one full pass per candidate).
The catalogue softmax (``TrainConfig.catalogue_weight``) trains ``d`` alone against every item; the
request softmax trains ``z`` against a request's few logged negatives, mostly easy ones. Neither
trains ``r`` where a full-catalogue ranking needs it: among the items the dot term already ranks
high. This term draws S items per positive from the softmax of ``d`` over the catalogue, scores them
with the whole model, and corrects for the draw (:func:`eventrec.model.heads.dot_sampled_catalogue_loss`),
so that its expectation is the whole logit's full-catalogue softmax loss.
"""

from __future__ import annotations

import torch

from eventrec.data.batch import EventBatch
from eventrec.data.jagged import JaggedTensor
from eventrec.model.heads import dot_sampled_catalogue_loss


def sampled_catalogue_logit_loss(model, user, batch: EventBatch, logits: torch.Tensor, dot_users: torch.Tensor,
                                 catalogue_vectors: torch.Tensor, catalogue_item: dict, positive_item: torch.Tensor,
                                 draws: int) -> torch.Tensor:
    """The sampled full-catalogue softmax loss of the whole logit, for the first (only) task.

    ``model``: a ``SequenceRanker`` with ``dot_term``; ``user``: its ``user_side(batch)``;
    ``logits [B, 1]``: its logits of the batch's rows; ``dot_users [G, 1, D]``: the histories' dot
    vectors; ``catalogue_vectors [C, D]``: every catalogue item's dot vector; ``catalogue_item``:
    their attribute tensors ``[C]``; ``positive_item [B]``: each row's catalogue position. Draws
    ``draws`` items per positive row (with replacement, torch's global generator) from
    ``softmax_c <dot_users[g], catalogue_vectors[c]>``. Returns a scalar (0 without positives)."""
    labels = batch.labels[:, 0]
    rows = ((~torch.isnan(labels)) & (labels > 0.5)).nonzero().squeeze(1)  # [P]
    if not rows.numel():
        return logits.sum() * 0.0
    histories = batch.history_index[rows]
    scores = dot_users[histories, 0] @ catalogue_vectors.T  # [P, C]
    with torch.no_grad():
        drawn = torch.multinomial(torch.softmax(scores.float(), dim=1), draws, replacement=True)  # [P, S]
    flat = drawn.reshape(-1)
    drawn_item = {name: values.select_rows(flat) if isinstance(values, JaggedTensor) else values[flat]  # multi-valued: jagged
                  for name, values in catalogue_item.items()}
    drawn_logits = model.candidate_side(user, drawn_item, {}, histories.repeat_interleave(draws))[:, 0].view(len(rows), draws)
    residuals = drawn_logits - scores.gather(1, drawn)  # z - d of each drawn item
    kept = drawn != positive_item[rows].unsqueeze(1)
    return dot_sampled_catalogue_loss(logits[rows, 0], torch.logsumexp(scores, dim=1), residuals, kept)
