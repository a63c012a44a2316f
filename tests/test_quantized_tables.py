"""Embedding tables at int8 (row-wise scale and offset) or fp16 for inference: the lookup modules equal
the readable reference, stay within their rounding of float32, keep nn.Embedding's bag semantics
(padding id 0 left out), and a model's logits move little when its tables are replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eventrec.model.quantized_tables import (Float16Embedding, Int8RowwiseEmbedding, dequantize_rowwise, quantize_rowwise,
                                             quantize_tables, table_bytes, table_precision_of)


def float_table(rows: int = 300, dim: int = 16, seed: int = 0) -> nn.Embedding:
    torch.manual_seed(seed)
    table = nn.Embedding(rows, dim, padding_idx=0)
    with torch.no_grad():
        table.weight.mul_(torch.logspace(-3, 1, rows)[:, None])  # rows of very different ranges
        table.weight[0].zero_()
        table.weight[5] = 0.25  # a constant row
    return table


def test_rowwise_int8_reference():
    weight = float_table().weight.detach()
    codes, scale, offset = quantize_rowwise(weight)
    assert codes.dtype == torch.uint8 and scale.shape == offset.shape == (300,)
    back = dequantize_rowwise(codes, scale, offset)
    assert torch.equal(back[0], torch.zeros(16)) and torch.equal(back[5], torch.full((16,), 0.25))  # exact: constant rows
    assert ((back - weight).abs().amax(dim=1) <= scale / 2 * (1 + 1e-5) + 1e-7).all()
    assert torch.allclose(back.amin(dim=1), weight.amin(dim=1)) and torch.allclose(back.amax(dim=1), weight.amax(dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [Int8RowwiseEmbedding, Float16Embedding])
def test_lookups_equal_the_reference_and_stay_close_to_float32(kind):
    table = float_table()
    low = kind(table.weight)
    ids = torch.randint(0, 300, (7, 11))
    ids[0, :3] = 0
    got = low(ids)
    assert got.dtype == torch.float32 and got.shape == (7, 11, 16)
    torch.testing.assert_close(got, F.embedding(ids, low.dequantized()), rtol=0, atol=0)  # gather-then-dequantize == reference
    assert torch.equal(got[0, :3], torch.zeros(3, 16))
    error = (got - table(ids)).abs().amax(dim=-1)
    row_range = (table.weight.amax(dim=1) - table.weight.amin(dim=1))[ids]
    bound = row_range / 510 if kind is Int8RowwiseEmbedding else table.weight.abs().amax(dim=1)[ids] * 2**-11
    assert (error <= bound * (1 + 1e-4) + 1e-7).all()


@pytest.mark.parametrize("kind", [Int8RowwiseEmbedding, Float16Embedding])
@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_bags_keep_the_float_tables_padding_rule(kind, mode):
    """``F.embedding_bag`` on the dequantized table with ``padding_idx=0`` (id 0 out of the bag and of a
    mean's count; empty bags are zero), and with per-sample weights (no padding rule)."""
    table = float_table(seed=1)
    low = kind(table.weight)
    ids = torch.tensor([3, 0, 7, 0, 0, 9, 9, 4, 299])
    offsets = torch.tensor([0, 3, 5, 5, 9])  # bags [3, 0, 7], [0, 0], [], [9, 9, 4, 299]
    expected = F.embedding_bag(ids, low.dequantized(), offsets, mode=mode, include_last_offset=True, padding_idx=0)
    torch.testing.assert_close(low.bag(ids, offsets, mode), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(low.bag(ids, offsets, mode)[1:3], torch.zeros(2, 16))
    if mode == "sum":
        weights = torch.rand(len(ids))
        expected = F.embedding_bag(ids, low.dequantized(), offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)
        torch.testing.assert_close(low.bag(ids, offsets, "sum", weights), expected, rtol=1e-6, atol=1e-7)


def _tiny_store(tmp_path):
    from eventrec.schema import load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from tiny_world import write_tiny_world

    build_store(load_schema(write_tiny_world(tmp_path / "logs")), tmp_path / "logs", tmp_path / "store")
    return EventStore.open(tmp_path / "store")


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_models_with_quantized_tables(tmp_path, precision):
    """A random default-size sequence model and the DLRM (embedding bags): logits within their tables'
    rounding; only the vocabulary tables are replaced; the tables' bytes shrink."""
    import copy

    from eventrec.model.config import DlrmConfig, SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.training.factory import batch_function, build_model

    store = _tiny_store(tmp_path)
    spec = FeatureSpec.from_store(store)
    every = np.arange(store.num_examples)
    torch.manual_seed(0)
    models = [(config, build_model(spec, config).eval()) for config in (SequenceModelConfig(), DlrmConfig())]
    sequence = models[0][1]
    for config, model in models:
        batch = batch_function(config)(store, every)
        low = quantize_tables(copy.deepcopy(model), precision)
        assert table_precision_of(model) == "fp32" and table_precision_of(low) == precision
        others = [m for m in low.modules() if isinstance(m, nn.Embedding)]
        assert all(m.weight.dtype == torch.float32 for m in others)  # stream-type, recency, order: unchanged
        with torch.no_grad():
            a, b = model(batch), low(batch)
        assert b.dtype == torch.float32 and (a - b).abs().max() < (2e-2 if precision == "int8" else 2e-3)
        before, after = table_bytes(model), table_bytes(low)
        for name, (rows, held) in before.items():
            dim = held // (4 * rows)
            assert after[name] == (rows, rows * (dim + 8 if precision == "int8" else 2 * dim))
    assert quantize_tables(sequence, "fp32") is sequence and table_precision_of(sequence) == "fp32"
    with pytest.raises(ValueError, match="table_precision: expected one of"):
        quantize_tables(sequence, "int4")
