"""The one-pass reader of one-event frames (``flashmm._core.wire.EventFrameReader``).

It must take the specification's frames of one book update or one trade, in any member
order and spacing, and for every other frame stand aside: whatever it takes decodes
exactly as the general msgspec decoder decodes it (which a ``str`` frame always goes
through).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashmm._core.wire import BOOK, TRADE, EventFrameReader
from flashmm.data.binance import infer_increments
from flashmm.data.frames import binance_to_frames
from flashmm.venue.protocol import (
    BookUpdate,
    FrameDecoder,
    FrameError,
    Notification,
    Trade,
    format_rfc3339_ns,
)

DATA = Path(__file__).parent / "data" / "binance"
QUERY = "tm.event='OrderBookUpdate' AND market_id='SEI/USDC'"


def members(obj: dict[str, str | None]) -> str:
    """``obj`` (values already JSON text; ``None`` drops one) as a compact JSON object."""
    return "{" + ",".join(f'"{k}":{v}' for k, v in obj.items() if v is not None) + "}"


def attrs(**override: str | None) -> dict[str, str]:
    """The attributes of a small delta as JSON text; ``None`` drops one."""
    base = {
        "market_id": '"SEI/USDC"',
        "timestamp": '"2024-03-01T12:00:00.123456789Z"',
        "sequence": '"42"',
        "kind": '"delta"',
        "bids": json.dumps('[["0.4501","100"],["0.45","250.5"]]'),
        "asks": json.dumps('[["0.4503","75"]]'),
    }
    base.update(override)  # type: ignore[arg-type]
    return {k: v for k, v in base.items() if v is not None}


def trade_attrs(**override: str | None) -> dict[str, str]:
    """The attributes of a trade as JSON text; ``None`` drops one."""
    base = {
        "market_id": '"SEI/USDC"',
        "timestamp": '"2024-03-01T12:00:00.5Z"',
        "price": '"0.4502"',
        "size": '"12.5"',
        "side": '"sell"',
        "trade_id": '"T-1001"',
    }
    base.update(override)  # type: ignore[arg-type]
    return {k: v for k, v in base.items() if v is not None}


def trade(**override: str | None) -> bytes:
    return frame(trade_attrs(**override), ev={"type": '"Trade"'})


def event(
    attributes: dict[str, str] | None = None, override: dict[str, str | None] | None = None
) -> str:
    ev: dict[str, str | None] = {
        "type": '"OrderBookUpdate"',
        "attributes": members(attributes or attrs()),  # type: ignore[arg-type]
    }
    ev.update(override or {})
    return members(ev)


def frame(
    attributes: dict[str, str] | None = None,
    *,
    ev: dict[str, str | None] | None = None,
    result: dict[str, str | None] | None = None,
    top: dict[str, str | None] | None = None,
) -> bytes:
    res: dict[str, str | None] = {
        "query": json.dumps(QUERY),
        "events": "[" + event(attributes, ev) + "]",
    }
    res.update(result or {})
    env: dict[str, str | None] = {"jsonrpc": '"2.0"', "id": "7", "result": members(res)}
    env.update(top or {})
    return members(env).encode()


def outcome(data: bytes | str) -> Any:
    """What a fresh decoder makes of ``data``, in comparable form."""
    try:
        msg = FrameDecoder(arena_rows=16).decode(data)
    except FrameError as exc:
        return type(exc), str(exc)
    if not isinstance(msg, Notification):
        return msg
    events = [
        (e.market_id, e.timestamp_ns, e.sequence, e.is_snapshot, e.bids.tolist(), e.asks.tolist())
        if isinstance(e, BookUpdate)
        else e
        for e in msg.events
    ]
    return msg.id, msg.query, events, msg.unknown_types


def taken(data: bytes) -> bool:
    return EventFrameReader().read(data, np.empty((4096, 2))) is not None


def assert_agrees_or_stands_aside(data: bytes) -> bool:
    """The reader's answer, when it gives one, is the general decoder's."""
    if not taken(data):
        return False
    assert outcome(data) == outcome(data.decode("ascii"))
    return True


# ---------------------------------------------------------------- frames it takes

WS = st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n  "])
ASCII_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\'), max_size=12
)


@st.composite
def level_rows(draw: st.DrawFn) -> tuple[str, list[list[float]]]:
    """A compact level list as venues send it, and its rows."""
    pd, sd = draw(st.integers(0, 8)), draw(st.integers(0, 6))
    n = draw(st.integers(0, 40))
    ticks = draw(st.lists(st.integers(1, 10**12), min_size=n, max_size=n))
    lots = draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n))

    cells = [(_decimal(t, pd), _decimal(q, sd)) for t, q in zip(ticks, lots, strict=True)]
    body = "[" + ",".join(f'["{p}","{s}"]' for p, s in cells) + "]"
    return body, [[float(p), float(s)] for p, s in cells]


def _decimal(units: int, decimals: int) -> str:
    digits = str(units).rjust(decimals + 1, "0")
    return f"{digits[:-decimals]}.{digits[-decimals:]}" if decimals else digits


@st.composite
def spec_frames(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A frame of one book update or trade in the specification's form, in any member
    order and spacing, and what it holds."""

    def obj(items: dict[str, str]) -> str:
        order = draw(st.permutations(list(items)))
        return (
            "{"
            + ",".join(f'{draw(WS)}"{k}"{draw(WS)}:{draw(WS)}{items[k]}{draw(WS)}' for k in order)
            + "}"
        )

    ts = draw(st.integers(0, 4102444800 * 10**9))
    market = draw(ASCII_TEXT.filter(bool))
    a = {"market_id": json.dumps(market), "timestamp": json.dumps(format_rfc3339_ns(ts))}
    want: dict[str, Any] = {"market": market, "ts": ts}
    if draw(st.booleans()):
        etype = "OrderBookUpdate"
        seq_form = draw(st.sampled_from(["{}", '"{}"', '"00{}"']))
        seq = draw(st.integers(0, 10**16 - 1 if "00" in seq_form else 10**18 - 1))
        kind = draw(st.sampled_from([None, "snapshot", "delta"]))
        (bids, want["bids"]), (asks, want["asks"]) = draw(level_rows()), draw(level_rows())
        a.update(sequence=seq_form.format(seq), bids=json.dumps(bids), asks=json.dumps(asks))
        if kind is not None:
            a["kind"] = json.dumps(kind)
        want.update(seq=seq, snap=kind != "delta")
    else:
        etype = "Trade"
        price = _decimal(draw(st.integers(1, 10**12)), draw(st.integers(0, 8)))
        size = _decimal(draw(st.integers(1, 10**9)), draw(st.integers(0, 6)))
        side = draw(st.sampled_from(["buy", "sell"]))
        trade_id = draw(ASCII_TEXT.filter(bool) | st.integers(-(10**18) + 1, 10**18 - 1))
        a.update(
            price=json.dumps(price),
            size=json.dumps(size),
            side=json.dumps(side),
            trade_id=json.dumps(trade_id),
        )
        want.update(price=float(price), size=float(size), side=1 if side == "buy" else -1)
        want["trade_id"] = str(trade_id)
    request_id = draw(st.none() | st.integers(-(10**18) + 1, 10**18 - 1) | ASCII_TEXT)
    query = draw(ASCII_TEXT)
    event = obj({"type": json.dumps(etype), "attributes": obj(a)})
    result = obj({"query": json.dumps(query), "events": f"[{draw(WS)}{event}{draw(WS)}]"})
    envelope = {"jsonrpc": '"2.0"', "result": result}
    if request_id is not None or draw(st.booleans()):
        envelope["id"] = json.dumps(request_id)
    data = (draw(WS) + obj(envelope) + draw(WS)).encode()
    want.update(type=etype, id=request_id, query=query)
    return data, want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_frames())
