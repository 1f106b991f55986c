"""Feature kernel: order-book, return, volatility and trade-flow features for one tick.

Everything the kernels touch is preallocated by :class:`FeatureState`: two ring buffers
(recent mids, recent trades) as flat numpy arrays, a small ``ring_meta`` int64 array with
their heads and counts, and ``vol_state`` with the EWMA variance. The kernels are
``@njit(cache=True)``, take those arrays plus ``OrderBook.top`` and allocate nothing.

Units: prices in ticks (a mid is a float number of ticks), sizes in lots, times in int64 ns.

Ring buffers keep the newest ``capacity`` entries. When one is full the oldest entry is
overwritten and every window uses what is left: a return whose horizon reaches further
back than the oldest kept mid is 0 (as with a short history), and a trade window that
the ring no longer covers in full counts only the trades still there.

The mid ring keeps at most one entry per ``MID_BUCKET_NS`` (1 ms) bucket of time: a mid
in the same bucket as the newest entry replaces it (price and time). So the default 8192
entries always span at least 8 s, however fast the book updates, and a past mid is at
most 1 ms stale, never from the future. Trades are not merged (the counts are features):
the default trade ring holds 4096, i.e. the 5 s window is complete up to ~800 trades/s.
The volatility EWMA sees every mid.

All-zero arrays are a valid empty state, so the engine may allocate them itself.

Timestamps are kept non-decreasing: a push older than the newest entry is stored with the
newest entry's time. A venue or clock that steps back a little must not break the ordering
that the window searches rely on.
"""

from __future__ import annotations

import math

import numba
import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
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
N_FEATURES: int = len(FEATURE_NAMES)

F_IMBALANCE_L1 = 0
F_IMBALANCE_L5 = 1
F_MICROPRICE_OFFSET_BPS = 2
F_SPREAD_BPS = 3
F_RET_100MS_BPS = 4
F_RET_1S_BPS = 5
F_RET_5S_BPS = 6
F_EWMA_VOL_BPS = 7
F_FLOW_IMBALANCE_1S = 8
F_FLOW_IMBALANCE_5S = 9
F_TRADE_RATE_1S = 10
F_TRADE_RATE_5S = 11

# ``ring_meta`` layout: head = slot the next push writes, count = entries held.
RM_MID_HEAD = 0
RM_MID_COUNT = 1
RM_TRADE_HEAD = 2
RM_TRADE_COUNT = 3
N_RING_META = 4

# ``vol_state`` layout. ``last_ts`` is a float64 ns time: its 256 ns resolution at current
# epochs is irrelevant against a decay measured in seconds.
VS_LAST_TS = 0
VS_LAST_MID = 1
VS_VARIANCE = 2
N_VOL_STATE = 3

# Window lengths, fixed because the model is trained on exactly these features.
RET_100MS_NS = 100_000_000
RET_1S_NS = 1_000_000_000
RET_5S_NS = 5_000_000_000
FLOW_1S_NS = 1_000_000_000
FLOW_5S_NS = 5_000_000_000
IMBALANCE_DEEP_LEVELS = 5

# One ring entry per bucket of this length (see the module docstring).
MID_BUCKET_NS = 1_000_000

DEFAULT_MID_CAPACITY = 8192
DEFAULT_TRADE_CAPACITY = 4096
DEFAULT_VOL_HALFLIFE_S = 10.0

_NS_PER_S = 1e9
_LN2 = math.log(2.0)


@numba.njit(cache=True)
def push_mid(
    ts: int,
    mid: float,
    mid_ts: np.ndarray,
    mid_px: np.ndarray,
    ring_meta: np.ndarray,
    vol_state: np.ndarray,
    vol_halflife_s: float,
) -> None:
    """Record a mid (ticks) at ``ts`` and fold its log return into the EWMA variance.

    The mid goes into a new ring entry, or replaces the newest one if both fall in the
    same ``MID_BUCKET_NS`` bucket.

    v <- v * exp(-dt/tau) + r*r/tau with r in bps and tau = halflife/ln 2, so v is a
    kernel-weighted realized variance per second and sqrt(v) is bps per sqrt(second).
    A NaN, infinite or non-positive mid is ignored (an empty book side has no mid).
    """
    if not (mid > 0.0 and math.isfinite(mid)):
        return
    cap = mid_ts.shape[0]
    head = ring_meta[RM_MID_HEAD]
    count = ring_meta[RM_MID_COUNT]
    slot = head
    if count > 0:
        last = (head - 1) % cap
        newest = mid_ts[last]
        if ts < newest:
            ts = newest
        if ts // MID_BUCKET_NS == newest // MID_BUCKET_NS:
            slot = last
    mid_ts[slot] = ts
    mid_px[slot] = mid
    if slot == head:
        ring_meta[RM_MID_HEAD] = (head + 1) % cap
        if count < cap:
            ring_meta[RM_MID_COUNT] = count + 1

    last_mid = vol_state[VS_LAST_MID]
    if last_mid > 0.0:
        r = math.log(mid / last_mid) * 1e4
        tau = vol_halflife_s / _LN2
        dt = (ts - vol_state[VS_LAST_TS]) / _NS_PER_S
        v = vol_state[VS_VARIANCE]
        if dt > 0.0:
            v *= math.exp(-dt / tau)
        vol_state[VS_VARIANCE] = v + r * r / tau
    vol_state[VS_LAST_TS] = ts
    vol_state[VS_LAST_MID] = mid


