"""Serving at lower precisions: cached user states in bf16 or int8 (``state_precision``), their encoder
layers' keys/values also in int4 (``kv_cache_precision``) and the embedding tables in fp16 or int8
(``table_precision``). Scores stay within 1e-2 of fp32; a state is
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
from eventrec.serving.state_precision import GroupwiseInt4, RowwiseInt8, compress, decompress, quantize_groups_int4, quantize_rows

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


def test_int4_groups_round_trip_within_half_a_step():
    """Per (position, head) group: codes within half a step of x (the float16 scale's step), an all-zero
    group stays zero, the packing is two codes per byte (low nibble first, ``code + 8``), and a
    dequantized group quantizes to its codes again."""
    torch.manual_seed(0)
    x = torch.randn(50, 4, 16) * torch.logspace(-3, 2, 50)[:, None, None]
    x[7, 2] = 0.0
    q = quantize_groups_int4(x)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (50, 4, 8) and q.scales.shape == (50, 4) and q.scales.dtype == torch.float16
    assert q.shape == (50, 4, 16) and q.nbytes == 50 * 4 * (8 + 2)
    back = decompress(q)
    assert back.dtype == torch.float32 and torch.equal(back[7, 2], torch.zeros(16))
    scale = q.scales.float().unsqueeze(-1)
    assert ((back - x).abs() <= scale / 2 * (1 + 1e-3) + (x.abs() - 7 * scale).clamp(min=0)).all()
    codes = torch.round(x / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-7, 7)
    low, high = (q.packed & 15).to(torch.int64) - 8, (q.packed >> 4).to(torch.int64) - 8
    assert torch.equal(low, codes[..., 0::2].long()) and torch.equal(high, codes[..., 1::2].long())
    again = quantize_groups_int4(back)
    assert torch.equal(again.packed, q.packed) and torch.equal(again.scales, q.scales)
    assert compress(x, "int4").nbytes == q.nbytes
    with pytest.raises(ValueError, match="even"):
        quantize_groups_int4(torch.ones(3, 5))


@pytest.fixture(scope="module")
def long_window_store(tmp_path_factory):
    """The tiny world's store with ``max_length`` 1,024 in both streams: a 600-event user's window starts
    at its first event, so its state keeps each layer's keys/values and grows by appends."""
    import yaml

    from eventrec.schema import load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from tiny_world import write_tiny_world

    tmp = tmp_path_factory.mktemp("long_window")
    schema_path = write_tiny_world(tmp / "tiny")
    schema = yaml.safe_load(schema_path.read_text())
    for stream in schema["streams"]:
        stream["max_length"] = 1024
    schema_path.write_text(yaml.safe_dump(schema))
    build_store(load_schema(schema_path), tmp / "tiny", tmp / "store")
    return EventStore.open(tmp / "store")


@pytest.mark.parametrize("kv", ["int4", "int8"])
def test_kv_cache_precision_after_appends_within_1e_2_of_fp32(long_window_store, kv):
    """A random default-size model (exactly incremental): int8 states whose layers' keys/values are kept
    at ``kv``; a 600-event user grown by appends scores within 1e-2 of fp32 doing the same, and the
    grown state keeps its old positions' codes (only the new ones are compressed)."""
    store = long_window_store
    fp32 = RankingService(random_model(store, 0), store, "random")
    low = RankingService(fp32.model, store, "random", state_precision="int8", kv_cache_precision=kv)
    assert low.kv_cache_precision == kv and low.state_version == "random+states-int8" + ("+kv-int4" if kv == "int4" else "")
    for service in (fp32, low):
        long_history(service)
        service.rank("long", many_candidates(), CONTEXT, 5000)
    before = low.users.get(("long", low.state_version))
    assert before.kv_precision == kv and before.precision == "int8"
    for step in range(3):
        for service in (fp32, low):
            service.append_events("long", [click(5000 + 10 * step + i, ad=3 + i, category="hats") for i in range(4)])
        a = fp32.rank("long", many_candidates(), CONTEXT, 6000)
        b = low.rank("long", many_candidates(), CONTEXT, 6000)
        assert (a.user_state, b.user_state) == ("incremental", "incremental")
        assert np.isfinite(b.scores).all() and np.abs(a.scores - b.scores).max() < 1e-2
    grown = low.users.get(("long", low.state_version))
    assert grown.positions == before.positions + 12
    kind = GroupwiseInt4 if kv == "int4" else RowwiseInt8
    assert all(isinstance(t, kind) for layer in grown.layer_kv for t in layer) and isinstance(grown.keys, RowwiseInt8)
    n = before.positions
    assert torch.equal(grown.keys.codes[:n], before.keys.codes) and torch.equal(grown.keys.scales[:n], before.keys.scales)
    old_k, new_k = before.layer_kv[0][0], grown.layer_kv[0][0]
    assert torch.equal(decompress(new_k)[:n], decompress(old_k))
    full = fp32.users.get(("long", fp32.version))
    if kv == "int4":
        assert full.nbytes / grown.nbytes > 4.0, full.nbytes / grown.nbytes


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
    frame = fp32.candidate_frame(many_candidates())
    rows, ids, _, _ = fp32.cached_items(frame)
    context = fp32.context_tensor(CONTEXT)
    for user, t in REQUESTS:
        counts = fp32.item_counts(frame, t)
        za = fp32._score(fp32.user_side(user, t)[0], rows, context, ids, counts)
        zb = low._score(low.user_side(user, t)[0], rows, context, ids, counts)
        assert (za - zb).abs().max() < 0.01 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85


def test_int8_states_grow_incrementally(served_invariant):
    """The exactly incremental model: the int8 state (with each layer's keys/values) is grown by
    appends and read as a prefix, close to fp32 doing the same (relative to the tiny model's logits,
    as in :func:`test_state_precision_on_the_trained_model`)."""
    store, checkpoint, _ = served_invariant
    fp32 = RankingService.load(checkpoint, store)
    low = RankingService.load(checkpoint, store, state_precision="int8")
    frame = fp32.candidate_frame(many_candidates())
    rows, ids, _, _ = fp32.cached_items(frame)
    context = fp32.context_tensor(CONTEXT)
    for service in (fp32, low):
        service.rank(2, candidates(), CONTEXT, 1000)
        service.append_events(2, [click(500), view(501, "hats")])
        service.append_events(2, [click(600, 5, "shoes")])
    statuses = []
    for t in (1000, 550, 1000):  # grown, then a prefix, then the whole again
        (side_a, status_a), (side_b, status_b) = fp32.user_side(2, t), low.user_side(2, t)
        statuses.append(status_b)
        counts = fp32.item_counts(frame, t)
        za, zb = fp32._score(side_a, rows, context, ids, counts), low._score(side_b, rows, context, ids, counts)
        assert status_a == status_b and (za - zb).abs().max() < 0.01 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85
    assert statuses == ["incremental", "prefix", "hit"]
    state = low.users.get(("2", low.state_version))
    assert all(isinstance(k, RowwiseInt8) and isinstance(v, RowwiseInt8) for k, v in state.layer_kv)


def json_header(blob: bytes) -> dict:
    import json

    return json.loads(json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]["eventrec"])


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp32", "int8+int4"])
def test_codec_round_trips_kept_states(served_invariant, precision):
    store, checkpoint, _ = served_invariant
    states, _, kv = precision.partition("+")
    service = RankingService.load(checkpoint, store, state_precision=states, kv_cache_precision=kv or None)
    service.rank(2, candidates(), CONTEXT, 1000)  # user 2's window starts at its first event: layers' keys/values kept
    state = service.users.get(("2", service.state_version))
    assert state.layer_kv is not None
    blob = encode_state(state, "2", service.state_version)
    back = decode_state(blob, "2", service.state_version)
    assert back.precision == states and back.nbytes == state.nbytes and back.window == state.window
    parts = lambda s: [s.keys, s.values, s.match_keys] + [t for kv in s.layer_kv for t in kv]  # noqa: E731
    assert state.encoded is None and back.encoded is None and state.match_keys is not None
    for a, b in zip(parts(state), parts(back)):
        assert torch.equal(decompress(a), decompress(b))
    if precision == "int8+int4":
        assert back.kv_precision == "int4" and json_header(blob)["kv_precision"] == "int4"
    if precision.startswith("int8"):  # scales that do not match the codes' positions: unreadable, recomputed
        from safetensors.torch import load, save
        import json
        tensors = load(blob)
        tensors["keys.scales"] = tensors["keys.scales"][:-1]
        if precision == "int8+int4":  # and int4 scales of the wrong type
            tensors["keys.scales"] = load(blob)["keys.scales"]
            tensors["layer0.k.scales"] = tensors["layer0.k.scales"].float()
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
        frame = fp32.candidate_frame(many_candidates())
        rows_a, ids_a, _, _ = fp32.cached_items(frame)
        rows_b, ids_b, _, _ = low.cached_items(low.candidate_frame(many_candidates()))
        counts = fp32.item_counts(frame, t)
        za = fp32._score(fp32.user_side(user, t)[0], rows_a, fp32.context_tensor(CONTEXT), ids_a, counts)
        zb = low._score(low.user_side(user, t)[0], rows_b, low.context_tensor(CONTEXT), ids_b, counts)
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
    with pytest.raises(ValueError, match="kv_cache_precision"):
        RankingService.load(checkpoint, store, kv_cache_precision="int2")
    with pytest.raises(ValueError, match="kv_cache_precision: int4 needs an even head dimension"):
        RankingService(random_model(store, 0, model_dim=60, num_heads=4), store, "random", kv_cache_precision="int4")
    with pytest.raises(ValueError, match="table_precision"):
        RankingService.load(checkpoint, store, table_precision="bf16")
    for option, value in (("--state-precision", "fp16"), ("--table-precision", "int4"), ("--kv-cache-precision", "int2")):
        result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), option, value])
        assert result.exit_code == 2 and option in result.output
    started = []
    monkeypatch.setattr("eventrec.serving.http.serve", lambda service, host, port, **options: started.append(service))
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), "--table-precision", "int8",
                                      "--state-precision", "int8"])
    assert result.exit_code == 0, result.output
    assert (started[0].table_precision, started[0].state_precision, started[0].kv_cache_precision) == ("int8", "int8", "int8")
    assert table_precision_of(started[0].model) == "int8" and "tables int8, states int8," in result.output
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), "--state-precision", "int8",
                                      "--kv-cache-precision", "int4"])
    assert result.exit_code == 0, result.output
    assert started[1].kv_cache_precision == "int4" and "states int8 (KV cache int4)," in result.output


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