def test_reader_takes_specification_frames(case: tuple[bytes, dict[str, Any]]) -> None:
    data, want = case
    assert assert_agrees_or_stands_aside(data)
    msg = FrameDecoder(arena_rows=16).decode(data)
    assert isinstance(msg, Notification)
    assert (msg.id, msg.query, msg.unknown_types) == (want["id"], want["query"], ())
    (ev,) = msg.events
    assert (ev.market_id, ev.timestamp_ns) == (want["market"], want["ts"])
    if want["type"] == "Trade":
        assert isinstance(ev, Trade)
        assert (ev.price, ev.size, ev.side, ev.trade_id) == (
            want["price"],
            want["size"],
            want["side"],
            want["trade_id"],
        )
        return
    assert isinstance(ev, BookUpdate)
    assert (ev.sequence, ev.is_snapshot) == (want["seq"], want["snap"])
    assert ev.bids.tolist() == want["bids"]
    assert ev.asks.tolist() == want["asks"]
    assert not ev.bids.flags.writeable


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_frames(), st.data())
def test_reader_agrees_or_stands_aside_on_damaged_frames(
    case: tuple[bytes, dict[str, Any]], data: st.DataObject
) -> None:
    text = case[0]
    pos = data.draw(st.integers(0, len(text) - 1))
    how = data.draw(st.sampled_from(["digit", "flip", "delete", "insert", "cut"]))
    digits = [k for k, b in enumerate(text) if 48 <= b <= 57]
    if how == "digit":  # mostly still well-formed: the reader should take many of these
        pos = data.draw(st.sampled_from(digits))
        damaged = text[:pos] + str(data.draw(st.integers(0, 9))).encode() + text[pos + 1 :]
    elif how == "cut":
        damaged = text[:pos]
    elif how == "delete":
        damaged = text[:pos] + text[pos + data.draw(st.integers(1, 8)) :]
    else:
        byte = bytes([data.draw(st.integers(0, 255))])
        damaged = text[:pos] + byte + text[pos + (how == "flip") :]
    if assert_agrees_or_stands_aside(damaged):
        hypothesis.event(
            "damaged, still taken"
        )  # e.g. a digit for a digit: see --hypothesis-show-statistics
    else:
        outcome(damaged)  # the general decoder's: a FrameError at worst, never a crash


