from libc.stdint cimport int64_t

cimport numpy as cnp


cdef struct Side:
    # One side as a sequence of chunks of at most ``_CHUNK`` levels, ordered worst to
    # best, each sorted ascending on ``key = sign * price`` (``sign`` +1 bids, -1 asks),
    # so the best level is the last one of the last chunk. An insert or delete moves
    # levels within one chunk only.
    int64_t* pool  # block b: keys at pool[2*_CHUNK*b], then its sizes, _CHUNK apart
    int64_t* lo  # lo[j]: smallest key of chunk j (j = 0 is the worst chunk)
    Py_ssize_t* blk  # blk[j]: block holding chunk j; blk[m:cap] are the free blocks
    Py_ssize_t* cnt  # cnt[j]: levels in chunk j, 1.._CHUNK
    Py_ssize_t m  # chunks in use (0 iff the side is empty)
    Py_ssize_t cap  # blocks allocated
    Py_ssize_t n  # levels
    int64_t sign
    int64_t best  # best price and its size, 0 when empty: kept by OrderBook._refresh_top
    int64_t best_size


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
    cdef cnp.ndarray _bid_out
    cdef cnp.ndarray _ask_out
    cdef cnp.ndarray _scratch_arr
    cdef cnp.ndarray _where_arr
    cdef readonly cnp.ndarray top

    cdef int _ensure_scratch(self, Py_ssize_t rows) except -1
    cdef int _frame_units(self, cnp.ndarray bids, cnp.ndarray asks) except -1
    cdef int _to_units(self, const double* rows, Py_ssize_t n, int64_t* out) noexcept nogil
    cdef int _check_unique(self, int64_t* rows, Py_ssize_t n, int64_t sign) except -1
    cdef tuple _export(self, Side* side, bint is_bid, object n)
    cdef void _lost(self) noexcept
    cdef int _finish(self, bint bids, bint asks) noexcept
    cdef void _refresh_top(self, bint bids, bint asks) noexcept
