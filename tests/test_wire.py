"""Wire-text scanners: level lists and RFC 3339 timestamps against Python's own parsers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashmm._core.wire import (
    LevelsFormatError,
    format_levels_fixed,
    max_levels,
    parse_levels,
    parse_levels_json,
    parse_rfc3339_ns,
)


def parse(text: str) -> np.ndarray:
    out = np.zeros((max_levels(text), 2))
    return out[: parse_levels(text, out)]


_decimal = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e12"), places=8)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_decimal, _decimal), max_size=20), st.booleans())
def test_levels_equal_python_float(levels: list[tuple[Decimal, Decimal]], quoted: bool) -> None:
    q = '"' if quoted else ""
    text = "[" + ",".join(f"[{q}{p}{q},{q}{s}{q}]" for p, s in levels) + "]"
    got = parse(text)
    assert got.tolist() == [[float(str(p)), float(str(s))] for p, s in levels]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_decimal, _decimal), max_size=20), st.booleans(), st.booleans())
def test_levels_read_in_place_from_the_json_string_token(
    levels: list[tuple[Decimal, Decimal]], quoted: bool, spaced: bool
) -> None:
    """The frame's raw string token (escaped quotes) reads as its decoded text does."""
    q = '"' if quoted else ""
    sep = ", " if spaced else ","
    text = "[" + sep.join(f"[{q}{p}{q}{sep}{q}{s}{q}]" for p, s in levels) + "]"
    raw = msgspec.Raw(msgspec.json.encode(text))
    out = np.zeros((max_levels(text), 2))
    k = parse_levels_json(raw, out)
    assert out[:k].tolist() == parse(text).tolist()


_digits = st.from_regex(r"[0-9]{0,12}\.?[0-9]{0,12}|[0-9]{1,3}\.[0-9]\.[0-9]|1e5", fullmatch=True)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_digits, _digits), min_size=1, max_size=8))
def test_compact_level_tokens_read_as_the_general_parser_does(
    levels: list[tuple[str, str]],
) -> None:
    """The compact form venues send has a fast loop of its own: digit runs of every
    length (over the exact 15-digit limit too), "5." and ".5", and what is not a plain
    decimal (no digits, two points, exponents, a zero price) all come out as the
    general parser reads the decoded text, or as -1 where it refuses it."""
    text = "[" + ",".join(f'["{p}","{s}"]' for p, s in levels) + "]"
    raw = msgspec.Raw(msgspec.json.encode(text))
    out = np.zeros((max_levels(text), 2))
    try:
        want = parse(text).tolist()
    except LevelsFormatError:
        assert parse_levels_json(raw, out) == -1
    else:
        k = parse_levels_json(raw, out)
        assert out[:k].tolist() == want


@pytest.mark.parametrize(
    "token",
    [
        b'[["1","2"]]',  # a list, not a string holding one
        b'"[[\\u0031,2]]"',  # another escape: the careful path decodes it
        b'"[[\\"1\\",\\"-2\\"]]"',  # a negative size
        b'"[[\\"1\\",\\"2\\"]"',  # unbalanced
        b'"[[\\"1\\",\\"2\\"]]',  # unterminated string
        b"",
    ],
)
def test_level_tokens_outside_the_plain_form_are_left_to_the_careful_path(token: bytes) -> None:
    out = np.full((8, 2), 7.0)
    assert parse_levels_json(msgspec.Raw(token), out) == -1


def test_level_token_larger_than_the_buffer_is_refused() -> None:
    raw = msgspec.Raw(msgspec.json.encode('[["1","2"],["3","4"]]'))
    assert parse_levels_json(raw, np.zeros((1, 2))) == -1
    assert parse_levels_json(raw, np.zeros((4, 2)), 2) == 2


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_long_and_exponent_forms_equal_python_float(x: float) -> None:
    for token in (repr(x), f"{x:.25f}", f"{x:e}"):
        if len(token) <= 63 and float(token) > 0:  # a zero price is rightly refused
            assert parse(f'[["{token}","1"]]')[0, 0] == float(token)