def test_real_replay_frames_are_all_taken() -> None:
    path = DATA / "usdm_btcusdt_20240808_head10k.gz"
    tick, lot = infer_increments(path)
    frames = [f for _, f in binance_to_frames([path], "BTC/USDT", tick, lot)]
    books = [f for f in frames if b"OrderBookUpdate" in f]
    trades = [f for f in frames if b'"Trade"' in f]
    assert len(books) > 500 and len(trades) > 1000
    assert len(books) + len(trades) == len(frames)
    for data in books[:300] + trades[:300]:
        assert assert_agrees_or_stands_aside(data)


# ---------------------------------------------------------------- frames it leaves alone

STANDS_ASIDE = {
    # envelope
    "no jsonrpc": frame(top={"jsonrpc": None}),
    "jsonrpc 1.0": frame(top={"jsonrpc": '"1.0"'}),
    "error member": frame(top={"error": '{"code":1,"message":"x"}'}),
    "unknown top member": frame(top={"extra": "1"}),
    "float id": frame(top={"id": "7.0"}),
    "id of 19 digits": frame(top={"id": "1234567890123456789"}),
    "id with a leading zero": frame(top={"id": "07"}),
    "id with an escape": frame(top={"id": '"a\\"b"'}),
    "trailing garbage": frame() + b" x",
    "two documents": frame() + frame(),
    # result
    "data member": frame(result={"data": "null"}),
    "null query": frame(result={"query": "null"}),
    "non-ASCII query": frame(result={"query": '"caf\u00e9"'}),
    "escaped query": frame(result={"query": '"tm.event=\\u0027x\\u0027"'}),
    "no events": frame(result={"events": "[]"}),
    "two events": frame(result={"events": f"[{event()},{event()}]"}),
    # event
    "a market status": frame(
        {"market_id": '"SEI/USDC"', "status": '"open"'}, ev={"type": '"MarketStatus"'}
    ),
    "attribute list": frame(ev={"attributes": '[{"key":"market_id","value":"SEI/USDC"}]'}),
    "unknown event member": frame(ev={"index": "true"}),
    # attributes
    "duplicate kind": frame({**attrs(), "kind": '"delta"'}).replace(
        b'"kind":"delta"', b'"kind":"delta","kind":"snapshot"'
    ),
    "unknown attribute": frame({**attrs(), "venue": '"x"'}),
    "trade attribute in a book": frame({**attrs(), "side": '"buy"'}),
    "empty market": frame(attrs(market_id='""')),
    "missing market": frame(attrs(market_id=None)),
    "missing timestamp": frame(attrs(timestamp=None)),
    "bad timestamp": frame(attrs(timestamp='"2024-02-30T00:00:00Z"')),
    "negative sequence": frame(attrs(sequence='"-1"')),
    "sequence of 19 digits": frame(attrs(sequence='"9223372036854775807"')),
    "sequence with a sign": frame(attrs(sequence="-3")),
    "fractional sequence": frame(attrs(sequence='"4.5"')),
    "null sequence": frame(attrs(sequence="null")),
    "other kind": frame(attrs(kind='"full"')),
    "missing bids": frame(attrs(bids=None)),
    "null asks": frame(attrs(asks="null")),
    "levels as an array": frame(attrs(bids='[["0.4501","100"]]')),
    "levels with blanks": frame(attrs(bids=json.dumps('[ ["0.4501", "100"] ]'))),
    "levels with an exponent": frame(attrs(bids=json.dumps('[["4.501e-1","100"]]'))),
    "levels of 16 digits": frame(attrs(bids=json.dumps('[["0.450100000000001","1"]]'))),
    "numeric levels": frame(attrs(bids=json.dumps("[[0.4501,100]]"))),
    "zero price": frame(attrs(asks=json.dumps('[["0","1"]]'))),
    "unicode escape in levels": frame(attrs(bids='"[[\\u00220.45\\",\\"1\\"]]"')),
    # trades
    "book attribute in a trade": frame(
        {**trade_attrs(), "kind": '"delta"'}, ev={"type": '"Trade"'}
    ),
    "trade without trade_id": trade(trade_id=None),
    "empty trade_id": trade(trade_id='""'),
    "null trade_id": trade(trade_id="null"),
    "fractional trade_id": trade(trade_id="5.0"),
    "trade_id of 19 digits": trade(trade_id="1234567890123456789"),
    "numeric price": trade(price="0.4502"),
    "zero trade price": trade(price='"0.0"'),
    "negative size": trade(size='"-1"'),
    "price with an exponent": trade(price='"4.502e-1"'),
    "price of 16 digits": trade(price='"0.450200000000001"'),
    "upper-case side": trade(side='"BUY"'),
    "missing side": trade(side=None),
    "bad trade timestamp": trade(timestamp='"2024-03-01"'),
}


