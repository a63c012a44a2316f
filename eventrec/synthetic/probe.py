"""How much of the click signal do windowed count features lose on a synthetic world?

A diagnostic, not a model: it fits the same small MLP on two hand-made feature sets of every
impression and reports test AUC / NE (last 20% of impressions by time, trained on the first 70%):

* ``counts``: what a DLRM over aggregates can know, made easy for it: per stream and window (1 day,
  7 days, 30 days, all history) the number of events of the candidate's category, of its funnel
  predecessor category (organic streams), of its advertiser and ad (ad streams), the total count,
  time since the stream's last event; plus candidate category, log price, placement, hour.
* ``counts+seq``: the same plus the world's order and co-occurrence terms computed exactly
  (position-weighted last-3 match, funnel successor of the last event, recency of the last match,
  co-occurrence, last event a view of the category, advertiser/ad among the last clicks).

and the ``oracle`` (the true p_click; its AUC is the ceiling, which latent user/ad factors keep
out of reach of both). Run: ``python -m eventrec.synthetic.probe WORLD_DIR``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

WINDOWS = (86_400, 7 * 86_400, 30 * 86_400, 10**9)
SEQUENCE_FEATURES = ("last3", "next", "recency", "co_occurrence", "last_viewed", "advertiser_clicked",
                     "same_ad_clicked")


def probe_features(directory: str | Path):
    """(counts features, sequence features, clicks, p_click), impressions sorted by time."""
    import polars as pl

    from eventrec.synthetic.generate import load_world
    from eventrec.synthetic.model import event_index_from_frame, features

    directory = Path(directory)
    world = load_world(directory)
    cfg = world.config
    C = cfg.num_categories
    index = event_index_from_frame(world, pl.read_parquet(directory / "events.parquet"))
    imp = pl.read_parquet(directory / "impressions.parquet").sort("timestamp", maintain_order=True)
    user = imp["user_id"].to_numpy()
    t = imp["timestamp"].to_numpy() - cfg.start_timestamp
    ads = imp["ad_id"].to_numpy() - 1
    cat, adv = world.ad_category[ads], world.ad_advertiser[ads]
    shift = np.int64(2**32)

    def windowed(mask, attr, query):
        key = np.sort((index.user_id[mask] * 1_000_000 + attr[mask]) * shift + index.t[mask])
        base = (user * 1_000_000 + query) * shift
        hi = np.searchsorted(key, base + t)
        return [np.log1p(hi - np.searchsorted(key, base + np.maximum(t - w, 0))) for w in WINDOWS]

    def since_last(mask):
        tt = index.t[mask]
        key = index.user_id[mask] * shift + tt
        hi, lo = np.searchsorted(key, user * shift + t), np.searchsorted(key, user * shift)
        last = np.where(hi > lo, tt[np.maximum(hi - 1, 0)], -(10**9))
        return [np.log1p(np.minimum(t - last, 10**8) / 60.0)]

    cols = []
    zeros = np.zeros(len(index.t), np.int64)
    predecessor = np.argsort(world.next_category)
    for typ in range(4):
        m = index.type == typ
        cols += windowed(m, index.category, cat) + windowed(m, zeros, np.zeros_like(cat)) + since_last(m)
        if typ in (0, 1):
            cols += windowed(m, index.advertiser, adv)
        if typ == 0:
            cols += windowed(m, index.ad, ads)
        if typ in (2, 3):
            cols += windowed(m, index.category, predecessor[cat])
    placement = imp["placement"].replace_strict({"feed": 0, "story": 1, "sidebar": 2, "search": 3}).to_numpy()
    cols += [np.log(imp["price"].to_numpy()), *np.eye(C)[cat].T, *np.eye(4)[placement].T,
             *np.eye(24)[imp["hour_of_day"].to_numpy()].T]
    counts = np.column_stack(cols).astype(np.float32)
    hist = index.history(user, t)
    f = features(world, user - 1, t, ads, hist, index.organic_count(user, cat, t))
    seq = np.column_stack([f[k] for k in SEQUENCE_FEATURES]).astype(np.float32)
    return counts, seq, imp["click"].to_numpy().astype(np.float32), imp["p_click"].to_numpy()


def auc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def normalized_entropy(p: np.ndarray, label: np.ndarray, base_rate: float) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    ll = -np.mean(label * np.log(p) + (1 - label) * np.log(1 - p))
    h = -(base_rate * np.log(base_rate) + (1 - base_rate) * np.log(1 - base_rate))
    return float(ll / h)


def fit_mlp(x: np.ndarray, y: np.ndarray, train: slice, test: slice, epochs: int = 8, seed: int = 0) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xt, yt = torch.tensor((x - mu) / sd), torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    idx = torch.arange(train.start or 0, train.stop)
    for _ in range(epochs):
        perm = idx[torch.randperm(len(idx))]
        for i in range(0, len(perm), 1024):
            b = perm[i:i + 1024]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[b]).squeeze(1), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.sigmoid(net(xt[test]).squeeze(1)).numpy()


def run_probe(directory: str | Path, epochs: int = 8) -> dict:
    counts, seq, y, p = probe_features(directory)
    n = len(y)
    train, test = slice(0, int(0.7 * n)), slice(int(0.8 * n), n)
    base = float(y[train].mean())
    out = {"impressions": n, "test_impressions": test.stop - test.start, "ctr": float(y.mean()),
           "oracle": {"auc": auc(p[test], y[test]), "ne": normalized_entropy(p[test], y[test], base)}}
    for name, x in (("counts", counts), ("counts+seq", np.column_stack([counts, seq]))):
        started = time.perf_counter()
        q = fit_mlp(x, y, train, test, epochs)
        out[name] = {"auc": auc(q, y[test]), "ne": normalized_entropy(q, y[test], base),
                     "seconds": round(time.perf_counter() - started, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", type=Path)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    r = run_probe(args.world, args.epochs)
    print(f"impressions {r['impressions']:,} (test {r['test_impressions']:,}), CTR {r['ctr']:.4f}")
    for name in ("oracle", "counts", "counts+seq"):
        print(f"{name:<11} AUC {r[name]['auc']:.4f}  NE {r[name]['ne']:.4f}")


if __name__ == "__main__":
    main()
