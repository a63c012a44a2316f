"""The quality benchmark's own metrics and splits (bench/quality), against brute-force versions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from bench.quality.next_item_data import leave_one_out
from bench.quality.ranking_metrics import hit_rate_and_ndcg, mean_reciprocal_rank, target_ranks
from bench.quality.report import KEPT, cell_mean, gain_verdict, kept_rows, markdown_table, mean_std, section_table, write_section
from bench.quality.trivago_breakdown import GROUPS, clickout_groups, group_mrr
from bench.quality.trivago_data import recency_scores

ROOT = Path(__file__).resolve().parents[2]


def brute_mrr(labels, scores, requests):
    total, count = 0.0, 0
    for r in np.unique(requests):
        mine = requests == r
        y, s = labels[mine], scores[mine]
        if not y.any():
            continue
        best = s[y == 1].max()
        rank = 1 + int(((s >= best) & (y == 0)).sum())
        total += 1.0 / rank
        count += 1
    return total / count


@pytest.mark.parametrize("seed", range(5))
def test_mrr_matches_a_per_request_loop(seed):
    rng = np.random.default_rng(seed)
    n = 400
    requests = rng.integers(0, 30, n)
    labels = (rng.random(n) < 0.1).astype(np.int8)
    scores = rng.integers(0, 8, n).astype(np.float64)  # many ties
    assert mean_reciprocal_rank(labels, scores, requests) == pytest.approx(brute_mrr(labels, scores, requests))


def test_clickout_groups_follow_what_was_touched_and_split_the_mrr():
    requests = np.array([7, 7, 7, 3, 3, 3, 5, 5])
    labels = np.array([0, 1, 0, 1, 0, 0, 0, 1])
    touched = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)  # 7: the clicked hotel; 3: another one; 5: none
    groups = clickout_groups(labels, touched, requests)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.1, 0.3, 0.3])  # ranks: 2, 2, 2 (pessimistic tie)
    by_group = group_mrr(labels, scores, requests, groups)
    assert [by_group[g] for g in GROUPS] == [0.5, 0.5, 0.5] and by_group["all"] == 0.5


def test_ranks_are_pessimistic_and_hr_ndcg_follow():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2], [0.0, 1.0, 2.0, 3.0]])
    ranks = target_ranks(scores, np.array([0, 1, 0]))
    assert ranks.tolist() == [1, 4, 4]
    hr, ndcg = hit_rate_and_ndcg(ranks, k=3)
    assert hr == pytest.approx(1 / 3) and ndcg == pytest.approx(1 / 3)
    hr, ndcg = hit_rate_and_ndcg(ranks, k=10)
    assert hr == 1.0 and ndcg == pytest.approx((1 + 2 / np.log2(5)) / 3)


def test_leave_one_out_holds_out_the_last_two_in_time_with_file_row_ties():
    frame = pl.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 2, 2, 3, 3],
        "item_id": [10, 11, 12, 13, 20, 21, 22, 30, 31],
        "timestamp": [5, 5, 3, 9, 1, 1, 1, 4, 5],
    }).with_row_index("_row")  # fmt: skip
    out, stats = leave_one_out(frame)
    by_user = {u: g.sort("order") for (u,), g in out.group_by("user_id")}
    assert by_user[1]["item_id"].to_list() == [12, 10, 11, 13]
    assert by_user[1]["split"].to_list() == ["train", "train", "validation", "test"]
    assert by_user[2]["split"].to_list() == ["train", "validation", "test"]  # all tied: file order
    assert by_user[2]["item_id"].to_list() == [20, 21, 22]
    assert stats["dropped_users_under_3"] == 1 and 3 not in by_user
    for _, g in by_user.items():
        assert g["unique_time"].is_unique().all() and g["unique_time"].diff().drop_nulls().min() > 0
        # whole seconds, strictly increasing, never before the real time: "strictly before" = "earlier in the sequence"
        assert g["event_time"].diff().drop_nulls().min() >= 1 and (g["event_time"] >= g["timestamp"]).all()
    assert by_user[1]["event_time"].to_list() == [3, 5, 6, 9]  # the tie at 5: one second apart
    assert by_user[2]["event_time"].to_list() == [1, 2, 3]


def test_shuffled_ties_reorder_only_within_a_tie_and_are_drawn_once():
    """Ties in increasing item id, as in Amazon's file: the shuffle takes that order away, keeps time
    order between different times, and is the same on every call (every model gets one split)."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 6)
    frame = pl.DataFrame({
        "user_id": users, "item_id": np.tile(np.arange(6), 40) + 100 * users,
        "timestamp": np.tile([1, 2, 2, 2, 2, 3], 40) * 86_400 + rng.integers(0, 2, len(users)) * 10 * 86_400,
    }).sort(["user_id", "timestamp", "item_id"]).with_row_index("_row")  # fmt: skip
    row, _ = leave_one_out(frame)
    shuffled, _ = leave_one_out(frame, ties="shuffled")
    assert shuffled.equals(leave_one_out(frame, ties="shuffled")[0])
    key = ["user_id", "order"]
    row, shuffled = row.sort(key), shuffled.sort(key)
    assert shuffled["timestamp"].to_list() == row["timestamp"].to_list()  # same times at the same positions
    assert shuffled.group_by("user_id", "timestamp").agg(pl.col("item_id").sort()).sort("user_id", "timestamp").equals(
        row.group_by("user_id", "timestamp").agg(pl.col("item_id").sort()).sort("user_id", "timestamp"))  # same items per tie

    def tied_pairs(out: pl.DataFrame) -> pl.DataFrame:  # (item, the item before it) where both share a time
        previous = [pl.col(c).shift(1).over("user_id").alias(f"previous_{c}") for c in ("item_id", "timestamp")]
        return out.with_columns(previous).filter(pl.col("timestamp") == pl.col("previous_timestamp"))

    assert (tied_pairs(row)["item_id"] > tied_pairs(row)["previous_item_id"]).all()  # file row: increasing ids
    assert 0.3 < (tied_pairs(shuffled)["item_id"] > tied_pairs(shuffled)["previous_item_id"]).mean() < 0.7  # the id order is gone
    assert shuffled.filter(pl.col("split") == "test")["item_id"].to_list() != row.filter(pl.col("split") == "test")["item_id"].to_list()
    with pytest.raises(ValueError, match="ties"):
        leave_one_out(frame, ties="random")


