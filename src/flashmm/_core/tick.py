"""One tick of the decision path, fused into a single jitted call.

Calling three jitted kernels from Python costs three dispatches (type checks of every
argument); after a book update the engine calls :func:`decide` once instead. Numba
inlines the kernels it calls, so the maths lives in exactly one place each.

Even one dispatch type-checks and unboxes all 21 arguments, about 1 µs a tick. So the
engine calls the tick through :func:`decide_cfunc`, a C entry point over raw pointers
that runs the same two kernels (:func:`exclude_own`, then :func:`decide`);
:class:`flashmm._core.tickcall.DecideCall` holds the pointers and makes that call.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import types
from numba.core.ccallback import CFunc

from flashmm._core.features import (
    F_EWMA_VOL_BPS,
    N_FEATURES,
    N_RING_META,
    N_VOL_STATE,
    compute_features,
    push_mid,
)
from flashmm._core.model import (
    N_CLASSES,
    N_OUT,
    OUT_CONFIDENCE,
    OUT_DIRECTION,
    OUT_MOVE_BPS,
    predict_into,
)
from flashmm._core.quoting import N_QUOTE_OUT, N_QUOTE_PARAMS, compute_quote


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


# The C entry point. Its signature and status codes are an ABI shared with
# ``tickcall.pyx`` (``decide_fn``): change both together.
DECIDE_OK = 0
"""Status of :func:`decide_cfunc`: the tick ran."""
DECIDE_KERNEL_ERROR = 1
"""Status of :func:`decide_cfunc`: a kernel raised (say a division by zero on a degenerate
book), so the outputs and feature state may be partly updated."""

_I64P = types.CPointer(types.int64)
_F64P = types.CPointer(types.float64)
DECIDE_CFUNC_SIGNATURE = types.int64(
    types.int64,  # now_ns
    types.float64,  # inventory_lots
    types.int64,  # n_own: rows of own in use, 0 <= n_own <= own_rows
    _F64P,  # mid_out: the mid is written to mid_out[0]
    _I64P,  # top (4, depth)
    types.int64,  # depth
    _I64P,  # own (own_rows, 3)
    types.int64,  # own_rows
    _I64P,  # outside_top (4, depth)
    _I64P,  # mid_ts (mid_capacity,)
    _F64P,  # mid_px (mid_capacity,)
    types.int64,  # mid_capacity
    _I64P,  # trade_ts (trade_capacity,)
    _F64P,  # trade_qty (trade_capacity,)
    types.int64,  # trade_capacity
    _I64P,  # ring_meta (N_RING_META,)
    _F64P,  # vol_state (N_VOL_STATE,)
    types.float64,  # vol_halflife_s
    _F64P,  # features (N_FEATURES,)
    _F64P,  # mean (N_FEATURES,)
    _F64P,  # std (N_FEATURES,)
    _F64P,  # weights (N_CLASSES, N_FEATURES)
    _F64P,  # intercepts (N_CLASSES,)
    _F64P,  # move_weights (N_FEATURES,)
    types.float64,  # move_intercept
    _F64P,  # scratch (N_FEATURES,)
    _F64P,  # prediction (N_OUT,)
    _F64P,  # quote_params (N_QUOTE_PARAMS,)
    _F64P,  # quote (N_QUOTE_OUT,)
)


def _decide_from_pointers(
    now_ns,
    inventory_lots,
    n_own,
    mid_out,
    top_p,
    depth,
    own_p,
    own_rows,
    outside_top_p,
    mid_ts_p,
    mid_px_p,
    mid_capacity,
    trade_ts_p,
    trade_qty_p,
    trade_capacity,
    ring_meta_p,
    vol_state_p,
    vol_halflife_s,
    features_p,
    mean_p,
    std_p,
    weights_p,
    intercepts_p,
    move_weights_p,
    move_intercept,
    scratch_p,
    prediction_p,
    quote_params_p,
    quote_p,
):
    """:func:`exclude_own` (when ``n_own`` > 0), then :func:`decide`, on zero-copy views.

    Typed by ``DECIDE_CFUNC_SIGNATURE`` (``*_p`` are data pointers); returns a status.
    """
    top = numba.carray(top_p, (4, depth))
    # A kernel exception cannot cross the C boundary: it becomes a status code.
    try:
        if n_own > 0:
            outside_top = numba.carray(outside_top_p, (4, depth))
            exclude_own(top, numba.carray(own_p, (own_rows, 3)), n_own, outside_top)
            top = outside_top
        mid_out[0] = decide(
            now_ns,
            top,
            numba.carray(mid_ts_p, (mid_capacity,)),
            numba.carray(mid_px_p, (mid_capacity,)),
            numba.carray(trade_ts_p, (trade_capacity,)),
            numba.carray(trade_qty_p, (trade_capacity,)),
            numba.carray(ring_meta_p, (N_RING_META,)),
            numba.carray(vol_state_p, (N_VOL_STATE,)),
            vol_halflife_s,
            numba.carray(features_p, (N_FEATURES,)),
            numba.carray(mean_p, (N_FEATURES,)),
            numba.carray(std_p, (N_FEATURES,)),
            numba.carray(weights_p, (N_CLASSES, N_FEATURES)),
            numba.carray(intercepts_p, (N_CLASSES,)),
            numba.carray(move_weights_p, (N_FEATURES,)),
            move_intercept,
            numba.carray(scratch_p, (N_FEATURES,)),
            numba.carray(prediction_p, (N_OUT,)),
            inventory_lots,
            numba.carray(quote_params_p, (N_QUOTE_PARAMS,)),
            numba.carray(quote_p, (N_QUOTE_OUT,)),
        )
    except Exception:
        return DECIDE_KERNEL_ERROR
    return DECIDE_OK


@functools.cache
def decide_cfunc() -> CFunc:
    """The compiled C entry point of one tick (``.address`` is its function pointer).

    Loaded from Numba's cache (compiled on a miss) on the first call, not at import, so
    importing this module stays cheap. Keep the returned object alive while its address
    is in use.
    """
    return numba.cfunc(DECIDE_CFUNC_SIGNATURE, cache=True)(_decide_from_pointers)
