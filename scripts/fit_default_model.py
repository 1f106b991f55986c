"""Fit FlashMM's default direction model on recorded Binance captures, with numpy only.

    python scripts/fit_default_model.py FEED [FEED ...] -o src/flashmm/models/default.json

A FEED is one capture, or several joined with commas that replay as one continuous
stream (``day1.gz,day2.gz``). Features come from the very pipeline that trades
(:class:`flashmm.engine.pipeline.MarketPipeline`), sampled at every applied book update.
The label is the mid ``horizon`` later: bearish / neutral / bullish by the sign of the
move beyond ``--band-bps``.

Each feed is split by time: the first ``--train-fraction`` is fitted, the rest is
held out (minus one horizon at the boundary, so no label looks across it). The
held-out accuracy is printed and stored in the model's metadata, beside the accuracy
of always answering the most frequent class.

Deterministic: the same inputs give the same file, byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from flashmm._core.book import OK
from flashmm._core.features import FEATURE_NAMES
from flashmm._core.model import N_CLASSES, Model
from flashmm.backtest.replay import BookEvent, TradeEvent, binance_events
from flashmm.data.binance import infer_increments
from flashmm.engine.pipeline import MarketPipeline


def sample_feed(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recv_ns, mid, features) at every applied book update of one continuous feed."""
    tick, lot = infer_increments(paths[0])
    pipe = MarketPipeline(tick, lot, model=Model.zeros())
    ts: list[int] = []
    mids: list[float] = []
    feats: list[np.ndarray] = []
    for ev in binance_events(paths):
        if isinstance(ev, BookEvent):
            status = pipe.apply_book_update(
                ev.recv_ns, ev.is_snapshot, ev.bids, ev.asks, ev.sequence, ev.first_sequence
            )
            if status == OK and pipe.mid == pipe.mid:
                ts.append(ev.recv_ns)
                mids.append(pipe.mid)
                feats.append(pipe.features.copy())
        elif isinstance(ev, TradeEvent):
            pipe.on_trade(ev.recv_ns, ev.size, ev.side)
    order = np.argsort(np.asarray(ts), kind="stable")  # held-back events arrive out of order
    return np.asarray(ts)[order], np.asarray(mids)[order], np.asarray(feats)[order]


def future_moves(ts: np.ndarray, mid: np.ndarray, horizon_ns: int) -> np.ndarray:
    """Move in bps to the last mid at or before ``ts + horizon``; NaN past the feed's end."""
    idx = np.searchsorted(ts, ts + horizon_ns, side="right") - 1
    moves = (mid[idx] / mid - 1.0) * 1e4
    moves[ts + horizon_ns > ts[-1]] = np.nan
    return moves