def test_recency_rule_only_reads_events_strictly_before_the_clickout():
    examples = pl.DataFrame({"example": [0, 1, 2], "user_id": ["a", "a", "b"], "item_id": [7, 8, 7], "timestamp": [100, 100, 100]})
    events = pl.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": [7, 7, 8, 7], "timestamp": [40, 90, 100, 150]})
    scores = recency_scores(examples, events)
    assert scores.tolist() == [1 / 11, 0.0, 0.0]  # last touch 10 s before; equal second and later ignored


def test_gain_rule_and_sections(tmp_path):
    ours = {"auc": [0.80, 0.81, 0.82], "ne": [0.7, 0.7, 0.7]}
    theirs = {"auc": [0.70, 0.70, 0.70], "ne": [0.8, 0.8, 0.8]}
    assert "gain" in gain_verdict(ours, theirs)
    assert "loss" in gain_verdict(theirs, ours)
    assert "no clear" in gain_verdict(ours, {"auc": [0.809, 0.811, 0.81], "ne": [0.69, 0.7, 0.7]})
    path = tmp_path / "results.md"
    write_section("a", "first", path)
    write_section("b", "second", path)
    write_section("a", "replaced", path)
    text = path.read_text()
    assert "replaced" in text and "first" not in text and text.index("replaced") < text.index("second")


def test_a_section_keeps_the_rows_whose_run_folders_are_gone(tmp_path):
    """A table regenerated in a checkout without some run folders keeps those rows as written."""
    path = tmp_path / "results.md"
    first = markdown_table({"kept model": {"hr@10": [0.1, 0.2]}, "rerun model": {"hr@10": [0.3]}}, ["hr@10"])
    write_section("a", "Command: x.\n\n" + first + "\n\nRatios:\n- not a row", path)
    earlier = section_table("a", path)
    assert earlier == {"kept model": ["2", "0.1500 ± 0.0707"], "rerun model": ["1", "0.3000"]}
    lines = kept_rows(earlier, {"rerun model"})
    assert lines == [f"| kept model{KEPT} | 2 | 0.1500 ± 0.0707 |"]
    write_section("a", markdown_table({"rerun model": {"hr@10": [0.4]}}, ["hr@10"]) + "\n" + "\n".join(lines), path)
    assert section_table("a", path) == {"rerun model": ["1", "0.4000"], "kept model": ["2", "0.1500 ± 0.0707"]}  # marked, read back by name
    assert cell_mean("0.1500 ± 0.0707") == 0.15 and cell_mean("0.3000") == 0.3
    assert section_table("missing", path) == {}


