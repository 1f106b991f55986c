"""A C-level call of one decision tick: the seam between Python and the jitted kernels.

Calling the jitted ``tick.decide`` from Python makes Numba's dispatcher type-check and
unbox each of its 21 arguments on every tick (about 1 µs). :class:`DecideCall` checks
the arrays once, when it is built, keeps them and their data pointers, and on each tick
calls the kernel's C entry point (``tick.decide_cfunc()``) with them, so the per-tick
cost no longer grows with the number of arrays.
"""

from libc.stdint cimport int64_t

cimport numpy as cnp

import numpy as np

from flashmm._core.features import N_FEATURES, N_RING_META, N_VOL_STATE
from flashmm._core.model import N_CLASSES, N_OUT
from flashmm._core.quoting import N_QUOTE_OUT, N_QUOTE_PARAMS

cnp.import_array()

# The ABI of ``tick.DECIDE_CFUNC_SIGNATURE``: change both together.
ctypedef int64_t (*decide_fn)(
    int64_t now_ns,
    double inventory_lots,
    int64_t n_own,
    double* mid_out,
    int64_t* top,
    int64_t depth,
    int64_t* own,
    int64_t own_rows,
    int64_t* outside_top,
    int64_t* mid_ts,
    double* mid_px,
    int64_t mid_capacity,
    int64_t* trade_ts,
    double* trade_qty,
    int64_t trade_capacity,
    int64_t* ring_meta,
    double* vol_state,
    double vol_halflife_s,
    double* features,
    double* mean,
    double* std,
    double* weights,
    double* intercepts,
    double* move_weights,
    double move_intercept,
    double* scratch,
    double* prediction,
    double* quote_params,
    double* quote,
) noexcept

# tick.DECIDE_OK
cdef int64_t _DECIDE_OK = 0


class DecideKernelError(RuntimeError):
    """A kernel raised inside the compiled call (say a division by zero on a degenerate
    book); the outputs and feature state may be partly updated."""


