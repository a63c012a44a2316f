"""RecBole 1.2.1 SASRec on the next-item leave-one-out split (issue 6); runs in ``.venv-peers``.

    .venv-peers/bin/python bench/quality/peers/recbole_sasrec.py --dataset ml100k \
        --data bench/out/quality/ml100k/recbole --out bench/out/quality/ml100k/sasrec --seeds 0 1 2

Uses RecBole's public API only (``Config``, ``create_dataset``, ``data_preparation``, ``SASRec``,
``Trainer``; not ``recbole.quick_start``, which imports ray.tune). The atomic file
``<data>/<dataset>/<dataset>.inter`` holds each user's sequence with strictly increasing
``timestamp:float``; ``eval_args`` LS valid_and_test + TO holds out the last item (test) and the
second-to-last (validation) per user, full-catalogue ranking (no item excluded but RecBole's padding
id 0), HR@10 / NDCG@10, early stopping on validation NDCG@10. Nothing is filtered (RecBole 1.2.1's
defaults keep every user and item: ``user/item_inter_num_interval [0,inf)``, ``rm_dup_inter None``,
``val_interval None``); the script checks the loaded interaction count against the file.

Checks recorded in ``result.json``: RecBole's held-out test (and validation) item of every user,
mapped back from RecBole's internal ids to tokens, equals ``sequences.parquet``'s test (validation)
item; the test input sequence ends with the validation item. One RecBole behaviour differs from the
shared split: users with exactly 3 interactions get no validation row (RecBole's leave-one-out keeps
one training row per user, so their validation item is trained on, as a target after the first item);
their test item is still held out. The check records how many users that is and that it is exactly
the 3-interaction users. Per-user test ranks (1 = best; ties
counted against the target) go to ``test_ranks.npy`` with ``test_users.npy`` (user tokens), and the
HR@10 / NDCG@10 recomputed from them are recorded beside RecBole's own.

torch >= 2.6 loads with ``weights_only=True`` by default, which RecBole's checkpoint (it pickles the
config) does not pass: the best checkpoint is reloaded here with ``weights_only=False`` (a file this
run wrote) and the test is evaluated with ``load_best_model=False``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch

import recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed

torch.set_num_threads(1)


class TimeBudgetReached(Exception):
    pass


def config_dict(args, seed: int, checkpoint_dir: Path) -> dict:
    return {
        "data_path": str(args.data),
        "checkpoint_dir": str(checkpoint_dir),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None, "val_interval": None, "filter_inter_by_user_or_item": True,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "valid_metric_bigger": True,
        "stopping_step": args.stopping_step, "epochs": args.epochs, "eval_step": 1,
        "train_batch_size": args.train_batch_size, "eval_batch_size": 4096,
        "loss_type": "CE", "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": 50,
        "learning_rate": 0.001,
        # SASRec's RecBole defaults, written out so result.json records them
        "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "use_gpu": False, "gpu_id": "", "worker": 0, "seed": seed, "reproducibility": True,
        "show_progress": False, "log_wandb": False, "state": "INFO", "save_dataset": False,
        "save_dataloaders": False,
    }


def check_split(dataset, valid_data, test_data, sequences: pd.DataFrame, inter_rows: int) -> dict:
    """Held-out items per user, RecBole vs sequences.parquet, by token."""
    uid, iid = dataset.uid_field, dataset.iid_field
    list_field = iid + dataset.config["LIST_SUFFIX"]
    expected = {
        split: dict(zip(part["user_id"].astype(str), part["item_id"].astype(str)))
        for split, part in sequences[sequences["split"] != "train"].groupby("split")
    }
    # a sequential dataset holds one row per (user, target) prefix: every interaction but each user's first
    checks = {"inter_rows_in_file": inter_rows, "prefix_rows_loaded": int(len(dataset.inter_feat)),
              "users_loaded": int(dataset.user_num - 1), "items_loaded": int(dataset.item_num - 1),
              "users_in_sequences": int(sequences["user_id"].nunique()),
              "items_in_sequences": int(sequences["item_id"].nunique())}
    for name, loader, split in (("validation", valid_data, "validation"), ("test", test_data, "test")):
        feat = loader._dataset.inter_feat
        users = dataset.id2token(uid, feat[uid].numpy())
        items = dataset.id2token(iid, feat[iid].numpy())
        got = dict(zip(users.astype(str), items.astype(str)))
        want = expected[split]
        mismatched = [u for u in want if got.get(u) != want[u]]
        checks[f"{name}_users_recbole"] = len(got)
        checks[f"{name}_users_expected"] = len(want)
        checks[f"{name}_rows_recbole"] = int(len(users))
        checks[f"{name}_item_mismatches"] = len(mismatched) + len(set(got) - set(want))
        if name == "test":
            lengths = feat[dataset.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
            lists = feat[list_field].numpy()
            last = dataset.id2token(iid, lists[np.arange(len(lists)), lengths - 1])
            val = expected["validation"]
            checks["test_input_ends_with_validation_item"] = bool(
                all(val[u] == str(i) for u, i in zip(users.astype(str), last.astype(str))))
    # RecBole's leave-one-out keeps at least one training row per user: a user with 3 interactions has
    # 2 prefix rows, so only the test row is held out and the validation target stays in training.
    counts = sequences.groupby("user_id").size()
    three = set(counts[counts == 3].index.astype(str))
    valid_users = set(dataset.id2token(uid, valid_data._dataset.inter_feat[uid].numpy()).astype(str))
    missing_valid = set(expected["validation"]) - valid_users
    checks["validation_users_missing_all_have_3_interactions"] = missing_valid == three
    checks["validation_users_missing"] = len(missing_valid)
    checks["validation_item_mismatches_among_present"] = checks["validation_item_mismatches"] - len(missing_valid)
    checks["held_out_items_match"] = (checks["test_item_mismatches"] == 0
                                      and checks["test_users_recbole"] == checks["test_users_expected"]
                                      and checks["test_rows_recbole"] == checks["test_users_expected"]
                                      and checks["validation_item_mismatches_among_present"] == 0
                                      and checks["validation_users_missing_all_have_3_interactions"])
    checks["nothing_filtered"] = (checks["prefix_rows_loaded"] == inter_rows - checks["users_in_sequences"]
                                  and checks["users_loaded"] == checks["users_in_sequences"]
                                  and checks["items_loaded"] == checks["items_in_sequences"])
    return checks


@torch.no_grad()
def test_ranks(model, dataset, test_data) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each user's test item among all items (RecBole's full-sort scores, padding id excluded)."""
    model.eval()
    users, ranks = [], []
    for interaction, history_index, positive_u, positive_i in test_data:
        scores = model.full_sort_predict(interaction).view(-1, dataset.item_num)
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        target = scores[positive_u, positive_i]
        rank = (scores[positive_u] >= target.unsqueeze(1)).sum(dim=1)  # ties count against the target
        ranks.append(rank.numpy())
        users.append(dataset.id2token(dataset.uid_field, interaction[dataset.uid_field][positive_u].numpy()))
    return np.concatenate(users).astype(str), np.concatenate(ranks).astype(np.int64)