def test_exact_item_ids_give_every_item_its_own_embedding_row():
    from bench.quality.next_item import with_exact_item_ids
    from eventrec.schema import load_schema
    from eventrec.store.vocab import build_vocabulary

    schema = load_schema(ROOT / "bench" / "quality" / "schemas" / "amazon_grocery_next_item.yaml")
    exact = with_exact_item_ids(schema)
    for attributes in ([a for s in exact.streams for a in s.attributes], exact.impressions.item_attributes):
        kinds = {a.name: a.kind for a in attributes}
        assert kinds == {"item_id": "categorical", "category": "categorical"}
        assert {a.vocabulary_name for a in attributes} == {"item_id", "category"}  # still one shared item table
    items = pl.Series(np.arange(5_000, dtype=np.int64) * 7919)
    codes = build_vocabulary("item_id", items).encode(items).to_numpy()
    assert len(np.unique(codes)) == 5_000  # distinct ids, distinct rows (hashing shares some)


def test_each_target_sees_every_earlier_item_of_its_sequence_even_within_a_tie(tmp_path):
    """The eventrec store's history of every request is exactly the earlier part of the user's
    sequence (ties included), as SASRec's is: same-day Amazon baskets, same-second MovieLens ratings."""
    from bench.quality.next_item import leave_one_out_store, with_exact_item_ids, write_logs
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

    day = 86_400
    frame = pl.DataFrame({  # user 1: a basket of 3 on day 2 then one more on the same day; user 2: all tied
        "user_id": [1, 1, 1, 1, 1, 2, 2, 2, 2],
        "item_id": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "timestamp": [day, 2 * day, 2 * day, 2 * day, 2 * day, 3 * day, 3 * day, 3 * day, 3 * day],
    }).with_row_index("_row")  # fmt: skip
    sequences, _ = leave_one_out(frame)
    items = pl.DataFrame({"item_id": list(range(1, 12)), "category": ["a", "b"] * 5 + ["a"]})
    write_logs("amazon_grocery", sequences, items, tmp_path / "logs", negatives=2, seed=0)
    schema = with_exact_item_ids(load_schema(ROOT / "bench" / "quality" / "schemas" / "amazon_grocery_next_item.yaml"))
    build_store(schema, tmp_path / "logs", tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    leave_one_out_store(store)
    impressions = pl.read_parquet(tmp_path / "logs" / "impressions.parquet")
    order = dict(zip(sequences["event_time"].to_list(), sequences["order"].to_list()))
    rows = np.arange(store.num_examples)
    starts, ends = store.history_bounds("purchase", rows)
    requests = dict(zip(impressions["request_id"].to_list(), impressions["timestamp"].to_list()))
    for row, length in zip(rows, ends - starts):
        assert length == order[requests[int(store.request_ids[row])]]  # all earlier items, none later


def test_history_negatives_are_earlier_items_of_the_user_never_the_positive():
    from bench.quality.next_item import history_negatives

    sequences = pl.DataFrame({"user_id": [1, 1, 1, 1, 1, 2, 2], "order": [0, 1, 2, 3, 4, 0, 1], "item_id": [10, 11, 12, 11, 13, 20, 21]})
    targets = sequences.filter(pl.col("order") >= 1).with_row_index("request_id")
    picked = history_negatives(sequences, targets, count=2, seed=0)
    for request in targets.iter_rows(named=True):
        earlier = set(sequences.filter((pl.col("user_id") == request["user_id"]) & (pl.col("order") < request["order"]))["item_id"].to_list())
        mine = picked.filter(pl.col("request_id") == request["request_id"])["item_id"].to_list()
        assert len(mine) == len(set(mine)) == min(2, len(earlier - {request["item_id"]}))
        assert set(mine) <= earlier - {request["item_id"]}
    # user 1's 4th item (11 again) has earlier items {10, 11, 12}: 11 is its positive, so only 10 and 12
    assert sorted(picked.filter(pl.col("request_id") == 2)["item_id"].to_list()) == [10, 12]
    assert picked.equals(history_negatives(sequences, targets, count=2, seed=0))  # seeded


def test_written_requests_carry_their_history_negatives(tmp_path):
    """``write_logs(history=H)``: each request keeps its positive and uniform draws, plus up to H of
    the user's earlier items as more negatives (target 0), and the store builds from them."""
    from bench.quality.next_item import with_exact_item_ids, write_logs
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

    day = 86_400
    frame = pl.DataFrame({"user_id": [1, 1, 1, 1, 1, 2, 2, 2], "item_id": [1, 2, 3, 4, 5, 6, 7, 8],
                          "timestamp": [day * t for t in (1, 2, 3, 4, 5, 1, 2, 3)]}).with_row_index("_row")
    sequences, _ = leave_one_out(frame)
    items = pl.DataFrame({"item_id": list(range(1, 12)), "category": ["a", "b"] * 5 + ["a"]})
    write_logs("amazon_grocery", sequences, items, tmp_path / "plain", negatives=2, seed=0)
    write_logs("amazon_grocery", sequences, items, tmp_path / "logs", negatives=2, seed=0, history=2)
    plain, rows = (pl.read_parquet(tmp_path / name / "impressions.parquet") for name in ("plain", "logs"))
    targets = sequences.filter(pl.col("order") >= 1).sort(["user_id", "order"])
    for request, target in enumerate(targets.iter_rows(named=True)):
        mine, before = rows.filter(pl.col("request_id") == request), plain.filter(pl.col("request_id") == request)
        earlier = sequences.filter((pl.col("user_id") == target["user_id"]) & (pl.col("order") < target["order"]))["item_id"].to_list()
        added = Counter(mine.filter(pl.col("target") == 0)["item_id"].to_list())
        added.subtract(Counter(before.filter(pl.col("target") == 0)["item_id"].to_list()))  # the same uniform draws, plus:
        assert set(added.values()) <= {0, 1}
        from_history = {item for item, n in added.items() if n == 1}
        assert len(from_history) == min(2, len(earlier)) and from_history <= set(earlier) - {target["item_id"]}
        assert mine.filter(pl.col("target") == 1)["item_id"].to_list() == [target["item_id"]]
    schema = with_exact_item_ids(load_schema(ROOT / "bench" / "quality" / "schemas" / "amazon_grocery_next_item.yaml"))
    build_store(schema, tmp_path / "logs", tmp_path / "store")
    assert EventStore.open(tmp_path / "store").num_examples == rows.height


def test_every_variant_file_validates_and_names_a_row_of_its_table():
    """Each folder of bench/quality/variants is a table of docs/results.md: every file validates, and
    its label is a row of that table as written (so a fresh checkout regenerates the table unchanged)."""
    from bench.quality.variant import VARIANTS, load_variant, variant_files

    results = ROOT / "docs" / "results.md"
    folders = sorted(p for p in VARIANTS.iterdir() if p.is_dir())
    assert {f.name for f in folders} == {"trivago", "trivago-ablations", "ml100k", "amazon_grocery"}
    for folder in folders:
        files = variant_files([folder])
        assert files[0].name == "main.yaml"
        variants = [load_variant(path) for path in files]
        for path, v in zip(files, variants):  # written in the current shapes, not the legacy fields the model config still moves
            assert set(yaml.safe_load(path.read_text())["model"]) <= set(type(v.model).model_fields), path
        assert len({v.label for v in variants}) == len({v.run_id for v in variants}) == len(variants)
        assert len({v.dataset for v in variants}) == 1
        written = section_table(folder.name, results)
        assert {v.label for v in variants} <= set(written), folder.name
        for v in variants:
            assert written[v.label][0] == str(v.seeds)  # the seeds column


def test_the_run_id_is_a_hash_of_the_resolved_configs(tmp_path):
    from bench.quality.variant import load_variant

    base = {"dataset": "ml100k", "label": "a", "seeds": 3, "model": {"kind": "sequence"},
            "train": {"epochs": 4, "calibrate": False, "objectives": [{"kind": "request_softmax"}]}, "protocol": {"select": "ndcg"}}

    def run_id(**changes):
        path = tmp_path / "v.yaml"
        path.write_text(yaml.safe_dump({**base, **changes}))
        return load_variant(path).run_id

    first = run_id()
    assert len(first) == 12 and first == run_id()
    assert run_id(label="b", seeds=1) == first  # the row's name and seed count are not the run
    assert run_id(train={**base["train"], "epochs": 4, "learning_rate": 2e-3}) == first  # the defaults, written out: the same config
    assert run_id(model={"kind": "sequence", "attribute_dim": 32}) != first
    assert run_id(train={**base["train"], "batch_size": 64}) != first
    assert run_id(train={**base["train"], "objectives": [{"kind": "request_softmax", "weight": 0.5}]}) != first
    assert run_id(protocol={"select": "ndcg", "negatives": 32}) != first
    assert run_id(dataset="amazon_grocery") != first


@pytest.mark.parametrize("changes, field", [
    ({"protocol": {"negativs": 8}}, "negativs"),
    ({"protocol": {"select": "mrr"}}, "select"),
    ({"train": {"epochs": 4, "stop_on": "auc"}}, "stop_on"),
    ({"train": {"epochs": 3}, "protocol": {"negative_rounds": 2}}, "negative_rounds"),
    ({"model": {"kind": "sequence", "pooling_slot": 2}}, "pooling_slot"),
    ({"train": {"epochs": 4, "loss": "request_softmax"}}, "loss"),  # the old single-loss field: objectives now
    ({"train": {"epochs": 4, "objectives": [{"kind": "catalogue_softmax"}]}}, "objectives"),  # experimental kinds go under experimental
    ({"protocol": {"logq": True}}, "logq"),  # removed with TrainConfig.logq_column
    ({"dataset": "movielens"}, "dataset"),
])
def test_variant_errors_name_the_field(tmp_path, changes, field):
    from bench.quality.variant import load_variant

    base = {"dataset": "ml100k", "label": "a", "model": {"kind": "sequence"}, "train": {"epochs": 4}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**base, **changes}))
    with pytest.raises(ValueError, match=field):
        load_variant(path)


