from libc.stdint cimport int64_t

cimport numpy as cnp


cdef struct Side:
    # Levels sorted so the best is at index n-1: bids ascending, asks descending.
    # ``sign`` (+1 bids, -1 asks) turns both into one ascending order on sign*price.
    int64_t* price
    int64_t* size
    Py_ssize_t n
    Py_ssize_t cap
    int64_t sign


cdef class OrderBook:
    cdef readonly double tick_size
    cdef readonly double lot_size
    cdef double _inv_tick
    cdef double _inv_lot
    cdef readonly int64_t sequence
    cdef readonly bint is_valid
    cdef bint _fresh
    cdef readonly Py_ssize_t depth
    cdef Side _bids
    cdef Side _asks
    cdef cnp.ndarray _bid_price_arr
    cdef cnp.ndarray _bid_size_arr
    cdef cnp.ndarray _ask_price_arr
    cdef cnp.ndarray _ask_size_arr
    cdef cnp.ndarray _scratch_arr
    cdef cnp.ndarray _top_arr
    cdef readonly cnp.ndarray top

    cdef int _grow(self, Side* side, Py_ssize_t need) except -1
    cdef int _ensure_scratch(self, Py_ssize_t rows) except -1
    cdef int _to_units(self, const double* rows, Py_ssize_t n, int64_t* out) noexcept nogil
    cdef int _set_level(self, Side* side, int64_t price, int64_t size) except -1
    cdef int _fill_side(self, Side* side, int64_t* rows, Py_ssize_t n) except -1
    cdef int _check_unique(self, int64_t* rows, Py_ssize_t n, int64_t sign) except -1
    cdef tuple _view(self, Side* side, cnp.ndarray price, cnp.ndarray size, object n)
    cdef int _finish(self) noexcept
    cdef void _refresh_top(self) noexcept