cdef cnp.ndarray _checked(str name, object arr, object dtype, tuple shape, bint written):
    """``arr`` if it is a C-contiguous, aligned ``dtype`` array of ``shape`` (None: any
    length, >= 1), writable when ``written``; else TypeError / ValueError naming it."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of {dtype}, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        raise TypeError(
            f"{name}: must be C-contiguous and aligned; the call reads and writes the array "
            "in place, so pass the array itself, not a strided view or a copy"
        )
    got = arr.shape
    if len(got) != len(shape) or any(
        (n < 1) if want is None else (n != want) for n, want in zip(got, shape)
    ):
        want_text = "(" + ", ".join("n>=1" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name}: expected shape {want_text}, got {got}")
    if written and not arr.flags.writeable:
        raise ValueError(f"{name}: must be writable, the decision writes to it")
    return arr


cdef class DecideCall:
    """One market's decision tick as a direct C call over its preallocated arrays.

    Built once from the arrays ``tick.decide`` takes plus ``own`` / ``outside_top`` of
    ``tick.exclude_own``, and ``kernel``: ``tick.decide_cfunc()``. It keeps references to
    the arrays, so their memory stays valid; an array its owner later replaces (rather than
    writes into) is not seen, so build a new call then. The two floats are fixed here too.

    ``call(now_ns, inventory_lots, n_own)`` runs :func:`~flashmm._core.tick.exclude_own`
    (``own[:n_own]`` out of ``top`` into ``outside_top``) when ``n_own`` > 0, then
    :func:`~flashmm._core.tick.decide` on the result, and returns the mid.
    """

    cdef decide_fn _fn
    cdef object _keep
    cdef int64_t* _top
    cdef int64_t _depth
    cdef int64_t* _own
    cdef int64_t _own_rows
    cdef int64_t* _outside_top
    cdef int64_t* _mid_ts
    cdef double* _mid_px
    cdef int64_t _mid_capacity
    cdef int64_t* _trade_ts
    cdef double* _trade_qty
    cdef int64_t _trade_capacity
    cdef int64_t* _ring_meta
    cdef double* _vol_state
    cdef double _vol_halflife_s
    cdef double* _features
    cdef double* _mean
    cdef double* _std
    cdef double* _weights
    cdef double* _intercepts
    cdef double* _move_weights
    cdef double _move_intercept
    cdef double* _scratch
    cdef double* _prediction
    cdef double* _quote_params
    cdef double* _quote
    cdef double _mid

    def __init__(
        self,
        kernel,
        top,
        own,
        outside_top,
        mid_ts,
        mid_px,
        trade_ts,
        trade_qty,
        ring_meta,
        vol_state,
        double vol_halflife_s,
        features,
        mean,
        std,
        weights,
        intercepts,
        move_weights,
        double move_intercept,
        scratch,
        prediction,
        quote_params,
        quote,
    ):
        i8, f8 = np.dtype(np.int64), np.dtype(np.float64)
        address = getattr(kernel, "address", None)
        if not isinstance(address, int) or address == 0:
            raise TypeError(f"kernel: expected tick.decide_cfunc(), got {kernel!r}")
        # Every check before any field is set: a refused call keeps nothing.
        c_top = _checked("top", top, i8, (4, None), False)
        depth = c_top.shape[1]
        c_own = _checked("own", own, i8, (None, 3), False)
        c_outside = _checked("outside_top", outside_top, i8, (4, depth), True)
        c_mid_ts = _checked("mid_ts", mid_ts, i8, (None,), True)
        c_mid_px = _checked("mid_px", mid_px, f8, (c_mid_ts.shape[0],), True)
        c_trade_ts = _checked("trade_ts", trade_ts, i8, (None,), False)
        c_trade_qty = _checked("trade_qty", trade_qty, f8, (c_trade_ts.shape[0],), False)
        c_ring_meta = _checked("ring_meta", ring_meta, i8, (N_RING_META,), True)
        c_vol_state = _checked("vol_state", vol_state, f8, (N_VOL_STATE,), True)
        c_features = _checked("features", features, f8, (N_FEATURES,), True)
        c_mean = _checked("mean", mean, f8, (N_FEATURES,), False)
        c_std = _checked("std", std, f8, (N_FEATURES,), False)
        c_weights = _checked("weights", weights, f8, (N_CLASSES, N_FEATURES), False)
        c_intercepts = _checked("intercepts", intercepts, f8, (N_CLASSES,), False)
        c_move_weights = _checked("move_weights", move_weights, f8, (N_FEATURES,), False)
        c_scratch = _checked("scratch", scratch, f8, (N_FEATURES,), True)
        c_prediction = _checked("prediction", prediction, f8, (N_OUT,), True)
        c_quote_params = _checked("quote_params", quote_params, f8, (N_QUOTE_PARAMS,), False)
        c_quote = _checked("quote", quote, f8, (N_QUOTE_OUT,), True)

        self._keep = (
            kernel, c_top, c_own, c_outside, c_mid_ts, c_mid_px, c_trade_ts, c_trade_qty,
            c_ring_meta, c_vol_state, c_features, c_mean, c_std, c_weights, c_intercepts,
            c_move_weights, c_scratch, c_prediction, c_quote_params, c_quote,
        )
        self._fn = <decide_fn><size_t>address
        self._top = <int64_t*>cnp.PyArray_DATA(c_top)
        self._depth = depth
        self._own = <int64_t*>cnp.PyArray_DATA(c_own)
        self._own_rows = c_own.shape[0]
        self._outside_top = <int64_t*>cnp.PyArray_DATA(c_outside)
        self._mid_ts = <int64_t*>cnp.PyArray_DATA(c_mid_ts)
        self._mid_px = <double*>cnp.PyArray_DATA(c_mid_px)
        self._mid_capacity = c_mid_ts.shape[0]
        self._trade_ts = <int64_t*>cnp.PyArray_DATA(c_trade_ts)
        self._trade_qty = <double*>cnp.PyArray_DATA(c_trade_qty)
        self._trade_capacity = c_trade_ts.shape[0]
        self._ring_meta = <int64_t*>cnp.PyArray_DATA(c_ring_meta)
        self._vol_state = <double*>cnp.PyArray_DATA(c_vol_state)
        self._vol_halflife_s = vol_halflife_s
        self._features = <double*>cnp.PyArray_DATA(c_features)
        self._mean = <double*>cnp.PyArray_DATA(c_mean)
        self._std = <double*>cnp.PyArray_DATA(c_std)
        self._weights = <double*>cnp.PyArray_DATA(c_weights)
        self._intercepts = <double*>cnp.PyArray_DATA(c_intercepts)
        self._move_weights = <double*>cnp.PyArray_DATA(c_move_weights)
        self._move_intercept = move_intercept
        self._scratch = <double*>cnp.PyArray_DATA(c_scratch)
        self._prediction = <double*>cnp.PyArray_DATA(c_prediction)
        self._quote_params = <double*>cnp.PyArray_DATA(c_quote_params)
        self._quote = <double*>cnp.PyArray_DATA(c_quote)

    def call(self, int64_t now_ns, double inventory_lots, Py_ssize_t n_own):
        """One tick at ``now_ns`` with ``own[:n_own]`` left out of the book; the mid."""
        if self._fn == NULL:
            raise RuntimeError("DecideCall.__init__ was not run")
        if n_own < 0 or n_own > self._own_rows:
            raise ValueError(f"n_own must be in 0..{self._own_rows}, got {n_own}")
        status = self._fn(
            now_ns,
            inventory_lots,
            n_own,
            &self._mid,
            self._top,
            self._depth,
            self._own,
            self._own_rows,
            self._outside_top,
            self._mid_ts,
            self._mid_px,
            self._mid_capacity,
            self._trade_ts,
            self._trade_qty,
            self._trade_capacity,
            self._ring_meta,
            self._vol_state,
            self._vol_halflife_s,
            self._features,
            self._mean,
            self._std,
            self._weights,
            self._intercepts,
            self._move_weights,
            self._move_intercept,
            self._scratch,
            self._prediction,
            self._quote_params,
            self._quote,
        )
        if status != _DECIDE_OK:
            raise DecideKernelError(
                "the decision kernel raised inside the compiled call (for example a division "
                "by zero on a degenerate book); outputs and feature state may be partly "
                "updated. Call flashmm._core.tick.decide on the same inputs to see the error."
            )
        return self._mid
