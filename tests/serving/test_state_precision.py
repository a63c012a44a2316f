"""Serving at lower precisions: cached user states in bf16 or int8 (``state_precision``) and the
embedding tables in fp16 or int8 (``table_precision``). Scores stay within 1e-2 of fp32; a state is
read the same whether it was just computed or cached; the codec and the options are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eventrec.cli import app
from eventrec.model.quantized_tables import Float16Embedding, Int8RowwiseEmbedding, table_precision_of
from eventrec.serving import RankingService
from eventrec.serving.codec import CorruptEntry, decode_state, encode_state
from eventrec.serving.redis_store import RedisStateStore
from eventrec.serving.state_precision import RowwiseInt8, compress, decompress, quantize_rows

from test_core import candidates, click, view
from test_precision import many_candidates, random_model, top

CONTEXT = {"placement": "feed"}
REQUESTS = [(1, 250), (2, 400), (3, 160), ("someone-new", 400)]


def long_history(service: RankingService, user: str = "long", n: int = 600) -> None:
    """A user of ``n`` appended clicks (times 1000, 1001, ...) over a few ads and categories."""
    service.append_events(user, [click(1000 + i, ad=5 + i % 7, category=["hats", "shoes", "bags"][i % 3]) for i in range(n)])


def test_int8_rows_round_trip_within_half_a_step():
    torch.manual_seed(0)
    x = torch.randn(50, 4, 16) * torch.logspace(-3, 2, 50)[:, None, None]
    x[7] = 0.0
    q = quantize_rows(x)
    assert q.codes.dtype == torch.int8 and q.scales.shape == (50,) and int(q.codes.abs().max()) <= 127
    back = decompress(q)
    assert back.dtype == torch.float32 and torch.equal(back[7], torch.zeros(4, 16))
    step = x.reshape(50, -1).abs().amax(dim=1) / 127
    assert ((back - x).abs().reshape(50, -1).amax(dim=1) <= step / 2 * (1 + 1e-5)).all()
    again = quantize_rows(back)  # a dequantized row quantizes to its codes again: a grown state does not drift
    assert torch.equal(again.codes, q.codes) and torch.allclose(again.scales, q.scales, rtol=1e-6, atol=0)
    assert q.nbytes == 50 * 64 + 50 * 4
    half = compress(x, "bf16")
    assert half.dtype == torch.bfloat16 and decompress(half).dtype == torch.float32
    assert compress(x, "fp32") is x and compress(None, "int8") is None


@pytest.mark.parametrize("precision", ["int8", "bf16"])
@pytest.mark.parametrize("seed", [0, 1])
def test_state_precision_scores_within_1e_2_of_fp32(served, precision, seed):
    """Random default-size models (D=64, 4 heads), 2000 candidates, short and 600-event histories."""
    store, _, _ = served
    fp32 = RankingService(random_model(store, seed), store, "random")
    low = RankingService(fp32.model, store, "random", state_precision=precision)
    for service in (fp32, low):
        long_history(service)
    for user, t in REQUESTS + [("long", 5000)]:
        a = fp32.rank(user, many_candidates(), CONTEXT, t).scores
        b = low.rank(user, many_candidates(), CONTEXT, t)
        assert np.isfinite(b.scores).all() and np.abs(a - b.scores).max() < 1e-2
        again = low.rank(user, many_candidates(), CONTEXT, t)
        assert again.user_state == "hit"
        np.testing.assert_array_equal(again.scores, b.scores)  # a miss reads the kept state: as a hit does
    kept, full = low.users.get(("long", low.state_version)), fp32.users.get(("long", fp32.version))
    assert kept.precision == precision and full.precision == "fp32"
    assert isinstance(kept.keys, RowwiseInt8) if precision == "int8" else kept.keys.dtype == torch.bfloat16
    ratio = full.nbytes / kept.nbytes
    assert ratio > (3.0 if precision == "int8" else 1.9), ratio


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_state_precision_on_the_trained_model(served, precision):
    """The tiny trained model's logits reach |z| ~ 50 (test_precision.py): a state's rounding moves its
    logits in proportion (measured max |dz| <= 0.004 max |z| in int8, 0.001 in bf16; its probabilities
    near 0.5 by up to 0.03 in int8). Bounded relative to the logits' scale; the top candidates agree."""
    store, checkpoint, _ = served
    fp32 = RankingService.load(checkpoint, store)
    low = RankingService.load(checkpoint, store, state_precision=precision)
    assert low.state_version == f"{fp32.version}+states-{precision}" and low.version == fp32.version
    rows, ids, _, _ = fp32.cached_items(fp32.candidate_frame(many_candidates()))
    context = fp32.context_tensor(CONTEXT)
    for user, t in REQUESTS:
        za = fp32._score(fp32.user_side(user, t)[0], rows, context, ids)
        zb = low._score(low.user_side(user, t)[0], rows, context, ids)
        assert (za - zb).abs().max() < 0.01 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85