def test_variant_files_resolve_to_the_configs_of_the_documented_commands():
    """The protocol options map to the same TrainConfig as the scripts that made the figures did
    (trivago.py: stop on AUC with a listwise term; next_item.py: epochs and validations per round,
    selection on the full-catalogue NDCG), and the objectives are those of the figures, in the order
    their losses were added (main loss, listwise term, catalogue softmax, sampled catalogue logit)."""
    from bench.quality.variant import VARIANTS, load_variant
    from eventrec.model.config import SequenceModelConfig
    from eventrec.training.config import TrainConfig

    trivago = load_variant(VARIANTS / "trivago" / "default_listwise_0.3_wa_0.99.yaml")
    assert trivago.model == SequenceModelConfig()
    assert trivago.train_config(2) == TrainConfig(
        epochs=1, batch_size=512, validations_per_epoch=4, patience=2, stop_on="auc", seed=2,
        objectives=[{"kind": "bce"}, {"kind": "request_softmax", "weight": 0.3}], experimental={"weight_average_decay": 0.99})
    amazon = load_variant(VARIANTS / "amazon_grocery" / "main.yaml")
    assert amazon.model == SequenceModelConfig(experimental={"dot_term": True}, attribute_dim=64, cross_rank=32, item_counters=None)
    assert amazon.train_config(1) == TrainConfig(
        epochs=4, batch_size=279, validations_per_epoch=1, patience=3, calibrate=False, seed=1, impression_validation=False,
        stop_on="score", objectives=[{"kind": "request_softmax"}],
        experimental={"objectives": [{"kind": "catalogue_softmax", "weight": 0.3}, {"kind": "sampled_catalogue_logit", "weight": 1.0, "draws": 24}],
                      "weight_average_decay": 0.999})
    assert [(o.kind, o.weight) for _, o in amazon.train_config(1).all_objectives()] == [
        ("request_softmax", 1.0), ("catalogue_softmax", 0.3), ("sampled_catalogue_logit", 1.0)]
    assert (amazon.protocol.ties, amazon.protocol.negatives, amazon.protocol.test_users, amazon.protocol.validation_users) == ("shuffled", 8, 3000, 500)
    rounds = amazon.model_copy(update={"protocol": amazon.protocol.model_copy(update={"negative_rounds": 2})})
    assert (rounds.train_config(0).epochs, rounds.train_config(0).validations_per_epoch) == (2, 2)


