"""Scanners for the venue's text: level lists, RFC 3339 timestamps, and whole frames
of one book update or trade in one pass.

Level lists ``[["price","size"], ...]`` go straight into float64 rows.

The venue sends each side of a book update as a JSON array of ``[price, size]``
decimal strings, itself inside a JSON string. Going through ``json.loads`` and a
Python ``float()`` per level costs microseconds; this parser reads the characters
once and writes doubles into a caller-owned buffer.

Decimals with at most 15 significant digits are converted exactly
(``mantissa / 10**scale`` with both operands exact, hence correctly rounded);
anything longer or with an exponent goes through ``strtod``. ``nan``, ``inf``,
hex floats, a negative size and a non-positive price are errors.
"""

cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII
from libc.math cimport isfinite, llround
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport strtod
from libc.string cimport memcmp

cnp.import_array()

cdef enum:
    MAX_TOKEN = 63

cdef double[23] _POW10 = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
]


class LevelsFormatError(ValueError):
    """A level list is not a JSON array of ``[price, size]`` decimals."""


cdef inline Py_ssize_t _skip_ws(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (s[i] == c' ' or s[i] == c'\t' or s[i] == c'\n' or s[i] == c'\r'):
        i += 1
    return i


cdef inline Py_ssize_t _digit_run(const char* s, Py_ssize_t i, Py_ssize_t n,
                                  uint64_t* mant) noexcept nogil:
    """Accumulate the digits at ``s[i]`` into ``mant``; return the index after them."""
    cdef unsigned int d
    cdef uint64_t m = mant[0]
    while i < n:
        d = <unsigned char>s[i] - 48  # '0'
        if d > 9:
            break
        m = m * 10 + d
        i += 1
    mant[0] = m
    return i


cdef inline Py_ssize_t _quote(const char* s, Py_ssize_t i, Py_ssize_t n, bint esc) noexcept nogil:
    """The length of the quote token at ``s[i]`` (``"``, or ``\\"`` inside a JSON string), or 0."""
    if esc:
        return 2 if i + 1 < n and s[i] == c'\\' and s[i + 1] == c'"' else 0
    return 1 if i < n and s[i] == c'"' else 0


cdef Py_ssize_t _number(const char* s, Py_ssize_t i, Py_ssize_t n, double* out,
                        bint esc) noexcept nogil:
    """Parse one (optionally quoted) decimal at ``s[i]``; return the index after it, or -1.

    The common case (at most 19 digits, no exponent) is one pass over the digits; the
    value is exact when the mantissa fits 53 bits, otherwise ``strtod`` decides.
    ``esc``: the text is the inside of a JSON string, where quotes are ``\\"``.
    """
    cdef bint quoted = False
    cdef bint neg = False
    cdef bint slow = False
    cdef uint64_t mant = 0
    cdef Py_ssize_t start, int_start, int_end, k
    cdef Py_ssize_t frac_start = 0
    cdef Py_ssize_t frac_end = -1
    cdef Py_ssize_t scale, ndigits
    cdef char[MAX_TOKEN + 1] buf
    cdef char* end
    cdef Py_ssize_t q = _quote(s, i, n, esc)
    if q:
        quoted = True
        i += q
    start = i
    if i < n and s[i] == c'-':
        neg = True
        i += 1
    int_start = i
    i = _digit_run(s, i, n, &mant)
    int_end = i
    if i < n and s[i] == c'.':
        i += 1
        frac_start = i
        i = _digit_run(s, i, n, &mant)
        frac_end = i
        if frac_end == frac_start and int_end == int_start:
            return -1  # a lone "."
    elif int_end == int_start:
        return -1  # no digits at all
    if i < n and (s[i] == c'e' or s[i] == c'E'):
        slow = True
        i += 1
        if i < n and (s[i] == c'+' or s[i] == c'-'):
            i += 1
        if i >= n or not (c'0' <= s[i] <= c'9'):
            return -1
        while i < n and c'0' <= s[i] <= c'9':
            i += 1
    scale = frac_end - frac_start if frac_end >= 0 else 0
    ndigits = (int_end - int_start) + scale
    if slow or ndigits > 19 or scale > 22 or mant > 9007199254740992ULL:
        if i - start > MAX_TOKEN:
            return -1
        for k in range(i - start):
            buf[k] = s[start + k]
        buf[i - start] = 0
        out[0] = strtod(buf, &end)
        if end != buf + (i - start):
            return -1
    else:
        out[0] = <double>mant / _POW10[scale]
        if neg:
            out[0] = -out[0]
    if quoted:
        q = _quote(s, i, n, esc)
        if not q:
            return -1
        i += q
    return i


cdef Py_ssize_t _parse(const char* s, Py_ssize_t n, double* out, Py_ssize_t cap,
                       Py_ssize_t* err_pos, bint esc) noexcept nogil:
    """Fill ``out`` with (price, size) pairs; return the count, or a negative error code."""
    cdef Py_ssize_t i = _skip_ws(s, 0, n)
    cdef Py_ssize_t count = 0
    cdef double px, sz
    if i >= n or s[i] != c'[':
        err_pos[0] = i
        return -1
    i = _skip_ws(s, i + 1, n)
    if i < n and s[i] == c']':
        i = _skip_ws(s, i + 1, n)
        err_pos[0] = i
        return 0 if i == n else -1
    while True:
        if i >= n or s[i] != c'[':
            err_pos[0] = i
            return -1
        i = _number(s, _skip_ws(s, i + 1, n), n, &px, esc)
        if i < 0:
            return -1
        i = _skip_ws(s, i, n)
        if i >= n or s[i] != c',':
            err_pos[0] = i
            return -1
        i = _number(s, _skip_ws(s, i + 1, n), n, &sz, esc)
        if i < 0:
            return -1
        i = _skip_ws(s, i, n)
        if i >= n or s[i] != c']':
            err_pos[0] = i
            return -1
        if not (isfinite(px) and isfinite(sz)) or px <= 0.0 or sz < 0.0:
            err_pos[0] = i
            return -2
        if count >= cap:
            return -3
        out[2 * count] = px
        out[2 * count + 1] = sz
        count += 1
        i = _skip_ws(s, i + 1, n)
        if i < n and s[i] == c',':
            i = _skip_ws(s, i + 1, n)
            continue
        if i < n and s[i] == c']':
            i = _skip_ws(s, i + 1, n)
            if i != n:
                err_pos[0] = i
                return -1
            return count
        err_pos[0] = i
        return -1


cdef inline Py_ssize_t _plain_decimal(const char* s, Py_ssize_t i, Py_ssize_t n,
                                     double* out) noexcept nogil:
    """``digits[.digits]`` at ``s[i]`` with at most 15 significant digits; the index
    after it, or -1 for anything else (left to ``_number``)."""
    cdef uint64_t m = 0
    cdef unsigned int d
    cdef Py_ssize_t start = i
    cdef Py_ssize_t dot = -1
    cdef Py_ssize_t digits
    # One loop over digits and the point: a single exit to mispredict per number.
    while i < n:
        d = <unsigned char>s[i] - 48  # '0'
        if d <= 9:
            m = m * 10 + d
        elif s[i] == c'.' and dot < 0:
            dot = i
        else:
            break
        i += 1
    digits = i - start - (dot >= 0)
    if digits == 0 or digits > 15:
        return -1
    out[0] = <double>m / _POW10[i - dot - 1 if dot >= 0 else 0]
    return i


cdef Py_ssize_t _parse_plain_at(const char* s, Py_ssize_t n, double* out, Py_ssize_t cap,
                                bint esc, Py_ssize_t* stop) noexcept nogil:
    """The compact form ``[["p","s"],...]`` (no blanks, plain decimals) at the start of
    ``s[:n]``, in one tight loop, which is what venues send; the index after its closing
    ``]`` goes to ``stop``. -1 for anything else, left to ``_parse``.

    Each value is exact (at most 15 digits: mantissa and power of ten are exact
    doubles, so the quotient is correctly rounded).
    """
    cdef Py_ssize_t i = 1
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t q = 2 if esc else 1  # the quote: \" inside a JSON string
    cdef double px, sz
    if n < 2 or s[0] != c'[':
        return -1
    if s[1] == c']':
        stop[0] = 2
        return 0
    while True:
        # [\"price\",\"size\"]
        if i + 1 + q >= n or s[i] != c'[' or s[i + q] != c'"' or (esc and s[i + 1] != c'\\'):
            return -1
        i = _plain_decimal(s, i + 1 + q, n, &px)
        if i < 0 or i + 2 * q + 1 >= n or s[i + q - 1] != c'"' or s[i + q] != c',':
            return -1
        if esc and (s[i] != c'\\' or s[i + 2 + 1] != c'\\'):
            return -1
        if s[i + 2 * q] != c'"':
            return -1
        i = _plain_decimal(s, i + 1 + 2 * q, n, &sz)
        if i < 0 or i + q >= n or s[i + q - 1] != c'"' or s[i + q] != c']':
            return -1
        if esc and s[i] != c'\\':
            return -1
        if not px > 0.0 or count >= cap:
            return -1
        out[2 * count] = px
        out[2 * count + 1] = sz
        count += 1
        i += q + 1
        if i < n and s[i] == c',':
            i += 1
            continue
        if i < n and s[i] == c']':
            stop[0] = i + 1
            return count
        return -1


cdef inline Py_ssize_t _parse_plain(const char* s, Py_ssize_t n, double* out, Py_ssize_t cap,
                                    bint esc) noexcept nogil:
    """``_parse_plain_at`` over exactly ``s[:n]``."""
    cdef Py_ssize_t stop = -1
    cdef Py_ssize_t count = _parse_plain_at(s, n, out, cap, esc, &stop)
    return count if stop == n else -1


cdef inline bint _is_rows(cnp.ndarray a) noexcept:
    """``a`` is a C-contiguous float64 ``(n, 2)`` array."""
    return (cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(a) == 2
            and cnp.PyArray_DIM(a, 1) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef double* _rows_from(cnp.ndarray out, Py_ssize_t offset, Py_ssize_t* cap) except NULL:
    """Row ``offset`` of a level buffer, and the rows free from there (into ``cap``)."""
    if not _is_rows(out):
        raise TypeError("out must be a C-contiguous float64 array of shape (cap, 2)")
    cap[0] = cnp.PyArray_DIM(out, 0) - offset
    if offset < 0 or cap[0] < 0:
        raise ValueError("offset outside the buffer")
    return <double*>cnp.PyArray_DATA(out) + 2 * offset


def max_levels(str text):
    """An upper bound on the levels ``text`` can hold (each needs at least 5 characters)."""
    return len(text) // 5 + 1


def parse_levels(str text, cnp.ndarray out, Py_ssize_t offset=0):
    """Parse ``text`` into rows ``out[offset:offset+k]`` of a float64 ``(cap, 2)`` array.

    Returns ``k``. Raises :class:`LevelsFormatError` on malformed text, a non-finite
    number, a non-positive price or a negative size, and :class:`ValueError` when
    ``out`` has fewer than ``k`` free rows (size it with :func:`max_levels`).
    """
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t err_pos = -1
    cdef const char* s = PyUnicode_AsUTF8AndSize(text, &n)
    cdef Py_ssize_t cap
    cdef double* base = _rows_from(out, offset, &cap)
    cdef Py_ssize_t count
    with nogil:
        count = _parse(s, n, base, cap, &err_pos, False)
    if count >= 0:
        return count
    if count == -2:
        raise LevelsFormatError(
            f"invalid level ending at offset {err_pos}: "
            "price must be > 0 and size >= 0, both finite"
        )
    if count == -3:
        raise ValueError("level buffer too small; size it with max_levels()")
    where = f" at offset {err_pos}" if err_pos >= 0 else ""
    raise LevelsFormatError(f"malformed level list{where}: expected [[price, size], ...]")


def parse_levels_json(object raw, cnp.ndarray out, Py_ssize_t offset=0):
    """:func:`parse_levels` over the JSON string token itself (``msgspec.Raw``, bytes).

    The venue nests the level list in a JSON string; reading the token in place, with
    its ``\\"`` quotes, saves the decoder unescaping it into a new ``str``. Returns the
    row count, or -1 when the token is not the plain form (not a string, another
    escape, malformed, a bad value, or ``out`` too small): the caller then takes the
    careful path over the decoded string, which raises the precise error.
    """
    cdef Py_buffer view
    cdef Py_ssize_t err_pos = -1
    cdef Py_ssize_t count = -1
    cdef Py_ssize_t cap
    cdef double* base = _rows_from(out, offset, &cap)
    PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
    cdef const char* s = <const char*>view.buf
    cdef Py_ssize_t n = view.len
    try:
        if n >= 2 and s[0] == c'"' and s[n - 1] == c'"':
            with nogil:
                count = _parse_plain(s + 1, n - 2, base, cap, True)
                if count < 0:
                    count = _parse(s + 1, n - 2, base, cap, &err_pos, True)
    finally:
        PyBuffer_Release(&view)
    return count if count >= 0 else -1


# ---------------------------------------------------------------- timestamps

cdef inline int _digits(const char* s, Py_ssize_t i, int count) noexcept nogil:
    cdef int v = 0
    cdef int k
    for k in range(count):
        if not (c'0' <= s[i + k] <= c'9'):
            return -1
        v = v * 10 + (s[i + k] - c'0')
    return v


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    # Howard Hinnant's algorithm: days since 1970-01-01 in the proleptic Gregorian calendar.
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int[13] _MONTH_DAYS = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


cdef enum:
    # _rfc3339 results
    _TS_OK = 0
    _TS_FORM = 1
    _TS_RANGE = 2
    _TS_YEARS = 3
    _TS_LEAP = 4
    _TS_FRAC_LONG = 5
    _TS_FRAC_EMPTY = 6
    _TS_OFFSET = 7
    _TS_ZONE = 8
    _TS_TRAILING = 9


cdef int _rfc3339(const char* s, Py_ssize_t n, int64_t* out) noexcept nogil:
    """``parse_rfc3339_ns`` on ``s[:n]``: ``_TS_OK`` and the value in ``out``, or why not."""
    cdef int year, month, day, hour, minute, second, oh, om
    cdef int64_t frac = 0
    cdef int fdigits = 0
    cdef Py_ssize_t i = 19
    cdef int64_t offset = 0
    if n < 20 or s[4] != c'-' or s[7] != c'-' or s[13] != c':' or s[16] != c':' or not (
            s[10] == c'T' or s[10] == c't' or s[10] == c' '):
        return _TS_FORM
    year = _digits(s, 0, 4)
    month = _digits(s, 5, 2)
    day = _digits(s, 8, 2)
    hour = _digits(s, 11, 2)
    minute = _digits(s, 14, 2)
    second = _digits(s, 17, 2)
    if year < 0 or month < 0 or day < 0 or hour < 0 or minute < 0 or second < 0:
        return _TS_FORM
    if not (1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month] and hour <= 23
            and minute <= 59 and second <= 59):
        return _TS_RANGE
    if year < 1678 or year > 2261:
        # int64 nanoseconds since 1970 span 1677-09-21 .. 2262-04-11
        return _TS_YEARS
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return _TS_LEAP
    if s[i] == c'.':
        i += 1
        while i < n and c'0' <= s[i] <= c'9':
            if fdigits == 9:
                return _TS_FRAC_LONG
            frac = frac * 10 + (s[i] - c'0')
            fdigits += 1
            i += 1
        if fdigits == 0:
            return _TS_FRAC_EMPTY
        while fdigits < 9:
            frac *= 10
            fdigits += 1
    if i < n and (s[i] == c'Z' or s[i] == c'z'):
        i += 1
    elif i + 6 == n and (s[i] == c'+' or s[i] == c'-') and s[i + 3] == c':':
        oh = _digits(s, i + 1, 2)
        om = _digits(s, i + 4, 2)
        if oh < 0 or om < 0 or oh > 23 or om > 59:
            return _TS_OFFSET
        offset = (oh * 3600 + om * 60) * (1 if s[i] == c'+' else -1)
        i += 6
    else:
        return _TS_ZONE
    if i != n:
        return _TS_TRAILING
    out[0] = ((_days_from_civil(year, month, day) * 86400
               + hour * 3600 + minute * 60 + second - offset) * 1_000_000_000 + frac)
    return _TS_OK


_TS_PROBLEMS = {
    _TS_FORM: "not an RFC 3339 timestamp: {!r}",
    _TS_RANGE: "date or time out of range in timestamp {!r}",
    _TS_YEARS: "timestamp outside years 1678-2261 (int64 ns): {!r}",
    _TS_LEAP: "date out of range in timestamp {!r}",
    _TS_FRAC_LONG: "more than 9 fraction digits in timestamp {!r}",
    _TS_FRAC_EMPTY: "empty fraction in timestamp {!r}",
    _TS_OFFSET: "bad UTC offset in timestamp {!r}",
    _TS_ZONE: "timestamp needs a Z or +HH:MM offset: {!r}",
    _TS_TRAILING: "trailing characters in timestamp {!r}",
}


def parse_rfc3339_ns(str text):
    """``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` as integer ns since the epoch.

    Up to 9 fraction digits; ``t``/``z`` in lower case and a space separator are accepted.
    Years 1678-2261 only (the int64 nanosecond range, with whole years).
    Raises ``ValueError`` naming the problem otherwise.
    """
    cdef Py_ssize_t n = 0
    cdef const char* s = PyUnicode_AsUTF8AndSize(text, &n)
    cdef int64_t ns = 0
    cdef int problem = _rfc3339(s, n, &ns)
    if problem != _TS_OK:
        raise ValueError(_TS_PROBLEMS[problem].format(text[:40]))
    return ns


# ---------------------------------------------------------------- level lists out

cdef Py_ssize_t _put_fixed(char* buf, Py_ssize_t j, int64_t v, int dp) noexcept nogil:
    """Write ``v / 10**dp`` (``v >= 0``) as a plain decimal with ``dp`` fraction digits."""
    cdef char[24] tmp
    cdef int k = 0
    cdef int i
    while True:
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        k += 1
        if v == 0 and k > dp:
            break
    for i in range(k - 1, -1, -1):
        if i == dp - 1:
            buf[j] = c'.'
            j += 1
        buf[j] = tmp[i]
        j += 1
    return j


cdef int _scaled(double x, int dp, int64_t* out) noexcept nogil:
    cdef double y
    if not isfinite(x):
        return -1
    y = x * _POW10[dp]
    if y >= 9007199254740992.0 or y <= -9007199254740992.0:  # 2**53: no longer exact
        return -2
    out[0] = llround(y)
    return 0


def format_levels_fixed(cnp.ndarray rows, int price_decimals, int size_decimals):
    """``(n, 2)`` float64 ``[price, size]`` rows as ``[["0.4501","100"],...]``.

    Each value is rounded to its number of decimals (0 to 18). Raises ``ValueError``
    for a non-finite value, a price that rounds to <= 0, a negative size, or a value
    too large to round exactly (``|x| * 10**decimals >= 2**53``).
    """
    if not _is_rows(rows):
        raise TypeError("rows must be a C-contiguous float64 array of shape (n, 2)")
    if not (0 <= price_decimals <= 18 and 0 <= size_decimals <= 18):
        raise ValueError("decimals must be in [0, 18]")
    cdef Py_ssize_t n = cnp.PyArray_DIM(rows, 0)
    cdef const double* r = <const double*>cnp.PyArray_DATA(rows)
    # 2 x (19 digits + point + sign room) + 9 punctuation characters per row
    cdef bytearray out = bytearray(2 + n * 56)
    cdef char* buf = out
    cdef Py_ssize_t j = 0
    cdef Py_ssize_t i
    cdef int64_t p, s
    cdef int bad = 0
    with nogil:
        buf[j] = c'['
        j += 1
        for i in range(n):
            if _scaled(r[2 * i], price_decimals, &p) != 0 or p <= 0:
                bad = 1
                break
            if _scaled(r[2 * i + 1], size_decimals, &s) != 0 or s < 0:
                bad = 2
                break
            if i:
                buf[j] = c','
                j += 1
            buf[j] = c'['
            buf[j + 1] = c'"'
            j = _put_fixed(buf, j + 2, p, price_decimals)
            buf[j] = c'"'
            buf[j + 1] = c','
            buf[j + 2] = c'"'
            j = _put_fixed(buf, j + 3, s, size_decimals)
            buf[j] = c'"'
            buf[j + 1] = c']'
            j += 2
        buf[j] = c']'
        j += 1
    if bad:
        what = "price" if bad == 1 else "size"
        raise ValueError(
            f"row {i}: {what} {r[2 * i + bad - 1]!r} is not finite, out of range "
            f"or rounds to an invalid value with {price_decimals if bad == 1 else size_decimals} "
            "decimals"
        )
    return PyUnicode_DecodeASCII(buf, j, NULL)


# ---------------------------------------------------------------- one-event frames
#
# The frames a market maker reads most: one OrderBookUpdate (the largest) or one Trade
# (the most frequent) in the specification's form. A general JSON decoder scans every
# level string once to find its end and the level parser reads it again; here one pass
# reads the envelope and parses the levels where they lie, and the envelope's structs
# are never built. Only a strict subset of JSON is taken, so that whatever is taken is
# valid JSON with one reading: keys once each and all known, strings of printable ASCII
# without escapes, level lists in the compact form, integers of at most 18 digits. For
# anything else the reader answers None and the general decoder decides, with its
# precise errors: this is a shortcut, never a second judge of the frame.

cdef enum:
    _MAX_INT_DIGITS = 18  # any such integer fits int64
    # what a frame's one event is
    _EV_BOOK = 1
    _EV_TRADE = 2
    # attributes seen, one bit each
    _A_BIDS = 1
    _A_ASKS = 2
    _A_MARKET = 4
    _A_TIMESTAMP = 8
    _A_SEQUENCE = 16
    _A_KIND = 32
    _A_PRICE = 64
    _A_SIZE = 128
    _A_SIDE = 256
    _A_TRADE_ID = 512
    _BOOK_NEEDS = _A_BIDS | _A_ASKS | _A_MARKET | _A_TIMESTAMP | _A_SEQUENCE
    _BOOK_TAKES = _BOOK_NEEDS | _A_KIND
    _TRADE_NEEDS = _A_MARKET | _A_TIMESTAMP | _A_PRICE | _A_SIZE | _A_SIDE | _A_TRADE_ID


cdef struct _Frame:
    int id_kind  # 0 null or absent, 1 integer, 2 string
    int64_t id_int
    Py_ssize_t id_at, id_end  # string contents: [at, end)
    Py_ssize_t query_at, query_end
    int event  # _EV_BOOK or _EV_TRADE
    int seen  # _A_* bits
    Py_ssize_t market_at, market_end
    int64_t timestamp_ns
    # a book update
    int64_t sequence
    int kind  # 0 absent, 1 snapshot, 2 delta
    Py_ssize_t bids_at, bids_end, asks_at, asks_end  # rows of the level buffer
    Py_ssize_t used  # rows written so far
    # a trade
    double price, size
    int side
    int trade_id_kind  # 1 integer, 2 string
    int64_t trade_id_int
    Py_ssize_t trade_id_at, trade_id_end


cdef inline Py_ssize_t _plain_str(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """``s[i]`` opens a string of printable ASCII without escapes: the index after its
    closing quote, else -1."""
    cdef unsigned char c
    if i >= n or s[i] != c'"':
        return -1
    i += 1
    while i < n:
        c = <unsigned char>s[i]
        if c == 34:  # "
            return i + 1
        if c == 92 or c < 32 or c >= 127:  # \, control, DEL and non-ASCII
            return -1
        i += 1
    return -1


cdef inline bint _is(const char* s, Py_ssize_t at, Py_ssize_t end, const char* word,
                     Py_ssize_t k) noexcept nogil:
    return end - at == k and memcmp(s + at, word, k) == 0


cdef inline Py_ssize_t _key(const char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* at,
                            Py_ssize_t* end) noexcept nogil:
    """A member's key and colon at ``s[i]``: the index of its value, else -1."""
    cdef Py_ssize_t j = _plain_str(s, i, n)
    if j < 0:
        return -1
    at[0] = i + 1
    end[0] = j - 1
    j = _skip_ws(s, j, n)
    if j >= n or s[j] != c':':
        return -1
    return _skip_ws(s, j + 1, n)


cdef inline Py_ssize_t _open(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """A non-empty object opens at ``s[i]``: the index of its first key, else -1."""
    if i >= n or s[i] != c'{':
        return -1
    i = _skip_ws(s, i + 1, n)
    return i if i < n and s[i] == c'"' else -1


cdef inline Py_ssize_t _after_member(const char* s, Py_ssize_t i, Py_ssize_t n,
                                     bint* more) noexcept nogil:
    """After a member's value: past a comma (``more``) or the object's closing brace."""
    i = _skip_ws(s, i, n)
    if i < n and s[i] == c',':
        more[0] = True
        return _skip_ws(s, i + 1, n)
    if i < n and s[i] == c'}':
        more[0] = False
        return i + 1
    return -1


cdef inline Py_ssize_t _integer(const char* s, Py_ssize_t i, Py_ssize_t n, bint signed,
                                int64_t* out) noexcept nogil:
    """A JSON integer of at most 18 digits at ``s[i]``: the index after it, else -1."""
    cdef bint neg = signed and i < n and s[i] == c'-'
    cdef Py_ssize_t start
    cdef uint64_t v = 0
    if neg:
        i += 1
    start = i
    i = _digit_run(s, i, n, &v)
    if i == start or i - start > _MAX_INT_DIGITS or (s[start] == c'0' and i - start > 1):
        return -1
    out[0] = -<int64_t>v if neg else <int64_t>v
    return i


cdef Py_ssize_t _levels_at(const char* s, Py_ssize_t i, Py_ssize_t n, double* rows,
                           Py_ssize_t cap, _Frame* f, Py_ssize_t* at,
                           Py_ssize_t* end) noexcept nogil:
    """A level list string at ``s[i]`` into rows from ``f.used`` on."""
    cdef Py_ssize_t stop = -1
    cdef Py_ssize_t count
    if i >= n or s[i] != c'"':
        return -1
    count = _parse_plain_at(s + i + 1, n - i - 1, rows + 2 * f.used, cap - f.used, True, &stop)
    i += 1 + stop
    if count < 0 or i >= n or s[i] != c'"':
        return -1
    at[0] = f.used
    end[0] = f.used = f.used + count
    return i + 1


cdef Py_ssize_t _positive_decimal(const char* s, Py_ssize_t i, Py_ssize_t n,
                                  double* out) noexcept nogil:
    """A string holding a plain decimal > 0 at ``s[i]`` (as the levels' numbers)."""
    cdef Py_ssize_t j = _plain_str(s, i, n)
    if j < 0 or _plain_decimal(s, i + 1, j - 1, out) != j - 1 or not out[0] > 0.0:
        return -1
    return j


ctypedef Py_ssize_t (*_MemberValue)(const char* s, Py_ssize_t i, Py_ssize_t n,
                                    Py_ssize_t at, Py_ssize_t end, double* rows,
                                    Py_ssize_t cap, _Frame* f, int* bit) noexcept nogil


cdef inline Py_ssize_t _object(const char* s, Py_ssize_t i, Py_ssize_t n, double* rows,
                               Py_ssize_t cap, _Frame* f, _MemberValue value,
                               int* seen) noexcept nogil:
    """A non-empty object at ``s[i]`` whose members ``value`` reads (key ``s[at:end]``,
    value at ``s[i]``), each key at most once (``seen`` gets their bits): the index
    after it, else -1."""
    cdef Py_ssize_t at, end, j
    cdef int bit = 0
    cdef bint more = True
    i = _open(s, i, n)
    while more and i >= 0:
        i = _key(s, i, n, &at, &end)
        if i < 0:
            return -1
        j = value(s, i, n, at, end, rows, cap, f, &bit)
        if j < 0 or seen[0] & bit:
            return -1
        seen[0] |= bit
        i = _after_member(s, j, n, &more)
    return i


cdef Py_ssize_t _attribute(const char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t at,
                           Py_ssize_t end, double* rows, Py_ssize_t cap, _Frame* f,
                           int* bit) noexcept nogil:
    """An attribute of either event type into ``f``."""
    cdef Py_ssize_t j
    cdef uint64_t digits
    if _is(s, at, end, "bids", 4):
        bit[0] = _A_BIDS
        return _levels_at(s, i, n, rows, cap, f, &f.bids_at, &f.bids_end)
    if _is(s, at, end, "asks", 4):
        bit[0] = _A_ASKS
        return _levels_at(s, i, n, rows, cap, f, &f.asks_at, &f.asks_end)
    if _is(s, at, end, "market_id", 9):
        bit[0] = _A_MARKET
        j = _plain_str(s, i, n)
        if j - i == 2:  # an empty market id is the general decoder's error
            return -1
        f.market_at = i + 1
        f.market_end = j - 1
        return j
    if _is(s, at, end, "timestamp", 9):
        bit[0] = _A_TIMESTAMP
        j = _plain_str(s, i, n)
        if j < 0 or _rfc3339(s + i + 1, j - i - 2, &f.timestamp_ns) != _TS_OK:
            return -1
        return j
    if _is(s, at, end, "sequence", 8):
        bit[0] = _A_SEQUENCE
        if not (i < n and s[i] == c'"'):
            return _integer(s, i, n, False, &f.sequence)
        # a string of digits, as the venue sends it; leading zeros are fine there
        j = _plain_str(s, i, n)
        if j < 0 or not 1 <= j - i - 2 <= _MAX_INT_DIGITS:
            return -1
        digits = 0
        if _digit_run(s, i + 1, n, &digits) != j - 1:
            return -1
        f.sequence = <int64_t>digits
        return j
    if _is(s, at, end, "kind", 4):
        bit[0] = _A_KIND
        j = _plain_str(s, i, n)
        if j > 0 and _is(s, i + 1, j - 1, "delta", 5):
            f.kind = 2
        elif j > 0 and _is(s, i + 1, j - 1, "snapshot", 8):
            f.kind = 1
        else:
            return -1
        return j
    if _is(s, at, end, "price", 5):
        bit[0] = _A_PRICE
        return _positive_decimal(s, i, n, &f.price)
    if _is(s, at, end, "size", 4):
        bit[0] = _A_SIZE
        return _positive_decimal(s, i, n, &f.size)
    if _is(s, at, end, "side", 4):
        bit[0] = _A_SIDE
        j = _plain_str(s, i, n)
        if j > 0 and _is(s, i + 1, j - 1, "buy", 3):
            f.side = 1
        elif j > 0 and _is(s, i + 1, j - 1, "sell", 4):
            f.side = -1
        else:
            return -1
        return j
    if _is(s, at, end, "trade_id", 8):
        bit[0] = _A_TRADE_ID
        if not (i < n and s[i] == c'"'):
            f.trade_id_kind = 1
            return _integer(s, i, n, True, &f.trade_id_int)
        j = _plain_str(s, i, n)
        if j - i == 2:  # empty: the general decoder's error
            return -1
        f.trade_id_kind = 2
        f.trade_id_at = i + 1
        f.trade_id_end = j - 1
        return j
    return -1


cdef Py_ssize_t _event_member(const char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t at,
                              Py_ssize_t end, double* rows, Py_ssize_t cap, _Frame* f,
                              int* bit) noexcept nogil:
    cdef Py_ssize_t j
    if _is(s, at, end, "type", 4):
        bit[0] = 1
        j = _plain_str(s, i, n)
        if j > 0 and _is(s, i + 1, j - 1, "OrderBookUpdate", 15):
            f.event = _EV_BOOK
        elif j > 0 and _is(s, i + 1, j - 1, "Trade", 5):
            f.event = _EV_TRADE
        else:
            return -1
        return j
    if _is(s, at, end, "attributes", 10):
        bit[0] = 2
        return _object(s, i, n, rows, cap, f, _attribute, &f.seen)
    return -1


cdef Py_ssize_t _event(const char* s, Py_ssize_t i, Py_ssize_t n, double* rows,
                       Py_ssize_t cap, _Frame* f) noexcept nogil:
    cdef int seen = 0
    cdef bint ok
    i = _object(s, i, n, rows, cap, f, _event_member, &seen)
    if i < 0 or seen != 3:
        return -1
    # Attributes of the other type are ignored by the general decoder, not refused:
    # none may appear here, so that taking the frame never hides one.
    if f.event == _EV_BOOK:
        ok = (f.seen & _BOOK_NEEDS) == _BOOK_NEEDS and (f.seen & ~_BOOK_TAKES) == 0
    else:
        ok = f.seen == _TRADE_NEEDS
    return i if ok else -1


cdef Py_ssize_t _result_member(const char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t at,
                               Py_ssize_t end, double* rows, Py_ssize_t cap, _Frame* f,
                               int* bit) noexcept nogil:
    cdef Py_ssize_t j
    if _is(s, at, end, "events", 6):
        bit[0] = 1
        # exactly one event: [ event ]
        if i >= n or s[i] != c'[':
            return -1
        j = _event(s, _skip_ws(s, i + 1, n), n, rows, cap, f)
        if j < 0:
            return -1
        j = _skip_ws(s, j, n)
        return j + 1 if j < n and s[j] == c']' else -1
    if _is(s, at, end, "query", 5):
        bit[0] = 2
        f.query_at = i + 1
        j = _plain_str(s, i, n)
        f.query_end = j - 1
        return j
    return -1


cdef Py_ssize_t _envelope_member(const char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t at,
                                 Py_ssize_t end, double* rows, Py_ssize_t cap, _Frame* f,
                                 int* bit) noexcept nogil:
    cdef Py_ssize_t j
    cdef int seen = 0
    if _is(s, at, end, "jsonrpc", 7):
        bit[0] = 1
        j = _plain_str(s, i, n)
        return j if j > 0 and _is(s, i + 1, j - 1, "2.0", 3) else -1
    if _is(s, at, end, "result", 6):
        bit[0] = 2
        j = _object(s, i, n, rows, cap, f, _result_member, &seen)
        return j if seen == 3 else -1
    if _is(s, at, end, "id", 2):
        bit[0] = 4
        if i < n and s[i] == c'"':
            f.id_kind = 2
            f.id_at = i + 1
            j = _plain_str(s, i, n)
            f.id_end = j - 1
            return j
        if i + 4 <= n and memcmp(s + i, "null", 4) == 0:
            f.id_kind = 0
            return i + 4
        f.id_kind = 1
        return _integer(s, i, n, True, &f.id_int)
    return -1


cdef Py_ssize_t _one_event_frame(const char* s, Py_ssize_t n, double* rows, Py_ssize_t cap,
                                 _Frame* f) noexcept nogil:
    """0 when ``s[:n]`` is a notification of one book update or trade in the strict
    form (read into ``f``, and levels into ``rows``), else -1."""
    cdef int seen = 0
    cdef Py_ssize_t i = _object(s, _skip_ws(s, 0, n), n, rows, cap, f, _envelope_member, &seen)
    if i < 0 or (seen & 3) != 3:  # jsonrpc and result; the id may be absent
        return -1
    return 0 if _skip_ws(s, i, n) == n else -1


cdef inline object _ascii(object last, const char* p, Py_ssize_t k):
    """``p[:k]`` as a str, reusing ``last`` when it is the same text."""
    cdef Py_ssize_t m = 0
    cdef const char* q
    if last is not None:
        q = PyUnicode_AsUTF8AndSize(last, &m)
        if m == k and memcmp(p, q, k) == 0:
            return last
    return PyUnicode_DecodeASCII(p, k, NULL)


BOOK = _EV_BOOK
TRADE = _EV_TRADE


cdef class EventFrameReader:
    """Reads a frame that is one ``OrderBookUpdate`` or one ``Trade`` in the
    specification's form in a single pass, levels included; None for any other frame
    (and any doubt).

    One per connection: it keeps the last query and market id to hand the same
    ``str`` objects back while they do not change.
    """

    cdef object _query
    cdef object _market

    def read(self, bytes frame, cnp.ndarray rows):
        """``(BOOK, id, query, market_id, timestamp_ns, sequence, is_snapshot, bids_at,
        bids_end, asks_at, asks_end)`` with the levels in ``rows`` (a float64
        ``(cap, 2)`` array), ``(TRADE, id, query, market_id, timestamp_ns, price, size,
        side, trade_id)``, or None."""
        cdef _Frame f
        cdef int ok
        cdef const char* s = frame
        cdef Py_ssize_t n = len(frame)
        if not _is_rows(rows):
            raise TypeError("rows must be a C-contiguous float64 array of shape (cap, 2)")
        f.id_kind = 0
        f.event = 0
        f.seen = 0
        f.kind = 0
        f.used = 0
        with nogil:
            ok = _one_event_frame(s, n, <double*>cnp.PyArray_DATA(rows),
                                  cnp.PyArray_DIM(rows, 0), &f)
        if ok != 0:
            return None
        if f.id_kind == 1:
            request_id = f.id_int
        elif f.id_kind == 2:
            request_id = PyUnicode_DecodeASCII(s + f.id_at, f.id_end - f.id_at, NULL)
        else:
            request_id = None
        self._query = _ascii(self._query, s + f.query_at, f.query_end - f.query_at)
        self._market = _ascii(self._market, s + f.market_at, f.market_end - f.market_at)
        if f.event == _EV_BOOK:
            return (_EV_BOOK, request_id, self._query, self._market, f.timestamp_ns,
                    f.sequence, f.kind != 2, f.bids_at, f.bids_end, f.asks_at, f.asks_end)
        if f.trade_id_kind == 2:
            trade_id = PyUnicode_DecodeASCII(s + f.trade_id_at, f.trade_id_end - f.trade_id_at,
                                             NULL)
        else:
            trade_id = str(f.trade_id_int)
        return (_EV_TRADE, request_id, self._query, self._market, f.timestamp_ns, f.price,
                f.size, f.side, trade_id)
