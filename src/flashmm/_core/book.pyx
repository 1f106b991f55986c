"""L2 order book for one market, in integer ticks and lots.

Each side is a sequence of fixed-capacity chunks of sorted levels, ordered worst to
best, with a small index of each chunk's lowest key to find the chunk of a price. An
insert or delete moves levels within one chunk only, wherever in the book it lands,
and the best level is the last one of the last chunk, so updates near the top are
found by a short scan back from it. Full chunks split, nearly empty ones merge into a
neighbour; storage grows on demand: no level is ever dropped. Nothing assumes levels
are dense in ticks.

Frames are applied whole: ``apply_snapshot`` and ``apply_delta`` take the ``(n, 2)``
float64 ``[price, size]`` rows of one frame, validate all of them first, then apply.
The returned status says what happened; nothing is repaired silently.
"""

from enum import IntEnum

cimport numpy as cnp
from libc.math cimport NAN, fabs, isfinite
from libc.stdint cimport int64_t
from cpython.mem cimport PyMem_Free, PyMem_Realloc
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


# ---------------------------------------------------------------------- one side
#
# A side is ``m`` chunks ordered worst to best; chunk ``j`` lives in block ``blk[j]``
# of ``pool`` (``_CHUNK`` keys, then their ``_CHUNK`` sizes) and holds ``cnt[j]``
# levels sorted ascending on ``key = sign * price``; ``lo[j]`` is its smallest key.
# ``blk[m:cap]`` lists the free blocks, so opening or closing a chunk only shifts
# the small ``blk``/``cnt``/``lo`` index, never levels.

cdef enum:
    _CHUNK = 64  # levels per chunk at most
    _HALF = _CHUNK // 2  # a full chunk splits into two of this many levels
    _BLOCK = 2 * _CHUNK  # int64s per block: keys, then sizes
    _FILL = 48  # levels per chunk when a snapshot fills a side: room left to insert
    _MERGE = 16  # a chunk left with fewer levels merges into a neighbour ...
    _MERGED_MAX = 48  # ... when the two together hold at most this many
    _SCAN = 8  # levels scanned back from the best before a binary search


cdef void* _realloc(void* p, size_t nbytes) except NULL:
    """``PyMem_Realloc`` that raises MemoryError (leaving ``p`` valid) instead of NULL."""
    cdef void* q = PyMem_Realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q


cdef int _side_reserve(Side* s, Py_ssize_t blocks) except -1:
    """Make room for ``blocks`` chunks; chunks in use keep their blocks and levels."""
    if blocks <= s.cap:
        return 0
    cdef Py_ssize_t cap = max(blocks, 2 * s.cap)
    cdef Py_ssize_t b
    s.pool = <int64_t*>_realloc(s.pool, cap * _BLOCK * sizeof(int64_t))
    s.lo = <int64_t*>_realloc(s.lo, cap * sizeof(int64_t))
    s.blk = <Py_ssize_t*>_realloc(s.blk, cap * sizeof(Py_ssize_t))
    s.cnt = <Py_ssize_t*>_realloc(s.cnt, cap * sizeof(Py_ssize_t))
    for b in range(s.cap, cap):
        s.blk[b] = b  # the new blocks are free
    s.cap = cap
    return 0


cdef void _side_free(Side* s) noexcept:
    PyMem_Free(s.pool)
    PyMem_Free(s.lo)
    PyMem_Free(s.blk)
    PyMem_Free(s.cnt)
    s.pool = NULL
    s.lo = NULL
    s.blk = NULL
    s.cnt = NULL
    s.m = s.cap = s.n = 0


cdef inline int64_t* _keys(Side* s, Py_ssize_t j) noexcept nogil:
    """Keys of chunk ``j``; its sizes follow ``_CHUNK`` further on."""
    return s.pool + s.blk[j] * _BLOCK


cdef inline int64_t _best(Side* s) noexcept nogil:
    """Best price in ticks, 0 when the side is empty (as of the last ``_refresh_top``)."""
    return s.best


cdef inline int64_t _best_size(Side* s) noexcept nogil:
    return s.best_size


cdef inline void _open_chunk(Side* s, Py_ssize_t j) noexcept nogil:
    """Insert an empty chunk at position ``j`` (needs ``m < cap``)."""
    cdef Py_ssize_t b = s.blk[s.m]
    cdef Py_ssize_t k = s.m - j
    memmove(s.blk + j + 1, s.blk + j, k * sizeof(Py_ssize_t))
    memmove(s.cnt + j + 1, s.cnt + j, k * sizeof(Py_ssize_t))
    memmove(s.lo + j + 1, s.lo + j, k * sizeof(int64_t))
    s.blk[j] = b
    s.cnt[j] = 0
    s.m += 1