@numba.njit(cache=True)
def push_trade(
    ts: int,
    signed_qty: float,
    trade_ts: np.ndarray,
    trade_qty: np.ndarray,
    ring_meta: np.ndarray,
) -> None:
    """Append a trade: ``signed_qty`` lots, positive for a taker buy, negative for a sell."""
    cap = trade_ts.shape[0]
    head = ring_meta[RM_TRADE_HEAD]
    count = ring_meta[RM_TRADE_COUNT]
    if count > 0:
        newest = trade_ts[(head - 1) % cap]
        if ts < newest:
            ts = newest
    trade_ts[head] = ts
    trade_qty[head] = signed_qty
    ring_meta[RM_TRADE_HEAD] = (head + 1) % cap
    if count < cap:
        ring_meta[RM_TRADE_COUNT] = count + 1


@numba.njit(cache=True)
def _mid_at(target: int, mid_ts: np.ndarray, mid_px: np.ndarray, head: int, count: int) -> float:
    """Latest mid with ts <= target, or NaN if every kept mid is newer (binary search)."""
    cap = mid_ts.shape[0]
    oldest = (head - count) % cap
    if count == 0 or mid_ts[oldest] > target:
        return np.nan
    # Invariant: logical index lo has ts <= target; hi is past the answer.
    lo = 0
    hi = count
    while hi - lo > 1:
        m = (lo + hi) // 2
        if mid_ts[(oldest + m) % cap] <= target:
            lo = m
        else:
            hi = m
    return mid_px[(oldest + lo) % cap]


@numba.njit(cache=True)
def _ret_bps(mid: float, past: float) -> float:
    if past > 0.0:
        return (mid / past - 1.0) * 1e4
    return 0.0


@numba.njit(cache=True)
def compute_features(
    now_ns: int,
    top: np.ndarray,
    mid_ts: np.ndarray,
    mid_px: np.ndarray,
    trade_ts: np.ndarray,
    trade_qty: np.ndarray,
    ring_meta: np.ndarray,
    vol_state: np.ndarray,
    vol_halflife_s: float,
    out: np.ndarray,
) -> float:
    """Write the ``N_FEATURES`` features into ``out``; return the mid in ticks.

    ``top`` is ``OrderBook.top``: (4, depth) int64, rows bid px, bid size, ask px, ask size.
    With a side empty the mid is NaN and the features that need it (imbalances,
    microprice, spread, returns) are 0; volatility and trade flow are still computed.
    """
    depth = top.shape[1]
    bid = top[0, 0]
    bid_sz = top[1, 0]
    ask = top[2, 0]
    ask_sz = top[3, 0]
    have_book = bid_sz > 0 and ask_sz > 0

    if have_book:
        fbid = float(bid)
        fask = float(ask)
        fbsz = float(bid_sz)
        fasz = float(ask_sz)
        mid = 0.5 * (fbid + fask)
        out[F_IMBALANCE_L1] = (fbsz - fasz) / (fbsz + fasz)
        deep_b = 0.0
        deep_a = 0.0
        for k in range(min(IMBALANCE_DEEP_LEVELS, depth)):
            deep_b += float(top[1, k])
            deep_a += float(top[3, k])
        out[F_IMBALANCE_L5] = (deep_b - deep_a) / (deep_b + deep_a)
        micro = (fbid * fasz + fask * fbsz) / (fbsz + fasz)
        out[F_MICROPRICE_OFFSET_BPS] = (micro - mid) / mid * 1e4
        out[F_SPREAD_BPS] = (fask - fbid) / mid * 1e4
    else:
        mid = np.nan
        out[F_IMBALANCE_L1] = 0.0
        out[F_IMBALANCE_L5] = 0.0
        out[F_MICROPRICE_OFFSET_BPS] = 0.0
        out[F_SPREAD_BPS] = 0.0

    mhead = ring_meta[RM_MID_HEAD]
    mcount = ring_meta[RM_MID_COUNT]
    if have_book and mid > 0.0:
        out[F_RET_100MS_BPS] = _ret_bps(
            mid, _mid_at(now_ns - RET_100MS_NS, mid_ts, mid_px, mhead, mcount)
        )
        out[F_RET_1S_BPS] = _ret_bps(
            mid, _mid_at(now_ns - RET_1S_NS, mid_ts, mid_px, mhead, mcount)
        )
        out[F_RET_5S_BPS] = _ret_bps(
            mid, _mid_at(now_ns - RET_5S_NS, mid_ts, mid_px, mhead, mcount)
        )
    else:
        out[F_RET_100MS_BPS] = 0.0
        out[F_RET_1S_BPS] = 0.0
        out[F_RET_5S_BPS] = 0.0

    # Variance decayed from the last mid to now, without changing the state.
    v = vol_state[VS_VARIANCE]
    dt = (now_ns - vol_state[VS_LAST_TS]) / _NS_PER_S
    if dt > 0.0 and v > 0.0:
        v *= math.exp(-dt * _LN2 / vol_halflife_s)
    out[F_EWMA_VOL_BPS] = math.sqrt(v) if v > 0.0 else 0.0

    # Trades newest first; timestamps are non-decreasing so stop at the long window.
    cap = trade_ts.shape[0]
    thead = ring_meta[RM_TRADE_HEAD]
    tcount = ring_meta[RM_TRADE_COUNT]
    cut_1s = now_ns - FLOW_1S_NS
    cut_5s = now_ns - FLOW_5S_NS
    net_1 = 0.0
    abs_1 = 0.0
    n_1 = 0
    net_5 = 0.0
    abs_5 = 0.0
    n_5 = 0
    for k in range(tcount):
        i = (thead - 1 - k) % cap
        t = trade_ts[i]
        if t <= cut_5s:
            break
        q = trade_qty[i]
        net_5 += q
        abs_5 += abs(q)
        n_5 += 1
        if t > cut_1s:
            net_1 += q
            abs_1 += abs(q)
            n_1 += 1
    out[F_FLOW_IMBALANCE_1S] = net_1 / abs_1 if abs_1 > 0.0 else 0.0
    out[F_FLOW_IMBALANCE_5S] = net_5 / abs_5 if abs_5 > 0.0 else 0.0
    out[F_TRADE_RATE_1S] = n_1 / (FLOW_1S_NS / _NS_PER_S)
    out[F_TRADE_RATE_5S] = n_5 / (FLOW_5S_NS / _NS_PER_S)
    return mid


