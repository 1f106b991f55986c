"""L2 order book for one market, in integer ticks and lots.

Each side is a pair of sorted int64 arrays (price, size) with the best level at the
end, so that the updates that matter, near the top, move few bytes and the best
level is one load away. Arrays grow on demand: no level is ever dropped.

Frames are applied whole: ``apply_snapshot`` and ``apply_delta`` take the ``(n, 2)``
float64 ``[price, size]`` rows of one frame, validate all of them first, then apply.
The returned status says what happened; nothing is repaired silently.
"""

from enum import IntEnum

cimport numpy as cnp
from libc.math cimport NAN, fabs, isfinite, llround
from libc.stdint cimport int64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove

import numpy as np

cnp.import_array()

# Status codes, as plain ints for the hot path; ``BookStatus`` names them.
cdef enum:
    _OK = 0
    _GAP = 1
    _CROSSED = 2
    _STALE = 3
    _REJECTED = 4
    _UNSYNCED = 5

OK = _OK
GAP = _GAP
CROSSED = _CROSSED
STALE = _STALE
REJECTED = _REJECTED
UNSYNCED = _UNSYNCED


class BookStatus(IntEnum):
    """What applying one frame did to the book."""

    OK = _OK
    """Applied; the book is valid."""
    GAP = _GAP
    """The frame's sequence does not follow the book's: not applied, book invalid."""
    CROSSED = _CROSSED
    """Applied, and best bid >= best ask: book invalid until the next snapshot."""
    STALE = _STALE
    """Older than (or equal to) the book's sequence: ignored, book unchanged."""
    REJECTED = _REJECTED
    """A level is off the tick/lot grid, non-finite, negative, or (in a snapshot)
    duplicated: nothing applied, book invalid until the next snapshot."""
    UNSYNCED = _UNSYNCED
    """A delta arrived while the book awaits a snapshot: ignored."""