cdef inline void _close_chunk(Side* s, Py_ssize_t j) noexcept nogil:
    """Drop chunk ``j`` from the sequence; its block becomes free."""
    cdef Py_ssize_t b = s.blk[j]
    cdef Py_ssize_t k = s.m - j - 1
    memmove(s.blk + j, s.blk + j + 1, k * sizeof(Py_ssize_t))
    memmove(s.cnt + j, s.cnt + j + 1, k * sizeof(Py_ssize_t))
    memmove(s.lo + j, s.lo + j + 1, k * sizeof(int64_t))
    s.m -= 1
    s.blk[s.m] = b


cdef inline void _absorb(Side* s, Py_ssize_t j) noexcept nogil:
    """Move every level of chunk ``j + 1`` to the end of chunk ``j``, then drop it."""
    cdef int64_t* dst = _keys(s, j)
    cdef int64_t* src = _keys(s, j + 1)
    cdef Py_ssize_t c = s.cnt[j]
    cdef Py_ssize_t k = s.cnt[j + 1]
    memcpy(dst + c, src, k * sizeof(int64_t))
    memcpy(dst + _CHUNK + c, src + _CHUNK, k * sizeof(int64_t))
    s.cnt[j] = c + k
    _close_chunk(s, j + 1)


cdef inline int _merge(Side* s, Py_ssize_t j) noexcept nogil:
    """Chunk ``j`` ran low: fold it into a neighbour that has room for it; 1 if done."""
    cdef Py_ssize_t c = s.cnt[j]
    if j > 0 and s.cnt[j - 1] + c <= _MERGED_MAX:
        _absorb(s, j - 1)
        return 1
    if j + 1 < s.m and s.cnt[j + 1] + c <= _MERGED_MAX:
        _absorb(s, j)
        return 1
    return 0


cdef inline Py_ssize_t _lower_bound(const int64_t* keys, Py_ssize_t n, int64_t key) noexcept nogil:
    """First index in ``keys[:n]`` (sorted, ``n >= 1``) whose key is >= ``key``; branch-free."""
    cdef const int64_t* base = keys
    cdef Py_ssize_t half
    while n > 1:
        half = n >> 1
        base = base + half if base[half] < key else base
        n -= half
    return (base - keys) + (base[0] < key)


cdef inline Py_ssize_t _find_chunk(Side* s, int64_t key) noexcept nogil:
    """The chunk whose range holds ``key``: the last with ``lo <= key``, else the first."""
    cdef Py_ssize_t j = s.m - 1
    cdef const int64_t* base
    cdef Py_ssize_t n, half
    # Most updates land in the top chunk or the one below.
    if j == 0 or key >= s.lo[j]:
        return j
    j -= 1
    if j == 0 or key >= s.lo[j]:
        return j
    base = s.lo
    n = j
    while n > 1:
        half = n >> 1
        base = base + half if base[half] <= key else base
        n -= half
    return base - s.lo


cdef inline Py_ssize_t _find_level(Side* s, int64_t key, Py_ssize_t* j_out) noexcept nogil:
    """Chunk (into ``j_out``) and index in it where ``key`` is or would go (``m > 0``)."""
    cdef Py_ssize_t j = _find_chunk(s, key)
    cdef int64_t* keys = _keys(s, j)
    cdef Py_ssize_t c = s.cnt[j]
    cdef Py_ssize_t i
    j_out[0] = j
    if j < s.m - 1:
        return _lower_bound(keys, c, key)
    # Near the best: scan back a few levels, then fall back to a binary search.
    i = c
    while i > 0 and keys[i - 1] >= key:
        i -= 1
        if c - i == _SCAN:
            if i > 0:
                i = _lower_bound(keys, i, key)
            break
    return i


cdef int _split(Side* s, Py_ssize_t j) except -1:
    """Chunk ``j`` is full: move its upper half to a new chunk right above it."""
    cdef int64_t* keys
    cdef int64_t* upper
    if s.m == s.cap:
        _side_reserve(s, s.m + 1)
    _open_chunk(s, j + 1)
    keys = _keys(s, j)
    upper = _keys(s, j + 1)
    memcpy(upper, keys + _HALF, _HALF * sizeof(int64_t))
    memcpy(upper + _CHUNK, keys + _CHUNK + _HALF, _HALF * sizeof(int64_t))
    s.cnt[j] = _HALF
    s.cnt[j + 1] = _HALF
    s.lo[j + 1] = upper[0]
    return 0


