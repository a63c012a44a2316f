"""FuxiCTR peers on the trivago clickout split (issue 6): DNN, DIN, TransAct; runs in ``.venv-peers``.

    .venv-peers/bin/python bench/quality/peers/fuxictr_trivago.py \
        --data bench/out/quality/trivago/peers --out bench/out/quality/trivago/fuxictr \
        --models dnn din transact --seeds 0 1 2 --epochs 10

What FuxiCTR 2.3.10 ships on PyPI (wheel and sdist alike): the library (``fuxictr``: feature
processing, layers, ``BaseModel`` with its fit / early stopping / checkpointing, data loaders) and
``model_zoo.LongCTR`` (DIN, DIEN, DCNv2, FinalMLP, SIM, ETA, SDIM, TWIN, MIRRN, TransAct). The
classic ``model_zoo/DNN`` and ``model_zoo/BST`` live only in FuxiCTR's source repository, not in any
pip distribution, so:

- ``din``: ``model_zoo.LongCTR.DIN`` from the wheel, unchanged.
- ``transact``: ``model_zoo.LongCTR.TransAct`` from the wheel, unchanged: the transformer-over-the-
  behaviour-sequence peer that the wheel ships (BST itself is not shipped).
- ``dnn``: FuxiCTR's ``FeatureEmbedding`` (sequence features mean-pooled by FuxiCTR's default
  ``MaskedAveragePooling`` encoder) followed by FuxiCTR's ``MLP_Block``: the DNN of the model zoo is
  exactly this composition; the class below only wires the two library layers.

Data: FuxiCTR's ``FeatureProcessor`` (``preprocess`` / ``fit`` / ``transform``) encodes the
features, fitted on train only; ``transform`` is called in-process instead of through
``build_dataset`` (which would start a Ray cluster just to map one batch over 250k rows). The encoded
splits go to ``.npz`` files read by FuxiCTR's ``NpzDataLoader``. The LongCTR models take
``(batch_dict, item_dict, mask)``; ``LongCTRBatches`` re-shapes the loader's batches into that form
(target item appended after the history, mask = non-padding history positions), the same layout
``model_zoo/LongCTR/longctr_dataloader.py`` produces from its user/item side tables.

Features: item_id (categorical, source item), position, price_rank, platform, device, city
(categorical), price (numeric, StandardScaler), hist_item_id (sequence sharing item_id's vocabulary
and embedding; mean-pooled in the DNN, the attention / transformer sequence in DIN / TransAct),
hist_action (sequence, mean-pooled in all three). Training: Adam, BCE, FuxiCTR's standard monitor
(validation AUC, maximised), early_stop_patience 2, reduce-lr-on-plateau, best checkpoint reloaded;
the test split is only predicted, after training.

Per (model, seed): ``OUT/<model>_seed<seed>/test_predictions.npy`` (float64, test.parquet row order)
and ``run.json``. Finished runs (run.json present) are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import polars as pl
import torch

import fuxictr
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor
from fuxictr.pytorch.dataloaders.npz_dataloader import NpzDataLoader
from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything
from model_zoo.LongCTR.DIN import DIN
from model_zoo.LongCTR.TransAct import TransAct

torch.set_num_threads(1)

DATASET_ID = "trivago_peers"
SPLITS = {"train": "train", "valid": "validation", "test": "test"}
HIST_LEN = 64
LABEL = "click"
CATEGORICAL = ["position", "price_rank", "platform", "device", "city"]

FEATURE_COLS = [
    {"name": "item_id", "active": True, "dtype": "str", "type": "categorical", "source": "item"},
    {"name": CATEGORICAL, "active": True, "dtype": "str", "type": "categorical", "source": "context"},
    {"name": "price", "active": True, "dtype": "float", "type": "numeric", "source": "context",
     "normalizer": "StandardScaler"},
    {"name": "hist_item_id", "active": True, "dtype": "str", "type": "sequence", "source": "user",
     "share_embedding": "item_id", "max_len": HIST_LEN, "padding": "pre", "splitter": "^"},
    {"name": "hist_action", "active": True, "dtype": "str", "type": "sequence", "source": "user",
     "max_len": HIST_LEN, "padding": "pre", "splitter": "^"},
]
LABEL_COL = {"name": LABEL, "dtype": "float"}

COMMON = {
    "task": "binary_classification", "loss": "binary_crossentropy", "optimizer": "adam",
    "metrics": ["logloss", "AUC"], "monitor": "AUC", "monitor_mode": "max",
    "early_stop_patience": 2, "reduce_lr_on_plateau": True, "save_best_only": True,
    "learning_rate": 1e-3, "embedding_dim": 32, "batch_size": 1024,
    "embedding_regularizer": 0, "net_regularizer": 0, "max_gradient_norm": 10.0, "gpu": -1,
    "verbose": 0,
}
HYPER = {
    "dnn": {"dnn_hidden_units": [512, 256, 128], "dnn_activations": "ReLU", "net_dropout": 0.1,
            "batch_norm": False},
    "din": {"dnn_hidden_units": [512, 128, 64], "dnn_activations": "ReLU",
            "attention_hidden_units": [64], "attention_hidden_activations": "Dice",
            "attention_output_activation": None, "attention_dropout": 0, "din_use_softmax": False,
            "net_dropout": 0.1, "batch_norm": False},
    "transact": {"dcn_cross_layers": 3, "dcn_hidden_units": [256, 128, 64], "mlp_hidden_units": [],
                 "hidden_activations": "ReLU", "num_heads": 2, "transformer_layers": 1,
                 "transformer_dropout": 0.1, "dim_feedforward": 128, "first_k_cols": 1,
                 "concat_max_pool": True, "use_time_window_mask": False, "net_dropout": 0.1,
                 "batch_norm": False},
}


class DNN(BaseModel):
    """FuxiCTR ``FeatureEmbedding`` (sequences mean-pooled) -> FuxiCTR ``MLP_Block``."""

    def __init__(self, feature_map, model_id="DNN", gpu=-1, learning_rate=1e-3, embedding_dim=10,
                 dnn_hidden_units=[512, 256, 128], dnn_activations="ReLU", net_dropout=0,
                 batch_norm=False, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                             hidden_units=dnn_hidden_units, hidden_activations=dnn_activations,
                             output_activation=self.output_activation, dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        return {"y_pred": self.mlp(self.embedding_layer(X, flatten_emb=True))}


class LongCTRBatches:
    """A FuxiCTR loader's batches as the LongCTR models' ``(batch_dict, item_dict, mask)``."""

    def __init__(self, loader):
        self.loader = loader
        self.num_samples, self.num_blocks, self.num_batches = loader.num_samples, loader.num_blocks, loader.num_batches

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            history = batch.pop("hist_item_id").long()
            target = batch.pop("item_id").long()
            item_dict = {"item_id": torch.cat([history, target.view(-1, 1)], dim=1).flatten()}
            yield batch, item_dict, (history > 0).float()


def prepare(data_dir: Path, work: Path) -> tuple[FeatureMap, dict[str, str], dict]:
    """Fit FuxiCTR's FeatureProcessor on train, encode the three splits to npz (cached)."""
    processed = work / DATASET_ID
    paths = {s: str(processed / f"{s}.npz") for s in SPLITS}
    frames = {s: pl.scan_parquet(data_dir / f"{name}.parquet") for s, name in SPLITS.items()}
    raw = {
        s: f.select(
            pl.col("item_id").cast(pl.String),
            *[pl.col(c).cast(pl.String) for c in CATEGORICAL],
            pl.col("price").cast(pl.Float64),
            # FuxiCTR's raw sequence format: tokens joined by the splitter
            pl.col("hist_item_id").cast(pl.List(pl.String)).list.join("^"),
            pl.col("hist_action").list.join("^"),
            pl.col(LABEL).cast(pl.Float64),
        )
        for s, f in frames.items()
    }
    processor = FeatureProcessor(feature_cols=FEATURE_COLS, label_col=LABEL_COL, dataset_id=DATASET_ID,
                                 data_root=str(work))
    json_file = processed / "feature_map.json"
    if not (json_file.exists() and all(Path(p).exists() for p in paths.values())):
        shutil.rmtree(processed, ignore_errors=True)
        pre = {s: processor.preprocess(f) for s, f in raw.items()}
        processor.fit(pre["train"], rebuild_dataset=True)
        for split, frame in pre.items():
            df = frame.collect()
            batch = {c: df[c].to_numpy() for c in df.columns}
            encoded = processor.transform(batch)
            arrays = {k: np.asarray(v) for k, v in encoded.items()}
            np.savez(paths[split], **arrays)
    feature_map = FeatureMap(DATASET_ID, str(processed))
    feature_map.load(str(json_file), {"embedding_dim": COMMON["embedding_dim"]})
    stats = {s: int(np.load(p)[LABEL].shape[0]) for s, p in paths.items()}
    return feature_map, paths, stats


