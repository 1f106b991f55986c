"""One tick of the decision path, fused into a single jitted call.

Calling three jitted kernels from Python costs three dispatches (type checks of every
argument); after a book update the engine calls :func:`decide` once instead. Numba
inlines the kernels it calls, so the maths lives in exactly one place each.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from flashmm._core.features import F_EWMA_VOL_BPS, compute_features, push_mid
from flashmm._core.model import OUT_CONFIDENCE, OUT_DIRECTION, OUT_MOVE_BPS, predict_into
from flashmm._core.quoting import compute_quote


@numba.njit(cache=True)
def decide(
    now_ns: int,
    top: np.ndarray,
    mid_ts: np.ndarray,
    mid_px: np.ndarray,
    trade_ts: np.ndarray,
    trade_qty: np.ndarray,
    ring_meta: np.ndarray,
    vol_state: np.ndarray,
    vol_halflife_s: float,
    features: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    weights: np.ndarray,
    intercepts: np.ndarray,
    move_weights: np.ndarray,
    move_intercept: float,
    scratch: np.ndarray,
    prediction: np.ndarray,
    inventory_lots: float,
    quote_params: np.ndarray,
    quote: np.ndarray,
) -> float:
    """Record the book's mid, then features -> prediction -> quote; returns the mid.

    ``top`` is ``OrderBook.top``. Outputs land in ``features``, ``prediction`` and
    ``quote`` (see the kernels' index constants). With a side empty the mid is NaN and
    the quote kernel proposes nothing.
    """
    bid = top[0, 0]
    ask = top[2, 0]
    mid = 0.5 * (bid + ask) if top[1, 0] > 0 and top[3, 0] > 0 else math.nan
    push_mid(now_ns, mid, mid_ts, mid_px, ring_meta, vol_state, vol_halflife_s)
    mid = compute_features(
        now_ns,
        top,
        mid_ts,
        mid_px,
        trade_ts,
        trade_qty,
        ring_meta,
        vol_state,
        vol_halflife_s,
        features,
    )
    predict_into(
        features,
        mean,
        std,
        weights,
        intercepts,
        move_weights,
        move_intercept,
        scratch,
        prediction,
    )
    compute_quote(
        mid,
        bid if top[1, 0] > 0 else 0,
        ask if top[3, 0] > 0 else 0,
        features[F_EWMA_VOL_BPS],
        inventory_lots,
        prediction[OUT_DIRECTION],
        prediction[OUT_CONFIDENCE],
        prediction[OUT_MOVE_BPS],
        quote_params,
        quote,
    )
    return mid


@numba.njit(cache=True)
def exclude_own(top: np.ndarray, own: np.ndarray, n_own: int, out: np.ndarray) -> None:
    """``out`` = ``top`` (a book's ``(4, depth)`` top levels) less the engine's own resting
    orders ``own[:n_own]`` (rows of side +1/-1, price ticks, remaining lots).

    A market maker that read its own quotes as the market would chase itself: its mid
    and volatility would move with every requote. A level left empty is dropped and the
    levels behind it move up; an own size larger than the level (the book has not shown
    the order yet) empties the level rather than going negative.
    """
    depth = top.shape[1]
    for side_row in (0, 2):
        side = 1 if side_row == 0 else -1
        k = 0
        for i in range(depth):
            price = top[side_row, i]
            size = top[side_row + 1, i]
            if price != 0:
                for j in range(n_own):
                    if own[j, 0] == side and own[j, 1] == price:
                        size -= own[j, 2]
            if price != 0 and size > 0:
                out[side_row, k] = price
                out[side_row + 1, k] = size
                k += 1
        for i in range(k, depth):
            out[side_row, i] = 0
            out[side_row + 1, i] = 0