@pytest.mark.parametrize("data", STANDS_ASIDE.values(), ids=STANDS_ASIDE.keys())
def test_reader_stands_aside(data: bytes) -> None:
    assert not taken(data)
    if data.isascii():  # bytes and str take the same general path: same outcome
        assert outcome(data) == outcome(data.decode())


def test_the_specification_examples_are_taken() -> None:
    """The cases above are off-form only where they say: their base forms are taken."""
    assert assert_agrees_or_stands_aside(frame())
    assert outcome(frame())[2][0][4] == [[0.4501, 100.0], [0.45, 250.5]]
    assert assert_agrees_or_stands_aside(trade())
    assert outcome(trade())[2] == [
        Trade("SEI/USDC", 1709294400500000000, 0.4502, 12.5, -1, "T-1001")
    ]


@pytest.mark.parametrize(("text", "want"), [("12345", "12345"), ("-5", "-5"), ("0", "0")])
def test_integer_trade_ids_read_as_their_text(text: str, want: str) -> None:
    data = trade(trade_id=text)
    assert assert_agrees_or_stands_aside(data)
    (ev,) = FrameDecoder().decode(data).events
    assert ev.trade_id == want


def test_asks_listed_before_bids() -> None:
    a = attrs()
    data = frame({k: a[k] for k in ("asks", "market_id", "timestamp", "sequence", "bids")})
    assert assert_agrees_or_stands_aside(data)
    decoder = FrameDecoder()
    (book,) = decoder.decode(data).events
    assert book.bids.tolist() == [[0.4501, 100.0], [0.45, 250.5]]
    assert book.asks.tolist() == [[0.4503, 75.0]]
    assert book.is_snapshot  # no kind: a snapshot, as the general decoder reads it


def test_a_frame_larger_than_the_arena_is_read_by_the_careful_path() -> None:
    rows = [[f"{100 + k}.5", "1"] for k in range(40)]
    data = frame(attrs(bids=json.dumps(json.dumps(rows, separators=(",", ":")))))
    assert EventFrameReader().read(data, np.empty((16, 2))) is None
    decoder = FrameDecoder(arena_rows=16)
    (book,) = decoder.decode(data).events
    assert book.bids.tolist() == [[100.5 + k, 1.0] for k in range(40)]
    # The arena grew: the next such frame takes the one-pass path into it.
    (again,) = decoder.decode(data).events
    assert again.bids.tolist() == book.bids.tolist()


def test_query_and_market_strings_are_reused_while_unchanged() -> None:
    reader = EventFrameReader()
    rows = np.empty((64, 2))
    first = reader.read(frame(), rows)
    second = reader.read(trade(), rows)
    assert first is not None and second is not None
    assert (first[0], second[0]) == (BOOK, TRADE)
    assert second[2] is first[2] and second[3] is first[3]  # query, market id
    other = reader.read(frame(attrs(market_id='"ATOM/USDC"')), rows)
    assert other is not None and other[3] == "ATOM/USDC"


def test_reader_needs_a_float64_row_buffer() -> None:
    with pytest.raises(TypeError, match="float64"):
        EventFrameReader().read(frame(), np.empty((16, 3)))