def run_seed(args, seed: int, sequences: pd.DataFrame, inter_rows: int) -> None:
    out = (args.out / f"seed{seed}").resolve()
    if (out / "result.json").exists():
        print(f"skip {out} (done)", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # RecBole writes ./log and ./log_tensorboard relative to the working directory
    config = Config(model="SASRec", dataset=args.dataset, config_dict=config_dict(args, seed, out / "checkpoint"))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    torch.set_num_threads(1)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    checks = check_split(dataset, valid_data, test_data, sequences, inter_rows)
    logger.info("split checks: %s", checks)
    if not (checks["held_out_items_match"] and checks["nothing_filtered"]):
        raise RuntimeError(f"RecBole's split differs from sequences.parquet: {checks}")
    if args.check_only:
        print(json.dumps({"train_examples": len(train_data._dataset), **checks}, indent=1), flush=True)
        return
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    epoch_seconds, valid_history = [], []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*a, **k):
        t0 = time.time()
        loss = train_epoch(*a, **k)
        epoch_seconds.append(time.time() - t0)
        return loss

    trainer._train_epoch = timed_train_epoch
    deadline = time.time() + args.max_train_minutes * 60 if args.max_train_minutes else None

    def callback(epoch_idx, valid_score):
        valid_history.append(float(valid_score))
        print(f"{args.dataset} seed {seed} epoch {epoch_idx}: train {epoch_seconds[-1]:.1f}s, valid NDCG@10 "
              f"{valid_score:.4f}, best {trainer.best_valid_score:.4f}, bad epochs {trainer.cur_step}", flush=True)
        if deadline and time.time() + np.mean(epoch_seconds) > deadline:  # the next epoch would not fit
            raise TimeBudgetReached

    start = time.time()
    stop_reason = None
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=callback)
    except TimeBudgetReached:
        stop_reason = f"time budget of {args.max_train_minutes} min reached before early stopping"
    train_seconds = time.time() - start
    epochs_trained = len(epoch_seconds)
    if stop_reason is None:
        stop_reason = (f"early stopping: no validation NDCG@10 gain for {args.stopping_step} epochs"
                       if trainer.cur_step >= args.stopping_step else f"epoch cap {args.epochs}")
    best_epoch = int(np.argmax(valid_history)) if valid_history else None
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    users, ranks = test_ranks(model, dataset, test_data)
    np.save(out / "test_ranks.npy", ranks)
    np.save(out / "test_users.npy", users)
    result = {
        "dataset": args.dataset,
        "seed": seed,
        "test": {"HR@10": float(test_result["hit@10"]), "NDCG@10": float(test_result["ndcg@10"])},
        "test_from_ranks": {"HR@10": float(np.mean(ranks <= 10)),
                            "NDCG@10": float(np.mean(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0))),
                            "users": int(len(ranks))},
        "best_validation_NDCG@10": float(trainer.best_valid_score),
        "validation_at_best": {k: float(v) for k, v in valid_result.items()},
        "best_epoch": best_epoch,
        "epochs_trained": epochs_trained,
        "seconds_per_epoch_train": round(float(np.mean(epoch_seconds)), 2) if epoch_seconds else None,
        "train_seconds_total_with_validation": round(train_seconds, 1),
        "stop_reason": stop_reason,
        "validation_ndcg10_history": valid_history,
        "split_checks": checks,
        "config": {k: config[k] for k in config_dict(args, seed, out) if k not in ("data_path", "checkpoint_dir")},
        "train_examples": int(len(train_data._dataset)),
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "pandas": pd.__version__, "python": sys.version.split()[0]},
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    Path(trainer.saved_model_file).unlink(missing_ok=True)
    print(f"done {out}: test {result['test']}, epochs {epochs_trained}, {result['seconds_per_epoch_train']}s/epoch, "
          f"{stop_reason}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["ml100k", "amazon_grocery"])
    parser.add_argument("--data", type=Path, required=True, help="the recbole dir holding <dataset>/<dataset>.inter")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--stopping-step", type=int, default=10)
    parser.add_argument("--train-batch-size", type=int, default=2048)
    parser.add_argument("--max-train-minutes", type=float, default=0,
                        help="per seed: stop before an epoch that would end past this budget (0: no budget)")
    parser.add_argument("--check-only", action="store_true", help="load, split and check; no training")
    args = parser.parse_args()
    args.data, args.out = args.data.resolve(), args.out.resolve()
    if (args.data / args.dataset / f"{args.dataset}.inter").exists() is False and (args.data / f"{args.dataset}.inter").exists():
        args.data = args.data.parent
    inter_path = args.data / args.dataset / f"{args.dataset}.inter"
    sequences = pd.read_parquet(args.data.parent / "sequences.parquet")
    inter_rows = sum(1 for _ in open(inter_path)) - 1
    for seed in args.seeds:
        run_seed(args, seed, sequences, inter_rows)


if __name__ == "__main__":
    main()