class FeatureState:
    """Preallocated ring buffers and scratch for one market's feature kernel.

    The engine passes the arrays to the kernels directly; the methods are thin wrappers
    for tests and tools.
    """

    def __init__(
        self,
        mid_capacity: int = DEFAULT_MID_CAPACITY,
        trade_capacity: int = DEFAULT_TRADE_CAPACITY,
        vol_halflife_s: float = DEFAULT_VOL_HALFLIFE_S,
    ) -> None:
        if mid_capacity < 2:
            raise ValueError(f"mid_capacity must be >= 2, got {mid_capacity}")
        if trade_capacity < 1:
            raise ValueError(f"trade_capacity must be >= 1, got {trade_capacity}")
        if not (math.isfinite(vol_halflife_s) and vol_halflife_s > 0.0):
            raise ValueError(f"vol_halflife_s must be a positive number, got {vol_halflife_s!r}")
        self.vol_halflife_s: float = float(vol_halflife_s)
        self.mid_ts: np.ndarray = np.zeros(mid_capacity, dtype=np.int64)
        self.mid_px: np.ndarray = np.zeros(mid_capacity, dtype=np.float64)
        self.trade_ts: np.ndarray = np.zeros(trade_capacity, dtype=np.int64)
        self.trade_qty: np.ndarray = np.zeros(trade_capacity, dtype=np.float64)
        self.ring_meta: np.ndarray = np.zeros(N_RING_META, dtype=np.int64)
        self.vol_state: np.ndarray = np.zeros(N_VOL_STATE, dtype=np.float64)
        self.out: np.ndarray = np.zeros(N_FEATURES, dtype=np.float64)
        self.mid: float = math.nan
        self.reset()

    def reset(self) -> None:
        """Forget all history (the arrays are reused, not reallocated)."""
        self.ring_meta[:] = 0
        # All zeros is the empty state: last_mid 0 means "no previous mid", so the first
        # push records its mid without adding a return.
        self.vol_state[:] = 0.0
        self.out[:] = 0.0
        self.mid = math.nan

    def update_mid(self, ts: int, mid: float) -> None:
        push_mid(
            ts, mid, self.mid_ts, self.mid_px, self.ring_meta, self.vol_state, self.vol_halflife_s
        )

    def update_trade(self, ts: int, signed_qty: float) -> None:
        push_trade(ts, float(signed_qty), self.trade_ts, self.trade_qty, self.ring_meta)

    def compute(self, now_ns: int, top: np.ndarray) -> np.ndarray:
        """Compute the features; returns ``self.out`` (overwritten by the next call).

        The mid is kept in ``self.mid``.
        """
        self.mid = compute_features(
            now_ns,
            top,
            self.mid_ts,
            self.mid_px,
            self.trade_ts,
            self.trade_qty,
            self.ring_meta,
            self.vol_state,
            self.vol_halflife_s,
            self.out,
        )
        return self.out