def test_kept_rows_give_the_verdict_their_written_figures():
    from bench.quality.report import summary_values

    values = summary_values(["3", "0.8693 ± 0.0016", "-", "0.6004"], ["auc", "ne", "mrr"])
    assert set(values) == {"auc", "mrr"} and values["mrr"] == [0.6004]
    mean, std = mean_std(values["auc"])
    assert mean == pytest.approx(0.8693) and std == pytest.approx(0.0016)
    seeds = {"auc": [0.8675, 0.8693, 0.8711]}  # the same verdict from the seeds and from their written cell
    written = summary_values(["3", markdown_table({"m": seeds}, ["auc"]).splitlines()[-1].split("|")[3]], ["auc"])
    other = {"auc": [0.8600, 0.8610, 0.8620]}
    assert gain_verdict(written, other, lower_better=None) == gain_verdict(seeds, other, lower_better=None)


def test_the_sampled_catalogue_term_trains_on_movielens_shaped_items(tmp_path):
    """Items with a multi-valued attribute (MovieLens genres) are drawn from the catalogue as jagged rows."""
    from bench.quality.next_item import leave_one_out_store, with_exact_item_ids, write_logs
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.training.config import TrainConfig
    from eventrec.training.trainer import train

    rng = np.random.default_rng(0)
    users, per_user = 12, 8
    frame = pl.DataFrame({
        "user_id": np.repeat(np.arange(1, users + 1), per_user),
        "item_id": rng.integers(1, 21, users * per_user),
        "rating": rng.integers(1, 6, users * per_user),
        "timestamp": np.tile(np.arange(per_user) * 3_600, users) + 1_000_000,
    }).with_row_index("_row")  # fmt: skip
    sequences, _ = leave_one_out(frame)
    items = pl.DataFrame({"item_id": list(range(1, 21)), "genres": [["drama", "comedy"][: 1 + i % 2] if i % 3 else [] for i in range(20)],
                          "year": [1990 + i % 4 for i in range(20)]})
    write_logs("ml100k", sequences, items, tmp_path / "logs", negatives=2, seed=0)
    schema = with_exact_item_ids(load_schema(ROOT / "bench" / "quality" / "schemas" / "ml100k_next_item.yaml"))
    build_store(schema, tmp_path / "logs", tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    leave_one_out_store(store)
    model = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], experimental={"dot_term": True},
                                item_counters=None)  # the sampled catalogue term refuses them
    config = TrainConfig(epochs=1, batch_size=12, warmup_steps=1, calibrate=False, objectives=[{"kind": "request_softmax"}],
                         experimental={"objectives": [{"kind": "catalogue_softmax", "weight": 0.3},
                                                      {"kind": "sampled_catalogue_logit", "weight": 1.0, "draws": 5}]})
    _, result = train(store, model, config, tmp_path / "run", show_progress=False)
    losses = [float(line.split(",")[2]) for line in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    assert result.steps == len(losses) > 0 and all(np.isfinite(losses))


def test_every_script_draws_the_same_users():
    from bench.quality.next_item_data import TEST_USERS_SEED, user_sample

    users = np.arange(100, 200)
    drawn = user_sample(users, 30, TEST_USERS_SEED)
    assert len(drawn) == 30 and len(set(drawn.tolist())) == 30 and set(drawn.tolist()) <= set(users.tolist())
    np.testing.assert_array_equal(drawn, np.sort(drawn))
    np.testing.assert_array_equal(drawn, user_sample(users, 30, TEST_USERS_SEED))  # seeded: the same draw each time
    assert user_sample(users, 0, TEST_USERS_SEED) is users  # 0: every user