cdef int _shrunk(Side* s, Py_ssize_t j, Py_ssize_t i) noexcept nogil:
    """After a delete at index ``i`` of chunk ``j``: keep ``lo`` right, drop an empty
    chunk, merge a small one. 1 if chunks changed."""
    if s.cnt[j] == 0:
        _close_chunk(s, j)
        return 1
    if i == 0:
        s.lo[j] = _keys(s, j)[0]
    if s.cnt[j] < _MERGE:
        return _merge(s, j)
    return 0


cdef inline int _set_at(Side* s, int64_t key, int64_t size, Py_ssize_t j, Py_ssize_t i) except -1:
    """Set the size of ``key``, found by ``_find_level`` at index ``i`` of chunk ``j``
    (or to be inserted there); 0 deletes. Moves levels of that chunk only.

    Returns 1 when chunks were split, merged or dropped (locations found before are
    stale), else 0.
    """
    cdef int64_t* keys = _keys(s, j)
    cdef int64_t* sizes = keys + _CHUNK
    cdef Py_ssize_t c = s.cnt[j]
    cdef int changed = 0
    if i < c and keys[i] == key:
        if size != 0:
            sizes[i] = size
            return 0
        c -= 1
        memmove(keys + i, keys + i + 1, (c - i) * sizeof(int64_t))
        memmove(sizes + i, sizes + i + 1, (c - i) * sizeof(int64_t))
        s.cnt[j] = c
        s.n -= 1
        if i == 0 or c < _MERGE:
            return _shrunk(s, j, i)
        return 0
    if size == 0:
        return 0  # deleting a level that is not there is a no-op, as on every venue
    if c == _CHUNK:
        _split(s, j)
        c = _HALF
        if i > _HALF:
            j += 1
            i -= _HALF
        keys = _keys(s, j)
        sizes = keys + _CHUNK
        changed = 1
    memmove(keys + i + 1, keys + i, (c - i) * sizeof(int64_t))
    memmove(sizes + i + 1, sizes + i, (c - i) * sizeof(int64_t))
    keys[i] = key
    sizes[i] = size
    s.cnt[j] = c + 1
    s.n += 1
    if i == 0:
        s.lo[j] = key
    return changed


cdef int _set_level(Side* s, int64_t price, int64_t size) except -1:
    """Set the absolute size at ``price``; 0 deletes."""
    cdef int64_t key = s.sign * price
    cdef Py_ssize_t j, i
    cdef int64_t* keys
    if s.m > 0:
        i = _find_level(s, key, &j)
        _set_at(s, key, size, j, i)
        return 0
    if size == 0:
        return 0
    _side_reserve(s, 1)
    _open_chunk(s, 0)
    keys = _keys(s, 0)
    keys[0] = key
    keys[_CHUNK] = size
    s.cnt[0] = 1
    s.lo[0] = key
    s.n = 1
    return 0


cdef int _apply_ascending(Side* s, const int64_t* rows, Py_ssize_t lo, Py_ssize_t hi,
                          Py_ssize_t* where) except -1:
    """Apply rows ``[lo, hi)``, whose keys strictly increase, best first.

    Their prices are distinct, so any order sets the same sizes; going from ``hi - 1``
    down lets every row be located before any is applied, as for a best-first run.
    """
    cdef Py_ssize_t r
    while hi > lo:
        if s.m == 0:
            hi -= 1
            _set_level(s, rows[2 * hi], rows[2 * hi + 1])
            continue
        for r in range(hi - 1, lo - 1, -1):
            where[2 * r + 1] = _find_level(s, s.sign * rows[2 * r], &where[2 * r])
        while hi > lo:
            hi -= 1
            if _set_at(s, s.sign * rows[2 * hi], rows[2 * hi + 1], where[2 * hi], where[2 * hi + 1]):
                break
    return 0