def labels(moves: np.ndarray, band_bps: float) -> np.ndarray:
    """Class index 0 bearish, 1 neutral, 2 bullish."""
    return np.where(moves > band_bps, 2, np.where(moves < -band_bps, 0, 1))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch gradient descent with momentum."""
    n, f = x.shape
    onehot = np.eye(N_CLASSES)[y]
    w = np.zeros((N_CLASSES, f))
    b = np.log(onehot.mean(axis=0) + 1e-12)  # start from the class prior
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr, momentum = 0.5, 0.9
    for _ in range(iterations):
        p = softmax(x @ w.T + b)
        gw = (p - onehot).T @ x / n + l2 * w
        gb = (p - onehot).mean(axis=0)
        vw = momentum * vw - lr * gw
        vb = momentum * vb - lr * gb
        w += vw
        b += vb
    return w, b


def fit_move_head(x: np.ndarray, moves: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Ridge regression of the move in bps on the standardized features."""
    xm = np.column_stack([x, np.ones(len(x))])
    reg = l2 * len(x) * np.eye(xm.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(xm.T @ xm + reg, xm.T @ moves)
    return coef[:-1], float(coef[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("feeds", nargs="+", help="capture[,continuation...] per feed")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--horizon-ms", type=int, default=200)
    parser.add_argument("--band-bps", type=float, default=0.0)
    parser.add_argument("--train-fraction", type=float, default=0.6)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--model-version", default="default-1")
    args = parser.parse_args()
    horizon_ns = args.horizon_ms * 1_000_000

    train_x, train_y, train_m, test_x, test_y = [], [], [], [], []
    for feed in args.feeds:
        paths = [Path(p) for p in feed.split(",")]
        ts, mid, feats = sample_feed(paths)
        moves = future_moves(ts, mid, horizon_ns)
        split = ts[0] + args.train_fraction * (ts[-1] - ts[0])
        ok = np.isfinite(moves)
        train = ok & (ts + horizon_ns <= split)  # labels entirely before the split
        test = ok & (ts >= split)
        print(f"{feed}: {len(ts)} samples, {train.sum()} train, {test.sum()} held out")
        train_x.append(feats[train])
        train_y.append(labels(moves[train], args.band_bps))
        train_m.append(moves[train])
        test_x.append(feats[test])
        test_y.append(labels(moves[test], args.band_bps))

    xtr, ytr, mtr = np.vstack(train_x), np.concatenate(train_y), np.concatenate(train_m)
    xte, yte = np.vstack(test_x), np.concatenate(test_y)
    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    std[std < 1e-12] = 0.0  # constant feature: the kernel treats std 0 as 1
    scale = np.where(std > 0, std, 1.0)
    ztr = (xtr - mean) / scale

    weights, intercepts = fit_logistic(ztr, ytr, args.l2, args.iterations)
    move_w, move_b = fit_move_head(ztr, mtr, args.l2)

    model = Model(
        mean=mean,
        std=std,
        weights=weights,
        intercepts=intercepts,
        move_weights=move_w,
        move_intercept=move_b,
        horizon_ms=args.horizon_ms,
        neutral_band_bps=args.band_bps,
        model_version=args.model_version,
    )
    # Evaluate through the shipped inference kernel, not the numpy fit.
    pred_te = model.predict_batch(xte)
    pred_tr = model.predict_batch(xtr)
    acc_te = float((pred_te[:, 3].astype(int) + 1 == yte).mean())
    acc_tr = float((pred_tr[:, 3].astype(int) + 1 == ytr).mean())
    prior = np.bincount(ytr, minlength=N_CLASSES) / len(ytr)
    baseline_te = float((yte == int(np.argmax(prior))).mean())
    ll_model = float(-np.mean(np.log(pred_te[np.arange(len(yte)), yte] + 1e-12)))
    ll_prior = float(-np.mean(np.log(prior[yte] + 1e-12)))
    directional = yte != 1
    dir_pred = pred_te[:, 3] != 0
    hits = (pred_te[:, 3].astype(int) + 1 == yte) & dir_pred
    dir_precision = float(hits.sum() / max(dir_pred.sum(), 1))

    model.metadata = {
        "training_data": "; ".join(
            f"{Path(p).parent.name}/{Path(p).name}" for f in args.feeds for p in f.split(",")
        ),
        "training_data_origin": "hftbacktest sample data (MIT), public Binance market data",
        "features": ",".join(FEATURE_NAMES),
        "train_samples": len(ytr),
        "test_samples": len(yte),
        "train_fraction": args.train_fraction,
        "train_accuracy": round(acc_tr, 4),
        "test_accuracy": round(acc_te, 4),
        "test_majority_baseline": round(baseline_te, 4),
        "test_log_loss": round(ll_model, 4),
        "test_log_loss_prior": round(ll_prior, 4),
        "test_directional_share": round(float(directional.mean()), 4),
        "test_directional_precision": round(dir_precision, 4),
    }
    model.save(args.output)
    print(json.dumps(model.metadata, indent=2))


if __name__ == "__main__":
    main()
