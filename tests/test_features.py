"""Feature kernel: hand-checked maths, ring buffers and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flashmm._core import book as book_module
from flashmm._core import features as F
from flashmm._core.features import (
    FEATURE_NAMES,
    N_FEATURES,
    RM_MID_COUNT,
    RM_MID_HEAD,
    RM_TRADE_COUNT,
    RM_TRADE_HEAD,
    VS_LAST_MID,
    VS_LAST_TS,
    VS_VARIANCE,
    FeatureState,
    compute_features,
    push_mid,
    push_trade,
)

S = 1_000_000_000  # ns per second
MS = 1_000_000


def make_top(bids: list[tuple[int, int]], asks: list[tuple[int, int]], depth: int = 10):
    top = np.zeros((4, depth), dtype=np.int64)
    for k, (px, sz) in enumerate(bids[:depth]):
        top[0, k] = px
        top[1, k] = sz
    for k, (px, sz) in enumerate(asks[:depth]):
        top[2, k] = px
        top[3, k] = sz
    return top


BOOK = make_top([(100, 5), (99, 3)], [(102, 2), (103, 4)])  # mid 101


def test_feature_names_and_indices() -> None:
    assert FEATURE_NAMES[:12] == (
        "imbalance_l1",
        "imbalance_l5",
        "microprice_offset_bps",
        "spread_bps",
        "ret_100ms_bps",
        "ret_1s_bps",
        "ret_5s_bps",
        "ewma_vol_bps",
        "flow_imbalance_1s",
        "flow_imbalance_5s",
        "trade_rate_1s",
        "trade_rate_5s",
    )
    assert len(FEATURE_NAMES) == N_FEATURES
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    for i, name in enumerate(FEATURE_NAMES):
        assert getattr(F, "F_" + name.upper()) == i


def test_book_features_hand_checked() -> None:
    top = make_top(
        [(100, 5), (99, 3), (98, 2), (97, 1), (96, 1), (95, 100)],
        [(102, 2), (103, 4), (104, 1)],
    )
    fs = FeatureState()
    x = fs.compute(10 * S, top)
    assert fs.mid == 101.0
    assert x[F.F_IMBALANCE_L1] == pytest.approx((5 - 2) / (5 + 2))
    # Top five levels only: the 100 lots at level six do not count.
    assert x[F.F_IMBALANCE_L5] == pytest.approx((12 - 7) / (12 + 7))
    micro = (100 * 2 + 102 * 5) / (5 + 2)
    assert x[F.F_MICROPRICE_OFFSET_BPS] == pytest.approx((micro - 101) / 101 * 1e4)
    assert x[F.F_SPREAD_BPS] == pytest.approx(2 / 101 * 1e4)


def test_real_order_book_top_with_shallow_depth() -> None:
    # depth 3 < 5: the deep imbalance uses the levels there are.
    book = book_module.OrderBook(0.01, 1.0, depth=3)
    book.apply_snapshot(
        np.array([[1.00, 4.0], [0.99, 4.0], [0.98, 4.0], [0.97, 50.0]]),
        np.array([[1.01, 1.0], [1.02, 1.0], [1.03, 1.0]]),
        1,
    )
    x = FeatureState().compute(0, book.top)
    assert x[F.F_IMBALANCE_L1] == pytest.approx((4 - 1) / 5)
    assert x[F.F_IMBALANCE_L5] == pytest.approx((12 - 3) / 15)
    assert x[F.F_SPREAD_BPS] == pytest.approx(1 / 100.5 * 1e4)


@pytest.mark.parametrize(
    "top",
    [
        make_top([(100, 5)], []),
        make_top([], [(102, 2)]),
        make_top([], []),
    ],
    ids=["no-asks", "no-bids", "empty"],
)
def test_empty_side_gives_nan_mid_and_zero_book_features(top: np.ndarray) -> None:
    fs = FeatureState(vol_halflife_s=1.0)
    fs.update_mid(0, 100.0)
    fs.update_mid(1 * S, 101.0)
    fs.update_trade(2 * S, 3.0)
    x = fs.compute(2 * S, top)
    assert math.isnan(fs.mid)
    for i in (
        F.F_IMBALANCE_L1,
        F.F_IMBALANCE_L5,
        F.F_MICROPRICE_OFFSET_BPS,
        F.F_SPREAD_BPS,
        F.F_RET_100MS_BPS,
        F.F_RET_1S_BPS,
        F.F_RET_5S_BPS,
    ):
        assert x[i] == 0.0
    # History-based features do not need the current book.
    assert x[F.F_EWMA_VOL_BPS] > 0.0
    assert x[F.F_FLOW_IMBALANCE_1S] == 1.0
    assert x[F.F_TRADE_RATE_5S] == pytest.approx(0.2)
    assert np.all(np.isfinite(x))


def test_returns_hand_checked_with_exact_boundaries() -> None:
    fs = FeatureState()
    history = [(4 * S, 100.0), (5 * S, 102.0), (8950 * MS, 104.0), (9 * S, 105.0)]
    history += [(9900 * MS, 110.0), (9950 * MS, 111.0)]
    for ts, mid in history:
        fs.update_mid(ts, mid)
    x = fs.compute(10 * S, BOOK)  # book mid 101
    # mid_at(t) is the latest mid with ts <= t: an entry exactly at t counts.
    assert x[F.F_RET_5S_BPS] == pytest.approx((101 / 102 - 1) * 1e4)
    assert x[F.F_RET_1S_BPS] == pytest.approx((101 / 105 - 1) * 1e4)
    assert x[F.F_RET_100MS_BPS] == pytest.approx((101 / 110 - 1) * 1e4)
    # One ns earlier the 5 s target falls before the 102 entry.
    x = fs.compute(10 * S - 1, BOOK)
    assert x[F.F_RET_5S_BPS] == pytest.approx((101 / 100 - 1) * 1e4)


def test_returns_zero_when_history_is_short() -> None:
    fs = FeatureState()
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_RET_100MS_BPS] == x[F.F_RET_1S_BPS] == x[F.F_RET_5S_BPS] == 0.0
    fs.update_mid(9500 * MS, 100.0)
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_RET_100MS_BPS] == pytest.approx(100.0)  # 101/100 - 1
    assert x[F.F_RET_1S_BPS] == 0.0
    assert x[F.F_RET_5S_BPS] == 0.0


def test_mid_ring_wraps_and_drops_oldest() -> None:
    fs = FeatureState(mid_capacity=4)
    for i in range(10):
        fs.update_mid(i * S, 100.0 + i)
    assert fs.ring_meta[RM_MID_COUNT] == 4
    assert fs.ring_meta[RM_MID_HEAD] == 10 % 4
    assert sorted(fs.mid_ts.tolist()) == [6 * S, 7 * S, 8 * S, 9 * S]
    assert sorted(fs.mid_px.tolist()) == [106.0, 107.0, 108.0, 109.0]
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_RET_1S_BPS] == pytest.approx((101 / 109 - 1) * 1e4)
    assert x[F.F_RET_100MS_BPS] == pytest.approx((101 / 109 - 1) * 1e4)
    # The mid at 5 s was overwritten: treated like a short history.
    assert x[F.F_RET_5S_BPS] == 0.0


def test_mid_lookup_across_wrap_matches_linear_scan() -> None:
    cap = 8
    fs = FeatureState(mid_capacity=cap)
    pushed = [(t * 137 * MS, 100.0 + t) for t in range(13)]  # uneven spacing, wraps once
    for ts, mid in pushed:
        fs.update_mid(ts, mid)
    kept = pushed[-cap:]
    now_values = [kept[0][0] + d for d in range(-MS, 6 * S, 53 * MS)]
    for now in now_values:
        x = fs.compute(now, BOOK)
        for idx, h in ((F.F_RET_100MS_BPS, 100 * MS), (F.F_RET_1S_BPS, S), (F.F_RET_5S_BPS, 5 * S)):
            past = [m for ts, m in kept if ts <= now - h]
            expected = (101 / past[-1] - 1) * 1e4 if past else 0.0
            assert x[idx] == pytest.approx(expected), (now, h)


def test_ewma_vol_hand_checked() -> None:
    h = 2.0
    tau = h / math.log(2)
    fs = FeatureState(vol_halflife_s=h)
    fs.update_mid(0, 100.0)
    assert fs.vol_state[VS_VARIANCE] == 0.0  # first mid: no return yet
    fs.update_mid(1 * S, 101.0)
    r1 = math.log(101 / 100) * 1e4
    v1 = r1 * r1 / tau
    assert fs.vol_state[VS_VARIANCE] == pytest.approx(v1)
    fs.update_mid(1500 * MS, 100.0)
    r2 = math.log(100 / 101) * 1e4
    v2 = v1 * math.exp(-0.5 / tau) + r2 * r2 / tau
    assert fs.vol_state[VS_VARIANCE] == pytest.approx(v2)
    assert fs.vol_state[VS_LAST_TS] == 1500 * MS
    assert fs.vol_state[VS_LAST_MID] == 100.0
    # Read two seconds (one half-life) later: half the variance, state untouched.
    x = fs.compute(3500 * MS, BOOK)
    assert x[F.F_EWMA_VOL_BPS] == pytest.approx(math.sqrt(v2 / 2))
    assert fs.vol_state[VS_VARIANCE] == pytest.approx(v2)
    # Reading at (or before) the last update: no decay.
    x = fs.compute(1000 * MS, BOOK)
    assert x[F.F_EWMA_VOL_BPS] == pytest.approx(math.sqrt(v2))


def test_ewma_vol_matches_brownian_scale() -> None:
    # Alternating +-1 bp moves every 10 ms: realized variance is 1 bp^2 per 10 ms
    # = 100 bp^2/s, so after many half-lives sigma is close to 10 bps/sqrt(s).
    fs = FeatureState(vol_halflife_s=1.0)
    mid = 10_000.0
    for i in range(2000):
        mid *= math.exp((1 if i % 2 else -1) * 1e-4)
        fs.update_mid(i * 10 * MS, mid)
    x = fs.compute(1999 * 10 * MS, BOOK)
    assert x[F.F_EWMA_VOL_BPS] == pytest.approx(10.0, rel=0.01)


def test_zero_volatility() -> None:
    fs = FeatureState()
    assert fs.compute(5 * S, BOOK)[F.F_EWMA_VOL_BPS] == 0.0  # no mids at all
    for i in range(5):
        fs.update_mid(i * S, 101.0)
    x = fs.compute(5 * S, BOOK)
    assert x[F.F_EWMA_VOL_BPS] == 0.0
    assert x[F.F_RET_1S_BPS] == 0.0


@pytest.mark.parametrize("bad", [math.nan, 0.0, -5.0, math.inf])
def test_push_mid_ignores_unusable_mids(bad: float) -> None:
    fs = FeatureState()
    fs.update_mid(1 * S, 100.0)
    meta = fs.ring_meta.copy()
    vol = fs.vol_state.copy()
    fs.update_mid(2 * S, bad)
    assert np.array_equal(fs.ring_meta, meta)
    assert np.array_equal(fs.vol_state, vol)


def test_same_timestamp_adds_return_without_decay() -> None:
    tau = 10.0 / math.log(2)
    fs = FeatureState(vol_halflife_s=10.0)
    fs.update_mid(5 * S, 100.0)
    fs.update_mid(5 * S, 102.0)
    r = math.log(1.02) * 1e4
    assert fs.vol_state[VS_VARIANCE] == pytest.approx(r * r / tau)
    fs.update_mid(5 * S, 100.0)
    assert fs.vol_state[VS_VARIANCE] == pytest.approx(2 * r * r / tau)


def test_timestamps_going_back_are_clamped() -> None:
    fs = FeatureState()
    fs.update_mid(1 * S, 99.0)
    fs.update_mid(2 * S, 100.0)
    fs.update_mid(1 * S, 101.0)  # stored at 2 s: it replaces the 2 s entry
    fs.update_trade(2 * S, 1.0)
    fs.update_trade(1 * S, -1.0)
    assert fs.ring_meta[RM_MID_COUNT] == 2
    assert fs.mid_ts[:2].tolist() == [1 * S, 2 * S]
    assert fs.mid_px[:2].tolist() == [99.0, 101.0]
    assert fs.trade_ts[:2].tolist() == [2 * S, 2 * S]


def test_mids_within_one_bucket_share_an_entry() -> None:
    fs = FeatureState(mid_capacity=4)
    for k in range(1000):  # 1000 updates in 1 ms: one entry, the latest
        fs.update_mid(5 * S + k * 1000, 100.0 + k % 7)
    assert fs.ring_meta[RM_MID_COUNT] == 1
    assert fs.mid_ts[0] == 5 * S + 999_000
    assert fs.mid_px[0] == 100.0 + 999 % 7
    fs.update_mid(5 * S + MS, 200.0)  # next bucket: a new entry
    assert fs.ring_meta[RM_MID_COUNT] == 2
    assert fs.mid_px[1] == 200.0
    # A burst of 1000 updates per ms for 6 s still leaves a mid 5 s back.
    fs = FeatureState()
    t0 = 10 * S
    for k in range(6000 * 10):
        fs.update_mid(t0 + k * 100_000, 110.0)
    now = t0 + 6000 * 10 * 100_000
    x = fs.compute(now, BOOK)
    assert x[F.F_RET_5S_BPS] == pytest.approx((101 / 110 - 1) * 1e4)
    assert fs.ring_meta[RM_MID_COUNT] == 6000


def test_vol_sees_every_mid_within_a_bucket() -> None:
    tau = 1.0 / math.log(2)
    fs = FeatureState(vol_halflife_s=1.0)
    fs.update_mid(0, 100.0)
    fs.update_mid(10, 101.0)
    fs.update_mid(20, 100.0)
    r1, r2 = math.log(1.01) * 1e4, math.log(100 / 101) * 1e4
    assert fs.vol_state[VS_VARIANCE] == pytest.approx((r1 * r1 + r2 * r2) / tau, rel=1e-6)


def test_trade_flow_and_rate_hand_checked() -> None:
    fs = FeatureState()
    trades = [
        (4900 * MS, 5.0),  # outside 5 s
        (5 * S, 7.0),  # exactly at now - 5 s: windows are ts > now - w, so outside
        (6 * S, -2.0),
        (9 * S, 3.0),  # exactly at now - 1 s: only in the 5 s window
        (9500 * MS, 1.0),
        (9900 * MS, -4.0),
    ]
    for ts, q in trades:
        fs.update_trade(ts, q)
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_FLOW_IMBALANCE_5S] == pytest.approx((-2 + 3 + 1 - 4) / (2 + 3 + 1 + 4))
    assert x[F.F_TRADE_RATE_5S] == pytest.approx(4 / 5)
    assert x[F.F_FLOW_IMBALANCE_1S] == pytest.approx((1 - 4) / (1 + 4))
    assert x[F.F_TRADE_RATE_1S] == pytest.approx(2.0)


def test_windows_without_trades() -> None:
    fs = FeatureState()
    x = fs.compute(10 * S, BOOK)
    for i in (F.F_FLOW_IMBALANCE_1S, F.F_FLOW_IMBALANCE_5S, F.F_TRADE_RATE_1S, F.F_TRADE_RATE_5S):
        assert x[i] == 0.0
    fs.update_trade(1 * S, 10.0)  # long gone by t = 10 s
    fs.update_trade(7 * S, 0.0)  # in the 5 s window, but no quantity
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_FLOW_IMBALANCE_1S] == 0.0
    assert x[F.F_FLOW_IMBALANCE_5S] == 0.0  # |qty| sums to 0: defined as 0, not NaN
    assert x[F.F_TRADE_RATE_5S] == pytest.approx(0.2)


def test_trade_ring_wraps_and_counts_only_what_is_kept() -> None:
    fs = FeatureState(trade_capacity=3)
    for i, q in enumerate([100.0, 100.0, -1.0, 2.0, -3.0]):
        fs.update_trade(9 * S + i * 100 * MS, q)
    assert fs.ring_meta[RM_TRADE_COUNT] == 3
    assert fs.ring_meta[RM_TRADE_HEAD] == 5 % 3
    x = fs.compute(10 * S, BOOK)
    assert x[F.F_FLOW_IMBALANCE_1S] == pytest.approx((-1 + 2 - 3) / 6)
    assert x[F.F_TRADE_RATE_1S] == pytest.approx(3.0)


def test_kernels_on_raw_arrays_and_zero_initial_state() -> None:
    # The engine may own the arrays itself: all-zero arrays are a valid empty state.
    mid_ts = np.zeros(16, dtype=np.int64)
    mid_px = np.zeros(16)
    trade_ts = np.zeros(16, dtype=np.int64)
    trade_qty = np.zeros(16)
    meta = np.zeros(F.N_RING_META, dtype=np.int64)
    vol = np.zeros(F.N_VOL_STATE)
    out = np.full(N_FEATURES, np.nan)
    push_mid(0, 100.0, mid_ts, mid_px, meta, vol, 5.0)
    push_mid(S, 100.0, mid_ts, mid_px, meta, vol, 5.0)
    push_trade(S, -2.0, trade_ts, trade_qty, meta)
    mid = compute_features(S, BOOK, mid_ts, mid_px, trade_ts, trade_qty, meta, vol, 5.0, out)
    assert mid == 101.0
    assert out[F.F_RET_1S_BPS] == pytest.approx(100.0)
    assert out[F.F_EWMA_VOL_BPS] == 0.0
    assert out[F.F_FLOW_IMBALANCE_1S] == -1.0
    assert np.all(np.isfinite(out))


def test_feature_state_api() -> None:
    fs = FeatureState(mid_capacity=8, trade_capacity=8, vol_halflife_s=3.0)
    x = fs.compute(0, BOOK)
    assert x is fs.out
    fs.update_mid(0, 100.0)
    fs.update_mid(S, 101.0)
    fs.update_trade(S, 1.0)
    fs.reset()
    assert fs.ring_meta.tolist() == [0, 0, 0, 0]
    assert fs.vol_state.tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(fs.mid)
    x = fs.compute(2 * S, BOOK)
    assert x[F.F_TRADE_RATE_5S] == 0.0
    assert x[F.F_RET_1S_BPS] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mid_capacity": 1}, "mid_capacity"),
        ({"trade_capacity": 0}, "trade_capacity"),
        ({"vol_halflife_s": 0.0}, "vol_halflife_s"),
        ({"vol_halflife_s": math.nan}, "vol_halflife_s"),
    ],
)
def test_feature_state_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FeatureState(**kwargs)