def run_one(model_name: str, seed: int, args, feature_map: FeatureMap, paths: dict[str, str], work: Path):
    out = args.out / f"{model_name}_seed{seed}"
    if (out / "run.json").exists():
        logging.info("skip %s (done)", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    torch.set_num_threads(1)
    params = {**COMMON, **HYPER[model_name], "model_root": str(work / "checkpoints"),
              "model_id": f"{model_name}_seed{seed}"}
    if model_name == "dnn":
        model_map, wrap = feature_map, (lambda loader: loader)
        model = DNN(model_map, **params)
    else:
        model_map = FeatureMap(DATASET_ID, feature_map.data_dir)
        model_map.load(os.path.join(feature_map.data_dir, "feature_map.json"),
                       {"embedding_dim": COMMON["embedding_dim"],
                        "use_features": [f for f in feature_map.features if f != "hist_item_id"]})
        wrap = LongCTRBatches
        model = {"din": DIN, "transact": TransAct}[model_name](model_map, **params)
    model.count_parameters()
    os.makedirs(model.model_dir, exist_ok=True)
    bs = COMMON["batch_size"]
    train = wrap(NpzDataLoader(feature_map, paths["train"], batch_size=bs, shuffle=True, num_workers=0))
    valid = wrap(NpzDataLoader(feature_map, paths["valid"], batch_size=bs, shuffle=False, num_workers=0))
    test = wrap(NpzDataLoader(feature_map, paths["test"], batch_size=bs, shuffle=False, num_workers=0))

    epochs_run, history, last_logs = [0], [], {}
    original_eval_step, original_evaluate = model.eval_step, model.evaluate

    def evaluate(data_generator, metrics=None):
        logs = original_evaluate(data_generator, metrics=metrics)
        last_logs.clear()
        last_logs.update({k: float(v) for k, v in logs.items()})
        return logs

    def eval_step():  # FuxiCTR's own eval_step (validation + checkpoint + early stop), recorded
        original_eval_step()
        epochs_run[0] += 1
        history.append({"epoch": epochs_run[0], "valid": dict(last_logs), "best_auc": float(model._best_metric),
                        "stopping_steps": int(model._stopping_steps),
                        "lr": float(model.optimizer.param_groups[0]["lr"])})
        logging.info("%s seed %d epoch %d: %s", model_name, seed, epochs_run[0], history[-1])

    model.evaluate, model.eval_step = evaluate, eval_step
    start = time.time()
    model.fit(train, epochs=args.epochs, validation_data=valid, max_gradient_norm=COMMON["max_gradient_norm"])
    train_seconds = time.time() - start
    valid_logs = model.evaluate(valid)
    t0 = time.time()
    predictions = model.predict(test).astype(np.float64)
    predict_seconds = time.time() - t0
    expected = len(np.load(paths["test"])[LABEL])
    if predictions.shape != (expected,):
        raise RuntimeError(f"{predictions.shape} predictions for {expected} test rows")
    np.save(out / "test_predictions.npy", predictions)
    record = {
        "model": model_name,
        "fuxictr_class": type(model).__module__ + "." + type(model).__name__,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "epochs_trained": epochs_run[0],
        "max_epochs": args.epochs,
        "stopped_early": epochs_run[0] < args.epochs,
        "best_validation": {k: float(v) for k, v in valid_logs.items()},
        "validation_history": history,
        "hyper_parameters": params | {"max_epochs": args.epochs},
        "features": FEATURE_COLS,
        "versions": {"fuxictr": fuxictr.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "polars": pl.__version__, "python": sys.version.split()[0]},
        "torch_threads": torch.get_num_threads(),
        "test_rows": expected,
    }
    (out / "run.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    ckpt = Path(model.checkpoint)
    if ckpt.exists():
        ckpt.unlink()
    logging.info("done %s: %s", out, record["best_validation"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["dnn", "din", "transact"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    if "bst" in args.models:
        parser.error("BST is not in any pip distribution of FuxiCTR 2.3.10 (only in its source repository's "
                     "model_zoo); the wheel's transformer sequence model is TransAct: use --models ... transact")
    unknown = sorted(set(args.models) - set(HYPER))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(HYPER)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "_work"
    feature_map, paths, stats = prepare(args.data, work)
    logging.info("encoded splits: %s; features: %s", stats, list(feature_map.features))
    for model_name in args.models:
        for seed in args.seeds:
            run_one(model_name, seed, args, feature_map, paths, work)


if __name__ == "__main__":
    main()