def test_int8_states_grow_incrementally(served_invariant):
    """The exactly incremental model: the int8 state (with each layer's keys/values) is grown by
    appends and read as a prefix, close to fp32 doing the same (relative to the tiny model's logits,
    as in :func:`test_state_precision_on_the_trained_model`)."""
    store, checkpoint, _ = served_invariant
    fp32 = RankingService.load(checkpoint, store)
    low = RankingService.load(checkpoint, store, state_precision="int8")
    rows, ids, _, _ = fp32.cached_items(fp32.candidate_frame(many_candidates()))
    context = fp32.context_tensor(CONTEXT)
    for service in (fp32, low):
        service.rank(2, candidates(), CONTEXT, 1000)
        service.append_events(2, [click(500), view(501, "hats")])
        service.append_events(2, [click(600, 5, "shoes")])
    statuses = []
    for t in (1000, 550, 1000):  # grown, then a prefix, then the whole again
        (side_a, status_a), (side_b, status_b) = fp32.user_side(2, t), low.user_side(2, t)
        statuses.append(status_b)
        za, zb = fp32._score(side_a, rows, context, ids), low._score(side_b, rows, context, ids)
        assert status_a == status_b and (za - zb).abs().max() < 0.01 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85
    assert statuses == ["incremental", "prefix", "hit"]
    state = low.users.get(("2", low.state_version))
    assert all(isinstance(k, RowwiseInt8) and isinstance(v, RowwiseInt8) for k, v in state.layer_kv)


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp32"])
def test_codec_round_trips_kept_states(served_invariant, precision):
    store, checkpoint, _ = served_invariant
    service = RankingService.load(checkpoint, store, state_precision=precision)
    service.rank(2, candidates(), CONTEXT, 1000)  # user 2's window starts at its first event: layers' keys/values kept
    state = service.users.get(("2", service.state_version))
    assert state.layer_kv is not None
    blob = encode_state(state, "2", service.state_version)
    back = decode_state(blob, "2", service.state_version)
    assert back.precision == precision and back.nbytes == state.nbytes and back.window == state.window
    parts = lambda s: [s.keys, s.values, s.match_keys] + [t for kv in s.layer_kv for t in kv]  # noqa: E731
    assert state.encoded is None and back.encoded is None and state.match_keys is not None
    for a, b in zip(parts(state), parts(back)):
        assert torch.equal(decompress(a), decompress(b))
    if precision == "int8":  # scales that do not match the codes' positions: unreadable, recomputed
        from safetensors.torch import load, save
        import json
        tensors = load(blob)
        tensors["keys.scales"] = tensors["keys.scales"][:-1]
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
        with pytest.raises(CorruptEntry):
            decode_state(save(tensors, metadata=header), "2", service.state_version)