cdef int _set_levels(Side* s, const int64_t* rows, Py_ssize_t n, Py_ssize_t* where) except -1:
    """Apply ``n`` (ticks, lots) rows in order, like ``_set_level`` on each.

    Every run of rows whose keys do not increase (a side listed best first, as venues
    send it) is located first, then applied: the searches do not wait on each other,
    and the locations stay right while the run is applied, since each row only moves
    levels at or above the next one's, until a chunk splits, merges or goes, after
    which the rest of the run is located again. A run whose keys strictly increase (a
    side listed worst first) is applied from its end, which is the same thing.
    ``where`` holds ``2 * n`` entries.
    """
    cdef Py_ssize_t k = 0, end
    cdef int64_t key, prev
    while k < n:
        if s.m == 0:
            _set_level(s, rows[2 * k], rows[2 * k + 1])
            k += 1
            continue
        prev = s.sign * rows[2 * k]
        if k + 1 < n and s.sign * rows[2 * k + 2] > prev:
            end = k + 1
            while end < n and s.sign * rows[2 * end] > s.sign * rows[2 * end - 2]:
                end += 1
            _apply_ascending(s, rows, k, end, where)
            k = end
            continue
        end = k
        while end < n:
            key = s.sign * rows[2 * end]
            if key > prev:
                break
            prev = key
            where[2 * end + 1] = _find_level(s, key, &where[2 * end])
            end += 1
        while k < end:
            if _set_at(s, s.sign * rows[2 * k], rows[2 * k + 1], where[2 * k], where[2 * k + 1]):
                k += 1
                break
            k += 1
    return 0


