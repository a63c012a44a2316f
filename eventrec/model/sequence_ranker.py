"""The event-sequence ranker: event model → jagged transformer → ad-keyed pooling → interaction → heads.

The interaction concatenates the M pooled vectors, the candidate's representation and the pairwise
dot products of the pooled vectors with a projection of the candidate (DLRM's dot interaction),
then DCNv2 cross layers and an MLP give one logit per task.

The forward pass splits into the *user side* (computed once per distinct history: event embeddings,
encoder, pooling keys/values) and the *candidate side* (per impression: item and context embeddings,
keyed pooling over the user side, the head). Serving caches the user side and runs only the
candidate side for thousands of ads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eventrec.data.batch import EventBatch
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import AttributeEmbedder, EmbeddingTables, FeatureSpec, vocabularies_used
from eventrec.model.encoder import JaggedTransformerEncoder
from eventrec.model.event_model import EventModel
from eventrec.model.heads import CrossNetwork, TaskHeads, interaction_input
from eventrec.model.identity_codes import identity_codes
from eventrec.model.keyed_pooling import KeyedAttentionPooling, MeanPooling
from eventrec.ops.jagged_helpers import gather_rows


@dataclass
class UserSide:
    """What the candidate side reads: encoded events ``[sum(N_g), D]``, keys/values ``[sum(N_g), H, d]``."""

    offsets: torch.Tensor
    max_len: int
    encoded: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None


class SequenceRanker(nn.Module):
    def __init__(self, spec: FeatureSpec, config: SequenceModelConfig):
        super().__init__()
        self.spec, self.config = spec, config
        schema = spec.schema
        imp = schema.impressions
        vocabularies = vocabularies_used(imp.item_attributes + imp.context_attributes)
        for stream in schema.streams:
            vocabularies |= vocabularies_used(stream.attributes)
        self.tables = EmbeddingTables(spec, config.attribute_dim, vocabularies)
        # vocabularies the candidate shares with some stream: targets of the match attention
        item_ids = {a.vocabulary_name: a.name for a in imp.item_attributes if a.kind in ("categorical", "hashed")}
        stream_vocabularies = {a.vocabulary_name for s in schema.streams for a in s.attributes if a.kind in ("categorical", "hashed")}
        use_match = config.match_attention and config.pooling == "keyed_attention"
        self.match_vocabularies = sorted(v for v in item_ids if v in stream_vocabularies) if use_match else []
        self.match_item_attributes = [item_ids[v] for v in self.match_vocabularies]
        # the transition channel: a "from" table read by the events, a "to" table read by the candidates
        self.transition_from = self.transition_to = None
        if config.transition_match and self.match_vocabularies:
            self.transition_from = EmbeddingTables(spec, config.attribute_dim, set(self.match_vocabularies))
            self.transition_to = EmbeddingTables(spec, config.attribute_dim, set(self.match_vocabularies))
        self.event_model = EventModel(spec, config, self.tables, self.match_vocabularies, self.transition_from)
        self.encoder = JaggedTransformerEncoder(config)
        self.item_embedder = AttributeEmbedder(imp.item_attributes, self.tables)
        self.context_embedder = AttributeEmbedder(imp.context_attributes, self.tables) if imp.context_attributes else None
        query_dim = self.item_embedder.out_dim + (self.context_embedder.out_dim if self.context_embedder else 0)
        self.candidate_norm = nn.LayerNorm(query_dim)
        if config.pooling == "keyed_attention":
            self.pooling: nn.Module = KeyedAttentionPooling(
                config.model_dim, query_dim, config.pooling_slots, config.num_heads,
                self.event_model.match_dim // config.attribute_dim, self.event_model.match_dim,  # blocks of E dims: embeddings (+ codes)
            )
            slots = config.pooling_slots
        else:
            self.pooling = MeanPooling()
            slots = 1
        # DLRM-style dot interaction between the pooled vectors and the candidate: an MLP learns
        # products of two inputs poorly, and "does this candidate match what the user did" is one
        self.candidate_projection = nn.Linear(query_dim, config.model_dim)
        head_in = slots * config.model_dim + query_dim + (slots + 1) * slots // 2
        self.cross = CrossNetwork(head_in, config.cross_layers, config.cross_rank)
        self.heads = TaskHeads(head_in, config.mlp_dims, len(imp.labels))
        if config.dot_term:
            self.num_tasks = len(imp.labels)
            self.dot_user = nn.Linear(config.model_dim, len(imp.labels) * config.model_dim)
            self.dot_item = nn.Linear(query_dim, config.model_dim)
        # the item's identity for in-batch negatives (rows with the positive's item are not negatives)
        self.item_key_attribute = next((a.name for a in imp.item_attributes if a.kind in ("categorical", "hashed")), None)

    def user_side(self, batch: EventBatch) -> UserSide:
        events, timestamps, match_keys = self.event_model(batch)
        encoded = self.encoder(events, timestamps)
        keys = values = None
        if isinstance(self.pooling, KeyedAttentionPooling):
            keys, values = self.pooling.keys_values(encoded, match_keys)
        return UserSide(encoded.offsets, encoded.max_len, encoded.values, keys, values)

    def candidate_input(self, item: dict, context: dict) -> torch.Tensor:
        """``[B, Q]``: the candidate's (and context's) attribute representation."""
        parts = [self.item_embedder(item)]
        if self.context_embedder is not None:
            parts.append(self.context_embedder(context))
        return self.candidate_norm(torch.cat(parts, dim=-1))

    def match_queries(self, item: dict) -> torch.Tensor | None:
        """``[B, V·E]``: the candidate's unit-normalised embeddings in the vocabularies it shares with
        the events (the target-attention queries), then with ``identity_match`` its identity codes in
        them, then with ``transition_match`` its unit-normalised "to" embeddings (``V·E`` more each, in
        the order of :meth:`EventModel.match_keys`); None without match attention."""
        if not self.match_vocabularies:
            return None
        pairs = list(zip(self.match_vocabularies, self.match_item_attributes))
        parts = [torch.nn.functional.normalize(self.tables[v](item[a]), dim=-1) for v, a in pairs]
        if self.config.identity_match:  # in the order of EventModel.match_keys: embeddings, then codes
            parts += [identity_codes(item[a], self.config.attribute_dim) for _, a in pairs]
        if self.transition_to is not None:
            parts += [torch.nn.functional.normalize(self.transition_to[v](item[a]), dim=-1) for v, a in pairs]
        return torch.cat(parts, dim=-1)

    def dot_user_vectors(self, user: UserSide) -> torch.Tensor:
        """``[G, T, D]``: per history and task, the user vector of the dot term, from the history's last
        encoded position (the causal encoder's summary of all its events; the summary token when empty)."""
        last = user.encoded[user.offsets[1:] - 1]
        return self.dot_user(last).view(len(last), self.num_tasks, -1)

    def dot_item_vectors(self, item: dict) -> torch.Tensor:
        """``[C, D]``: the dot term's item vectors of C items (attribute tensors ``[C]``), for a model
        whose candidates have no context attributes (the vector then depends on the item alone)."""
        if self.context_embedder is not None:
            raise ValueError("dot_item_vectors: the candidates have context attributes; an item's vector depends on its request")
        return self.dot_item(self.candidate_input(item, {}))

    def candidate_side(self, user: UserSide, item: dict, context: dict, history_index: torch.Tensor,
                       dot_parts: list | None = None) -> torch.Tensor:
        """Logits ``[B, T]`` of B candidates over the user side's histories. With ``dot_term``,
        ``dot_parts`` (if given) receives the user vectors ``[G, T, D]`` and item vectors ``[B, D]``."""
        candidate = self.candidate_input(item, context)
        if isinstance(self.pooling, KeyedAttentionPooling):
            pooled = self.pooling.pool(user.keys, user.values, user.offsets, user.max_len, candidate, history_index, self.match_queries(item))
        else:
            from eventrec.data.jagged import JaggedTensor

            pooled = self.pooling(JaggedTensor(user.encoded, user.offsets, user.max_len), candidate, history_index)
        x = interaction_input(pooled, candidate, self.candidate_projection(candidate))
        dot = None
        if self.config.dot_term:
            users, items = self.dot_user_vectors(user), self.dot_item(candidate)
            dot = (gather_rows(users, history_index) * items.unsqueeze(1)).sum(-1)
            if dot_parts is not None:
                dot_parts.extend([users, items])
        return self.output_logits(x, dot)

    def output_logits(self, x: torch.Tensor, dot: torch.Tensor | None) -> torch.Tensor:
        """Cross network and heads on the interaction input ``x [B, F]``, plus the dot term ``[B, T]``
        (if any) before the calibration, so that calibration maps the whole logit."""
        logits = self.heads.raw(self.cross(x))
        return self.heads.calibrate(logits if dot is None else logits + dot)

    def forward(self, batch: EventBatch, dot_parts: list | None = None) -> torch.Tensor:
        """Logits ``[B, T]`` (``dot_parts``: see :meth:`candidate_side`)."""
        return self.candidate_side(self.user_side(batch), batch.item, batch.context, batch.history_index, dot_parts)