def test_json_whitespace_and_empty_list() -> None:
    assert parse(" [ ] ").shape == (0, 2)
    text = json.dumps([["0.4501", "100"], ["0.45", "0"]], indent=2)
    assert parse(text).tolist() == [[0.4501, 100.0], [0.45, 0.0]]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[",
        "[[1,2]",
        "[[1,2],]",
        '[["1"]]',
        '[["1","2","3"]]',
        '[["nan","1"]]',
        '[["inf","1"]]',
        '[["0x10","1"]]',
        '[["1","-1"]]',
        '[["0","1"]]',
        '[["-5","1"]]',
        '[[".","1"]]',
        '[["-","1"]]',
        '[["1.2.3","1"]]',
        '[["1e","1"]]',
        '[["1","1"]] trailing',
        '[["1",1"]]',
        '{"a": 1}',
    ],
)
def test_malformed_levels_raise_levels_format_error(text: str) -> None:
    with pytest.raises(LevelsFormatError):
        parse(text)


def test_buffer_must_have_room_and_the_right_type() -> None:
    with pytest.raises(ValueError, match="too small"):
        parse_levels('[["1","1"],["2","2"]]', np.zeros((1, 2)))
    with pytest.raises(TypeError):
        parse_levels('[["1","1"]]', np.zeros((4, 3)))
    with pytest.raises(TypeError):
        parse_levels('[["1","1"]]', np.zeros((4, 2), dtype=np.float32))


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1678, 1, 2), max_value=datetime(2261, 12, 30)),
    st.integers(0, 999),
    st.integers(-23 * 60, 23 * 60),
)
def test_timestamps_equal_datetime(dt: datetime, nanos: int, offset_min: int) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    local = dt.replace(tzinfo=tz)
    frac = f"{dt.microsecond:06d}{nanos:03d}"
    off = f"{'+' if offset_min >= 0 else '-'}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac}" + off
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    delta = local - epoch
    expected = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + nanos
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00",  # no offset
        "2024-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00.1234567891Z",
        "2024-01-01T00:00:00+25:00",
        "2024-01-01T00:00:00Zjunk",
        "2262-04-11T23:47:16.854775808Z",  # beyond int64 ns
        "0000-01-01T00:00:00Z",
        "not a time at all",
    ],
)
def test_bad_timestamps_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        parse_rfc3339_ns(text)


# ---------------------------------------------------------------- level lists out


@given(
    st.lists(st.tuples(st.integers(1, 10**12), st.integers(0, 10**12)), min_size=0, max_size=20),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_fixed_levels_match_python_formatting_on_the_grid(
    units: list[tuple[int, int]], price_dp: int, size_dp: int
) -> None:
    rows = np.array(
        [[p / 10**price_dp, s / 10**size_dp] for p, s in units], dtype=np.float64
    ).reshape(-1, 2)
    text = format_levels_fixed(rows, price_dp, size_dp)
    expected = [[f"{p:.{price_dp}f}", f"{s:.{size_dp}f}"] for p, s in rows.tolist()]
    assert json.loads(text) == expected
    # and the reader gets the same doubles back
    out = np.empty((max_levels(text), 2))
    k = parse_levels(text, out)
    assert np.array_equal(out[:k], rows)


@pytest.mark.parametrize(
    ("row", "what"),
    [
        ([0.0, 1.0], "price"),
        ([0.00004, 1.0], "price"),  # rounds to 0 with 4 decimals
        ([float("nan"), 1.0], "price"),
        ([1.0, -1.0], "size"),
        ([1.0, float("inf")], "size"),
        ([1e12, 1.0], "price"),  # 1e12 * 1e4 >= 2**53: not exact any more
    ],
)
def test_fixed_levels_refuse_values_they_cannot_write(row: list[float], what: str) -> None:
    with pytest.raises(ValueError, match=what):
        format_levels_fixed(np.array([row]), 4, 0)


def test_fixed_levels_check_their_arguments() -> None:
    with pytest.raises(TypeError):
        format_levels_fixed(np.zeros((2, 3)), 2, 2)
    with pytest.raises(ValueError, match="decimals"):
        format_levels_fixed(np.zeros((0, 2)), 19, 2)