def test_int8_states_through_a_shared_store(served, redis_url):
    """Two replicas with int8 states share them through a real Redis (keys name the precision), scores
    as the local service's."""
    import uuid

    from eventrec.serving.redis_store import connect

    store, checkpoint, _ = served
    client, namespace = connect(redis_url), f"test-{uuid.uuid4().hex[:8]}"
    a = RankingService.load(checkpoint, store, state_precision="int8", state_store=RedisStateStore(client, namespace))
    b = RankingService.load(checkpoint, store, state_precision="int8", state_store=RedisStateStore(client, namespace))
    first, second = a.rank(1, candidates(), CONTEXT, 1000), b.rank(1, candidates(), CONTEXT, 1000)
    assert (first.user_state, second.user_state) == ("miss", "hit")
    np.testing.assert_array_equal(first.scores, second.scores)
    assert sorted(k.decode() for k in client.scan_iter(f"{namespace}:*")) == [
        f"{namespace}:state-id:{a.version}+states-int8:1", f"{namespace}:state:{a.version}+states-int8:1"]
    fp32 = RankingService.load(checkpoint, store, state_store=RedisStateStore(client, namespace))
    assert fp32.rank(1, candidates(), CONTEXT, 1000).user_state == "miss"  # an fp32 replica never reads int8 states


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_table_precision_at_load(served, precision):
    """The tiny trained model (logits up to |z| ~ 50): bounded relative to its logits' scale (measured
    max |dz| <= 0.002 max |z| in int8); 1e-2 in probability on default-size models below."""
    store, checkpoint, _ = served
    fp32 = RankingService.load(checkpoint, store)
    low = RankingService.load(checkpoint, store, table_precision=precision)
    kind = Int8RowwiseEmbedding if precision == "int8" else Float16Embedding
    assert table_precision_of(low.model) == precision and all(isinstance(t, kind) for t in low.model.tables.tables.values())
    assert table_precision_of(fp32.model) == "fp32" and low.state_version == f"{fp32.version}+tables-{precision}"
    for user, t in REQUESTS:
        rows_a, ids_a, _, _ = fp32.cached_items(fp32.candidate_frame(many_candidates()))
        rows_b, ids_b, _, _ = low.cached_items(low.candidate_frame(many_candidates()))
        za = fp32._score(fp32.user_side(user, t)[0], rows_a, fp32.context_tensor(CONTEXT), ids_a)
        zb = low._score(low.user_side(user, t)[0], rows_b, low.context_tensor(CONTEXT), ids_b)
        assert (za - zb).abs().max() < 0.01 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_table_precision_of_a_given_model_leaves_it_unchanged(served, precision):
    """A random default-size model with its tables at ``precision`` and int8 states: within 1e-2."""
    store, _, _ = served
    model = random_model(store, 3)
    fp32 = RankingService(model, store, "random")
    both = RankingService(model, store, "random", table_precision=precision, state_precision="int8")
    assert table_precision_of(model) == "fp32" and table_precision_of(both.model) == precision
    for service in (fp32, both):
        long_history(service)
    for user, t in REQUESTS + [("long", 5000)]:
        a = fp32.rank(user, many_candidates(), CONTEXT, t).scores
        assert np.abs(a - both.rank(user, many_candidates(), CONTEXT, t).scores).max() < 1e-2
    with pytest.raises(ValueError, match=f"table_precision: 'fp32', but the model's tables are already {precision}"):
        RankingService(both.model, store, "random")


def test_precision_options_are_validated(served, monkeypatch):
    store, checkpoint, _ = served
    with pytest.raises(ValueError, match="state_precision"):
        RankingService.load(checkpoint, store, state_precision="int4")
    with pytest.raises(ValueError, match="table_precision"):
        RankingService.load(checkpoint, store, table_precision="bf16")
    for option, value in (("--state-precision", "fp16"), ("--table-precision", "int4")):
        result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), option, value])
        assert result.exit_code == 2 and option in result.output
    started = []
    monkeypatch.setattr("eventrec.serving.http.serve", lambda service, host, port, **options: started.append(service))
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), "--table-precision", "int8",
                                      "--state-precision", "int8"])
    assert result.exit_code == 0, result.output
    assert (started[0].table_precision, started[0].state_precision) == ("int8", "int8")
    assert table_precision_of(started[0].model) == "int8" and "tables int8, states int8," in result.output


def test_evaluate_with_int8_tables(served):
    store, checkpoint, _ = served
    outputs = {}
    for precision in ("fp32", "int8"):
        result = CliRunner().invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(checkpoint), "--split", "train",
                                          "--table-precision", precision])
        assert result.exit_code == 0, result.output
        outputs[precision] = result.output
    assert "model AUC" in outputs["int8"]
    result = CliRunner().invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(checkpoint), "--table-precision", "int4"])
    assert result.exit_code == 2 and "--table-precision" in result.output