cdef inline bint _check_rows(cnp.ndarray a) noexcept:
    return (cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_DIM(a, 1) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef inline int64_t _best(Side* s) noexcept nogil:
    return s.price[s.n - 1] if s.n > 0 else 0


cdef int _cmp_price(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


# A level is on the grid when price/tick is within this many units of an integer
# (plus a relative allowance for the rounding of large values).
cdef double _GRID_TOL_ABS = 1e-6
cdef double _GRID_TOL_REL = 1e-12
cdef double _MAX_UNITS = 4e18


cdef class OrderBook:
    """L2 book of one market. Prices in ticks, sizes in lots.

    ``top`` is a fixed ``(4, depth)`` int64 array (bid prices, bid sizes, ask prices,
    ask sizes; best first, zero-padded) refreshed after every applied frame: the
    kernels read it without any allocation.
    """

    def __cinit__(self, double tick_size, double lot_size, Py_ssize_t depth=10,
                  Py_ssize_t capacity=256):
        if not (isfinite(tick_size) and tick_size > 0):
            raise ValueError(f"tick_size must be a positive number, got {tick_size!r}")
        if not (isfinite(lot_size) and lot_size > 0):
            raise ValueError(f"lot_size must be a positive number, got {lot_size!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        capacity = max(capacity, 8)
        self.tick_size = tick_size
        self.lot_size = lot_size
        self._inv_tick = 1.0 / tick_size
        self._inv_lot = 1.0 / lot_size
        self.depth = depth
        self.sequence = -1
        self.is_valid = False
        self._fresh = False
        self._bid_price_arr = np.zeros(capacity, dtype=np.int64)
        self._bid_size_arr = np.zeros(capacity, dtype=np.int64)
        self._ask_price_arr = np.zeros(capacity, dtype=np.int64)
        self._ask_size_arr = np.zeros(capacity, dtype=np.int64)
        self._bids = Side(<int64_t*>cnp.PyArray_DATA(self._bid_price_arr),
                          <int64_t*>cnp.PyArray_DATA(self._bid_size_arr), 0, capacity, 1)
        self._asks = Side(<int64_t*>cnp.PyArray_DATA(self._ask_price_arr),
                          <int64_t*>cnp.PyArray_DATA(self._ask_size_arr), 0, capacity, -1)
        self._scratch_arr = np.zeros((64, 2), dtype=np.int64)
        self.top = np.zeros((4, depth), dtype=np.int64)

    # ------------------------------------------------------------------ storage

    cdef int _grow(self, Side* side, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = max(2 * side.cap, need)
        price = np.zeros(cap, dtype=np.int64)
        size = np.zeros(cap, dtype=np.int64)
        memcpy(cnp.PyArray_DATA(price), side.price, side.n * sizeof(int64_t))
        memcpy(cnp.PyArray_DATA(size), side.size, side.n * sizeof(int64_t))
        if side.sign > 0:
            self._bid_price_arr = price
            self._bid_size_arr = size
        else:
            self._ask_price_arr = price
            self._ask_size_arr = size
        side.price = <int64_t*>cnp.PyArray_DATA(price)
        side.size = <int64_t*>cnp.PyArray_DATA(size)
        side.cap = cap
        return 0

    cdef int _ensure_scratch(self, Py_ssize_t rows) except -1:
        if cnp.PyArray_DIM(self._scratch_arr, 0) < rows:
            self._scratch_arr = np.zeros((max(rows, 2 * cnp.PyArray_DIM(self._scratch_arr, 0)), 2),
                                         dtype=np.int64)
        return 0

    cdef int _to_units(self, const double* rows, Py_ssize_t n, int64_t* out) noexcept nogil:
        """Convert ``n`` (price, size) rows to (ticks, lots); 0 if all are valid, else -1."""
        cdef Py_ssize_t k
        cdef double px, sz, t, l
        cdef int64_t ti, li
        for k in range(n):
            px = rows[2 * k]
            sz = rows[2 * k + 1]
            if not (isfinite(px) and isfinite(sz)) or px <= 0.0 or sz < 0.0:
                return -1
            t = px * self._inv_tick
            l = sz * self._inv_lot
            if t >= _MAX_UNITS or l >= _MAX_UNITS:
                return -1
            ti = llround(t)
            li = llround(l)
            if (ti <= 0 or fabs(t - <double>ti) > _GRID_TOL_ABS + _GRID_TOL_REL * t
                    or fabs(l - <double>li) > _GRID_TOL_ABS + _GRID_TOL_REL * l):
                return -1
            out[2 * k] = ti
            out[2 * k + 1] = li
        return 0

    cdef int _set_level(self, Side* side, int64_t price, int64_t size) except -1:
        """Set the absolute size at ``price``; 0 deletes. Searches from the top."""
        cdef int64_t key = side.sign * price
        cdef Py_ssize_t n = side.n
        cdef Py_ssize_t i = n
        cdef Py_ssize_t lo, hi, mid
        cdef int steps = 0
        cdef int64_t* p = side.price
        # Most updates land within a few levels of the top (the end of the array).
        while i > 0 and side.sign * p[i - 1] >= key:
            i -= 1
            steps += 1
            if steps == 8:
                lo = 0
                hi = i
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if side.sign * p[mid] >= key:
                        hi = mid
                    else:
                        lo = mid + 1
                i = lo
                break
        if i < n and p[i] == price:
            if size == 0:
                memmove(p + i, p + i + 1, (n - i - 1) * sizeof(int64_t))
                memmove(side.size + i, side.size + i + 1, (n - i - 1) * sizeof(int64_t))
                side.n = n - 1
            else:
                side.size[i] = size
            return 0
        if size == 0:
            return 0  # deleting a level that is not there is a no-op, as on every venue
        if n == side.cap:
            self._grow(side, n + 1)
            p = side.price
        memmove(p + i + 1, p + i, (n - i) * sizeof(int64_t))
        memmove(side.size + i + 1, side.size + i, (n - i) * sizeof(int64_t))
        p[i] = price
        side.size[i] = size
        side.n = n + 1
        return 0

    cdef void _refresh_top(self) noexcept:
        cdef int64_t* t = <int64_t*>cnp.PyArray_DATA(self.top)
        cdef Py_ssize_t d = self.depth
        cdef Py_ssize_t k
        cdef Py_ssize_t nb = self._bids.n
        cdef Py_ssize_t na = self._asks.n
        for k in range(d):
            if k < nb:
                t[k] = self._bids.price[nb - 1 - k]
                t[d + k] = self._bids.size[nb - 1 - k]
            else:
                t[k] = 0
                t[d + k] = 0
            if k < na:
                t[2 * d + k] = self._asks.price[na - 1 - k]
                t[3 * d + k] = self._asks.size[na - 1 - k]
            else:
                t[2 * d + k] = 0
                t[3 * d + k] = 0

    cdef int _finish(self) noexcept:
        self._refresh_top()
        if self._bids.n > 0 and self._asks.n > 0 and _best(&self._bids) >= _best(&self._asks):
            self.is_valid = False
            return _CROSSED
        return _OK

    cdef int _fill_side(self, Side* side, int64_t* rows, Py_ssize_t n) except -1:
        """Replace a side with ``n`` best-first (ticks, lots) rows, skipping zero sizes."""
        cdef Py_ssize_t k, m = 0
        for k in range(n):
            if rows[2 * k + 1] > 0:
                m += 1
        if m > side.cap:
            self._grow(side, m)
        side.n = m
        for k in range(n):
            if rows[2 * k + 1] > 0:
                m -= 1
                side.price[m] = rows[2 * k]
                side.size[m] = rows[2 * k + 1]
        return 0

    # ------------------------------------------------------------------ frames

    def apply_snapshot(self, cnp.ndarray bids, cnp.ndarray asks, int64_t sequence):
        """Replace the book with ``bids``/``asks`` (``(n, 2)`` float64 price/size rows).

        Any order of rows is accepted; zero sizes are skipped; a price that appears
        twice on one side is REJECTED. A snapshot older than a valid book is STALE.
        """
        if not (_check_rows(bids) and _check_rows(asks)):
            raise TypeError("bids and asks must be C-contiguous float64 arrays of shape (n, 2)")
        if self.is_valid and sequence < self.sequence:
            return _STALE
        cdef Py_ssize_t nb = cnp.PyArray_DIM(bids, 0)
        cdef Py_ssize_t na = cnp.PyArray_DIM(asks, 0)
        self._ensure_scratch(nb + na)
        cdef int64_t* rows = <int64_t*>cnp.PyArray_DATA(self._scratch_arr)
        if (self._to_units(<double*>cnp.PyArray_DATA(bids), nb, rows) != 0
                or self._to_units(<double*>cnp.PyArray_DATA(asks), na, rows + 2 * nb) != 0):
            self.is_valid = False
            return _REJECTED
        # Both sides are sorted and checked before the book is touched.
        if self._check_unique(rows, nb, 1) != 0 or self._check_unique(rows + 2 * nb, na, -1) != 0:
            self.is_valid = False
            return _REJECTED
        self._fill_side(&self._bids, rows, nb)
        self._fill_side(&self._asks, rows + 2 * nb, na)
        self.sequence = sequence
        self.is_valid = True
        self._fresh = True
        return self._finish()

    cdef int _check_unique(self, int64_t* rows, Py_ssize_t n, int64_t sign) except -1:
        """Sort rows best-first unless they already are; -2 if a price repeats."""
        cdef Py_ssize_t k
        cdef int64_t a0, a1
        for k in range(1, n):
            if sign * rows[2 * k] >= sign * rows[2 * (k - 1)]:
                break
        else:
            return 0
        qsort(rows, n, 2 * sizeof(int64_t), _cmp_price)
        for k in range(1, n):
            if rows[2 * k] == rows[2 * (k - 1)]:
                return -2
        if sign > 0:
            for k in range(n // 2):
                a0 = rows[2 * k]
                a1 = rows[2 * k + 1]
                rows[2 * k] = rows[2 * (n - 1 - k)]
                rows[2 * k + 1] = rows[2 * (n - 1 - k) + 1]
                rows[2 * (n - 1 - k)] = a0
                rows[2 * (n - 1 - k) + 1] = a1
        return 0

    def apply_delta(self, cnp.ndarray bids, cnp.ndarray asks, int64_t sequence,
                    int64_t first_sequence=-1):
        """Apply absolute sizes per level (0 deletes) from one delta frame.

        ``first_sequence`` is the first update id the frame covers when it covers a
        range (Binance's ``U``); by default the frame covers ``sequence`` alone. The
        first delta after a snapshot may straddle the snapshot's sequence; every later
        one must start right after the previous.
        """
        if not (_check_rows(bids) and _check_rows(asks)):
            raise TypeError("bids and asks must be C-contiguous float64 arrays of shape (n, 2)")
        if not self.is_valid:
            return _UNSYNCED
        if sequence <= self.sequence:
            return _STALE
        if first_sequence < 0:
            first_sequence = sequence
        if (first_sequence > self.sequence + 1
                or (not self._fresh and first_sequence != self.sequence + 1)):
            self.is_valid = False
            return _GAP
        cdef Py_ssize_t nb = cnp.PyArray_DIM(bids, 0)
        cdef Py_ssize_t na = cnp.PyArray_DIM(asks, 0)
        self._ensure_scratch(nb + na)
        cdef int64_t* rows = <int64_t*>cnp.PyArray_DATA(self._scratch_arr)
        if (self._to_units(<double*>cnp.PyArray_DATA(bids), nb, rows) != 0
                or self._to_units(<double*>cnp.PyArray_DATA(asks), na, rows + 2 * nb) != 0):
            self.is_valid = False
            return _REJECTED
        cdef Py_ssize_t k
        for k in range(nb):
            self._set_level(&self._bids, rows[2 * k], rows[2 * k + 1])
        rows += 2 * nb
        for k in range(na):
            self._set_level(&self._asks, rows[2 * k], rows[2 * k + 1])
        self.sequence = sequence
        self._fresh = False
        return self._finish()

    def apply_level(self, bint is_bid, double price, double size, int64_t sequence):
        """Apply one level as a delta frame of its own (same rules as ``apply_delta``)."""
        cdef double row[2]
        cdef int64_t units[2]
        if not self.is_valid:
            return _UNSYNCED
        if sequence <= self.sequence:
            return _STALE
        if sequence != self.sequence + 1 and not self._fresh:
            self.is_valid = False
            return _GAP
        row[0] = price
        row[1] = size
        if self._to_units(row, 1, units) != 0:
            self.is_valid = False
            return _REJECTED
        self._set_level(&self._bids if is_bid else &self._asks, units[0], units[1])
        self.sequence = sequence
        self._fresh = False
        return self._finish()

    def invalidate(self):
        """Mark the book out of sync (for example when the feed drops); keeps its levels."""
        self.is_valid = False

    def clear(self):
        """Remove every level and forget the sequence."""
        self._bids.n = 0
        self._asks.n = 0
        self.sequence = -1
        self.is_valid = False
        self._fresh = False
        self._refresh_top()

    # ------------------------------------------------------------------ reads

    @property
    def best_bid(self):
        """Best bid in ticks (0 when the side is empty)."""
        return _best(&self._bids)

    @property
    def best_ask(self):
        """Best ask in ticks (0 when the side is empty)."""
        return _best(&self._asks)

    @property
    def best_bid_size(self):
        return self._bids.size[self._bids.n - 1] if self._bids.n > 0 else 0

    @property
    def best_ask_size(self):
        return self._asks.size[self._asks.n - 1] if self._asks.n > 0 else 0

    @property
    def n_bids(self):
        return self._bids.n

    @property
    def n_asks(self):
        return self._asks.n

    @property
    def mid(self):
        """Mid price in ticks, NaN when a side is empty."""
        if self._bids.n == 0 or self._asks.n == 0:
            return NAN
        return 0.5 * (<double>_best(&self._bids) + <double>_best(&self._asks))

    @property
    def spread(self):
        """Best ask minus best bid in ticks, NaN when a side is empty."""
        if self._bids.n == 0 or self._asks.n == 0:
            return NAN
        return <double>(_best(&self._asks) - _best(&self._bids))

    @property
    def microprice(self):
        """Size-weighted mid in ticks: leans towards the side with less size."""
        if self._bids.n == 0 or self._asks.n == 0:
            return NAN
        cdef double b = <double>_best(&self._bids)
        cdef double a = <double>_best(&self._asks)
        cdef double bs = <double>self._bids.size[self._bids.n - 1]
        cdef double as_ = <double>self._asks.size[self._asks.n - 1]
        return (b * as_ + a * bs) / (bs + as_)

    def bids(self, n=None):
        """(prices, sizes) of the best ``n`` bids (all by default), best first.

        Views into the book's storage: valid until the next applied frame.
        """
        return self._view(&self._bids, self._bid_price_arr, self._bid_size_arr, n)

    def asks(self, n=None):
        """(prices, sizes) of the best ``n`` asks (all by default), best first; views."""
        return self._view(&self._asks, self._ask_price_arr, self._ask_size_arr, n)

    cdef tuple _view(self, Side* side, cnp.ndarray price, cnp.ndarray size, object n):
        cdef Py_ssize_t k = side.n if n is None else min(max(<Py_ssize_t>n, 0), side.n)
        cdef Py_ssize_t top = side.n - 1
        if k == 0:
            return price[:0], size[:0]
        if top - k < 0:
            return price[top::-1], size[top::-1]
        return price[top:top - k:-1], size[top:top - k:-1]

    def price(self, int64_t ticks):
        """A tick count as a price."""
        return ticks * self.tick_size

    def __repr__(self):
        return (f"OrderBook(tick_size={self.tick_size}, lot_size={self.lot_size}, "
                f"sequence={self.sequence}, valid={bool(self.is_valid)}, "
                f"bids={self._bids.n}, asks={self._asks.n}, "
                f"best={_best(&self._bids)}/{_best(&self._asks)})")