cdef Py_ssize_t _count_levels(const int64_t* rows, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k, m = 0
    for k in range(n):
        m += rows[2 * k + 1] > 0
    return m


cdef inline Py_ssize_t _chunks_for(Py_ssize_t levels) noexcept nogil:
    return (levels + _FILL - 1) // _FILL


cdef void _fill_side(Side* s, const int64_t* rows, Py_ssize_t n) noexcept nogil:
    """Replace a side with ``n`` best-first (ticks, lots) rows, skipping zero sizes.

    The blocks must be reserved (``_chunks_for`` the level count). Levels are spread
    evenly over the chunks, each left with room to insert.
    """
    cdef Py_ssize_t levels = _count_levels(rows, n)
    cdef Py_ssize_t m = _chunks_for(levels)
    cdef Py_ssize_t j = 0, i = 0, quota = 0, k
    cdef int64_t* keys = NULL
    s.m = m
    s.n = levels
    if m == 0:
        return
    for k in range(n - 1, -1, -1):  # worst first
        if rows[2 * k + 1] <= 0:
            continue
        if i == quota:
            if keys != NULL:
                s.cnt[j] = i
                j += 1
            keys = _keys(s, j)
            quota = levels // m + (j < levels % m)
            i = 0
            s.lo[j] = s.sign * rows[2 * k]
        keys[i] = s.sign * rows[2 * k]
        keys[_CHUNK + i] = rows[2 * k + 1]
        i += 1
    s.cnt[j] = i


cdef void _copy_best_first(Side* s, int64_t* prices, int64_t* sizes, Py_ssize_t d) noexcept nogil:
    """Write the best ``d`` levels best first, zero-padded past the last level."""
    cdef Py_ssize_t k = 0, j = s.m - 1, i
    cdef int64_t sign = s.sign
    cdef const int64_t* keys
    if d <= 0:
        return
    while j >= 0:
        keys = _keys(s, j)
        i = s.cnt[j]
        while i > 0:
            i -= 1
            prices[k] = sign * keys[i]
            sizes[k] = keys[_CHUNK + i]
            k += 1
            if k == d:
                return
        j -= 1
    while k < d:
        prices[k] = 0
        sizes[k] = 0
        k += 1


cdef int _audit_side(Side* s, str name) except -1:
    cdef Py_ssize_t j, i, c, total = 0
    cdef int64_t* keys
    seen = set()
    if not (0 <= s.m <= s.cap) or (s.m == 0) != (s.n == 0):
        raise AssertionError(f"{name}: {s.m} chunks of {s.cap} for {s.n} levels")
    for j in range(s.cap):
        seen.add(s.blk[j])
    if seen != set(range(s.cap)):
        raise AssertionError(f"{name}: blocks are not a permutation")
    for j in range(s.m):
        keys = _keys(s, j)
        c = s.cnt[j]
        total += c
        if not (1 <= c <= _CHUNK) or s.lo[j] != keys[0]:
            raise AssertionError(f"{name}: chunk {j} holds {c} levels, lo {s.lo[j]} != {keys[0]}")
        if j > 0 and keys[0] <= _keys(s, j - 1)[s.cnt[j - 1] - 1]:
            raise AssertionError(f"{name}: chunk {j} overlaps the one below")
        for i in range(c):
            if keys[_CHUNK + i] <= 0 or (i > 0 and keys[i] <= keys[i - 1]):
                raise AssertionError(f"{name}: chunk {j} level {i} out of order or empty")
    if total != s.n:
        raise AssertionError(f"{name}: {total} levels in chunks, {s.n} counted")
    if s.best != _best_from_chunks(s):
        raise AssertionError(f"{name}: cached best {s.best} is stale")
    return 0


cdef int64_t _best_from_chunks(Side* s) noexcept:
    return s.sign * _keys(s, s.m - 1)[s.cnt[s.m - 1] - 1] if s.m > 0 else 0


cdef int _cmp_price(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline int64_t _round_units(double x) noexcept nogil:
    """``llround`` for ``0 <= x < 2**63`` without the libm call.

    Below 2**52 ``x + 0.5`` can only round up across an integer when ``x`` is within
    an ulp of a half, which is off the grid either way; from 2**52 on ``x`` is integral.
    """
    if x >= 4503599627370496.0:
        return <int64_t>x
    return <int64_t>(x + 0.5)


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
        self._bids.sign = 1
        self._asks.sign = -1
        _side_reserve(&self._bids, _chunks_for(capacity) + 1)
        _side_reserve(&self._asks, _chunks_for(capacity) + 1)
        self._bid_out = np.zeros((2, capacity), dtype=np.int64)
        self._ask_out = np.zeros((2, capacity), dtype=np.int64)
        self._scratch_arr = np.zeros((64, 2), dtype=np.int64)
        self._where_arr = np.zeros((64, 2), dtype=np.intp)
        self.top = np.zeros((4, depth), dtype=np.int64)

    def __dealloc__(self):
        _side_free(&self._bids)
        _side_free(&self._asks)

    # ------------------------------------------------------------------ storage

    cdef int _ensure_scratch(self, Py_ssize_t rows) except -1:
        if cnp.PyArray_DIM(self._scratch_arr, 0) < rows:
            rows = max(rows, 2 * cnp.PyArray_DIM(self._scratch_arr, 0))
            self._scratch_arr = np.zeros((rows, 2), dtype=np.int64)
            self._where_arr = np.zeros((rows, 2), dtype=np.intp)
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
            ti = _round_units(t)
            li = _round_units(l)
            if (ti <= 0 or fabs(t - <double>ti) > _GRID_TOL_ABS + _GRID_TOL_REL * t
                    or fabs(l - <double>li) > _GRID_TOL_ABS + _GRID_TOL_REL * l):
                return -1
            out[2 * k] = ti
            out[2 * k + 1] = li
        return 0

    cdef void _refresh_top(self, bint bids, bint asks) noexcept:
        """Rewrite the rows of ``top`` (and the cached best) of the sides that changed."""
        cdef int64_t* t = <int64_t*>cnp.PyArray_DATA(self.top)
        cdef Py_ssize_t d = self.depth
        if bids:
            _copy_best_first(&self._bids, t, t + d, d)
            self._bids.best = t[0]
            self._bids.best_size = t[d]
        if asks:
            t += 2 * d
            _copy_best_first(&self._asks, t, t + d, d)
            self._asks.best = t[0]
            self._asks.best_size = t[d]

    cdef void _lost(self) noexcept:
        """Storage ran out part way through a frame: the book needs a snapshot."""
        self.is_valid = False
        self._refresh_top(True, True)

    cdef int _finish(self, bint bids, bint asks) noexcept:
        self._refresh_top(bids, asks)
        if self._bids.n > 0 and self._asks.n > 0 and _best(&self._bids) >= _best(&self._asks):
            self.is_valid = False
            return _CROSSED
        return _OK

    # ------------------------------------------------------------------ frames

    cdef int _frame_units(self, cnp.ndarray bids, cnp.ndarray asks) except -1:
        """Bids then asks into the scratch rows as (ticks, lots).

        1 if any level is invalid: the book is then marked out of sync (a sequenced
        update is lost) and nothing else changes.
        """
        cdef Py_ssize_t nb = cnp.PyArray_DIM(bids, 0)
        cdef Py_ssize_t na = cnp.PyArray_DIM(asks, 0)
        self._ensure_scratch(nb + na)
        cdef int64_t* rows = <int64_t*>cnp.PyArray_DATA(self._scratch_arr)
        if (self._to_units(<double*>cnp.PyArray_DATA(bids), nb, rows) != 0
                or self._to_units(<double*>cnp.PyArray_DATA(asks), na, rows + 2 * nb) != 0):
            self.is_valid = False
            return 1
        return 0

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
        if self._frame_units(bids, asks) != 0:
            return _REJECTED
        cdef int64_t* rows = <int64_t*>cnp.PyArray_DATA(self._scratch_arr)
        # Both sides are sorted and checked, and their storage reserved, before the
        # book is touched.
        if self._check_unique(rows, nb, 1) != 0 or self._check_unique(rows + 2 * nb, na, -1) != 0:
            self.is_valid = False
            return _REJECTED
        _side_reserve(&self._bids, _chunks_for(_count_levels(rows, nb)))
        _side_reserve(&self._asks, _chunks_for(_count_levels(rows + 2 * nb, na)))
        _fill_side(&self._bids, rows, nb)
        _fill_side(&self._asks, rows + 2 * nb, na)
        self.sequence = sequence
        self.is_valid = True
        self._fresh = True
        return self._finish(True, True)

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
        if self._frame_units(bids, asks) != 0:
            return _REJECTED
        cdef int64_t* rows = <int64_t*>cnp.PyArray_DATA(self._scratch_arr)
        cdef Py_ssize_t* where = <Py_ssize_t*>cnp.PyArray_DATA(self._where_arr)
        try:
            _set_levels(&self._bids, rows, nb, where)
            _set_levels(&self._asks, rows + 2 * nb, na, where)
        except MemoryError:
            self._lost()
            raise
        self.sequence = sequence
        self._fresh = False
        return self._finish(nb > 0, na > 0)

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
        try:
            _set_level(&self._bids if is_bid else &self._asks, units[0], units[1])
        except MemoryError:
            self._lost()
            raise
        self.sequence = sequence
        self._fresh = False
        return self._finish(is_bid, not is_bid)

    def invalidate(self):
        """Mark the book out of sync (for example when the feed drops); keeps its levels."""
        self.is_valid = False

    def clear(self):
        """Remove every level and forget the sequence."""
        self._bids.m = self._bids.n = 0
        self._asks.m = self._asks.n = 0
        self.sequence = -1
        self.is_valid = False
        self._fresh = False
        self._refresh_top(True, True)

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
        return _best_size(&self._bids)

    @property
    def best_ask_size(self):
        return _best_size(&self._asks)

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
        cdef double bs = <double>_best_size(&self._bids)
        cdef double as_ = <double>_best_size(&self._asks)
        return (b * as_ + a * bs) / (bs + as_)

    def bids(self, n=None):
        """(prices, sizes) of the best ``n`` bids (all by default), best first.

        The levels are copied, best first, into a buffer the book owns and returned as
        views of it (the chunked storage has no best-first run to view directly): valid
        until the next applied frame or the next ``bids`` call, which rewrites them.
        Writing into them does not change the book.
        """
        return self._export(&self._bids, True, n)

    def asks(self, n=None):
        """(prices, sizes) of the best ``n`` asks (all by default), best first.

        Copied into a buffer the book owns, as for ``bids``: valid until the next
        applied frame or the next ``asks`` call.
        """
        return self._export(&self._asks, False, n)

    cdef tuple _export(self, Side* side, bint is_bid, object n):
        cdef Py_ssize_t k = side.n if n is None else min(max(<Py_ssize_t>n, 0), side.n)
        cdef cnp.ndarray out = self._bid_out if is_bid else self._ask_out
        cdef Py_ssize_t cap = cnp.PyArray_DIM(out, 1)
        if cap < k:
            cap = max(k, 2 * cap)
            out = np.zeros((2, cap), dtype=np.int64)
            if is_bid:
                self._bid_out = out
            else:
                self._ask_out = out
        cdef int64_t* data = <int64_t*>cnp.PyArray_DATA(out)
        _copy_best_first(side, data, data + cap, k)
        return out[0, :k], out[1, :k]

    def _audit(self):
        """Check the storage invariants of both sides; raise ``AssertionError`` if broken.

        For tests: walks every level, so it is not for the hot path.
        """
        _audit_side(&self._bids, "bids")
        _audit_side(&self._asks, "asks")

    def price(self, int64_t ticks):
        """A tick count as a price."""
        return ticks * self.tick_size

    def __repr__(self):
        return (f"OrderBook(tick_size={self.tick_size}, lot_size={self.lot_size}, "
                f"sequence={self.sequence}, valid={bool(self.is_valid)}, "
                f"bids={self._bids.n}, asks={self._asks.n}, "
                f"best={_best(&self._bids)}/{_best(&self._asks)})")
