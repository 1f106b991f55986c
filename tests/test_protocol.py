"""The venue frame codec: real CometBFT frames, the three event forms, round trips, errors."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashmm._core.book import OK, OrderBook
from flashmm._core.wire import parse_rfc3339_ns
from flashmm.venue.protocol import (
    KNOWN_EVENT_TYPES,
    BookUpdate,
    FrameDecoder,
    FrameError,
    InvalidEvent,
    MalformedFrame,
    MarketStatus,
    Notification,
    QueryError,
    RpcError,
    RpcResult,
    SubscribeAck,
    SubscribeRequest,
    Trade,
    UnsubscribeRequest,
    decode_request,
    encode_ack,
    encode_error,
    encode_notification,
    encode_subscribe,
    encode_unsubscribe,
    format_levels,
    format_query,
    format_rfc3339_ns,
    parse_query,
)

FIXTURES = Path(__file__).parent / "data" / "tendermint"
KV_TX = "kvstore_v0_37/subscribe_txs_0.json"
KV_BLOCK = "kvstore_v0_37/subscribe_newblock_0.json"
KV_BLOCK_EVENTS = "kvstore_v0_37/subscribe_newblock_1.json"
GAIA_BLOCK = "gaia_v0_34/subscribe_newblock_0.json"
GAIA_BLOCK_1 = "gaia_v0_34/subscribe_newblock_1.json"

QUERY = "tm.event='OrderBookUpdate' AND market_id='SEI/USDC'"

BOOK = {
    "market_id": "SEI/USDC",
    "timestamp": "2024-03-01T12:00:00.123456789Z",
    "sequence": "42",
    "kind": "delta",
    "bids": '[["0.4501","100"],["0.4500","250.5"]]',
    "asks": '[["0.4503","75"]]',
}
TRADE = {
    "market_id": "SEI/USDC",
    "timestamp": "2024-03-01T12:00:00.5Z",
    "price": "0.4502",
    "size": "12.5",
    "side": "sell",
    "trade_id": "T-1001",
}
STATUS = {"market_id": "SEI/USDC", "status": "halted"}
EVENTS = [("OrderBookUpdate", BOOK), ("Trade", TRADE), ("MarketStatus", STATUS)]

T0_NS = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()) * 1_000_000_000


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(name: str) -> dict[str, Any]:
    return json.loads(raw(name))


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv_list(attrs: dict[str, str], encode: bool = False) -> list[dict[str, Any]]:
    f = b64 if encode else str
    return [{"key": f(k), "value": f(v), "index": True} for k, v in attrs.items()]


def form1(events: list[tuple[str, dict[str, Any]]], request_id: Any = 1) -> bytes:
    body = [{"type": t, "attributes": a} for t, a in events]
    return dumps({"jsonrpc": "2.0", "id": request_id, "result": {"query": QUERY, "events": body}})


def flat_into(frame: dict[str, Any], events: list[tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """Add ``events`` to the flat ``result.events`` map of a real frame."""
    frame = copy.deepcopy(frame)
    flat = frame["result"]["events"]
    for etype, attrs in events:
        for key, value in attrs.items():
            flat.setdefault(f"{etype}.{key}", []).append(value)
    return frame


def data_into(
    frame: dict[str, Any],
    events: list[tuple[str, dict[str, str]]],
    where: tuple[str, ...],
    encode: bool = False,
) -> dict[str, Any]:
    """Append ``events`` to the structured event list at ``result.data.value.<where>``."""
    frame = copy.deepcopy(frame)
    node = frame["result"]["data"]["value"]
    for key in where:
        node = node.setdefault(key, {})
    node.setdefault("events", [])
    if node["events"] is None:
        node["events"] = []
    node["events"].extend({"type": t, "attributes": kv_list(a, encode)} for t, a in events)
    return frame


def check_expected(events: list[Any]) -> None:
    """``events`` are exactly BOOK, TRADE, STATUS."""
    assert [type(e) for e in events] == [BookUpdate, Trade, MarketStatus]
    book, trade, status = events
    assert book.market_id == "SEI/USDC"
    assert book.timestamp_ns == T0_NS + 123_456_789
    assert book.sequence == 42
    assert book.is_snapshot is False
    np.testing.assert_array_equal(book.bids, [[0.4501, 100.0], [0.4500, 250.5]])
    np.testing.assert_array_equal(book.asks, [[0.4503, 75.0]])
    assert trade == Trade("SEI/USDC", T0_NS + 500_000_000, 0.4502, 12.5, -1, "T-1001")
    assert status == MarketStatus("SEI/USDC", "halted")


@pytest.fixture
def decoder() -> FrameDecoder:
    return FrameDecoder()


# ---------------------------------------------------------------- real frames as recorded


def test_real_subscribe_ack(decoder: FrameDecoder) -> None:
    msg = decoder.decode(raw("kvstore_v0_37/subscribe_txs.json"))
    assert msg == SubscribeAck("f04f76fb-73bf-46c5-9151-4e7b089b73ed")


def test_real_error_reply(decoder: FrameDecoder) -> None:
    msg = decoder.decode(raw("kvstore_v0_37/subscribe_malformed.json"))
    assert isinstance(msg, RpcError)
    assert msg.id == "dc2d9ee9-e1f7-401d-b106-ed3b3b1fa24c"
    assert msg.code == -32603
    assert msg.message == "Internal error"
    assert msg.data is not None
    assert msg.data.startswith("failed to parse query")


def test_real_broadcast_result(decoder: FrameDecoder) -> None:
    msg = decoder.decode(raw("kvstore_v0_37/subscribe_txs_broadcast_tx_0.json"))
    assert isinstance(msg, RpcResult)
    assert msg.id == "cb942a83-32ad-4d23-aa91-86ef642f3816"
    assert (
        msg.result["hash"]
        == load("kvstore_v0_37/subscribe_txs_broadcast_tx_0.json")["result"]["hash"]
    )


def test_real_kvstore_tx_has_only_unknown_events(decoder: FrameDecoder) -> None:
    msg = decoder.decode(raw(KV_TX))
    assert isinstance(msg, Notification)
    assert msg.id == "f04f76fb-73bf-46c5-9151-4e7b089b73ed"
    assert msg.query == "tm.event = 'Tx'"
    assert msg.events == []
    assert msg.unknown_types == ("app",)


@pytest.mark.parametrize(
    ("name", "unknown"),
    [
        (KV_BLOCK, ()),
        (KV_BLOCK_EVENTS, ("transfer", "message")),
        (
            GAIA_BLOCK,
            (
                "transfer",
                "message",
                "mint",
                "proposer_reward",
                "commission",
                "rewards",
            ),
        ),
    ],
)
def test_real_newblock(decoder: FrameDecoder, name: str, unknown: tuple[str, ...]) -> None:
    msg = decoder.decode(raw(name))
    assert isinstance(msg, Notification)
    assert msg.query == "tm.event = 'NewBlock'"
    assert msg.events == []
    assert set(msg.unknown_types) == set(unknown)
    assert len(msg.unknown_types) == len(set(msg.unknown_types))


def test_real_frames_decode_from_str(decoder: FrameDecoder) -> None:
    for name in (KV_TX, GAIA_BLOCK, GAIA_BLOCK_1):
        assert isinstance(decoder.decode(raw(name).decode()), Notification)


# ---------------------------------------------------------------- the three event forms


def test_form1_specification(decoder: FrameDecoder) -> None:
    msg = decoder.decode(form1(EVENTS))
    assert isinstance(msg, Notification)
    assert msg.id == 1
    assert msg.query == QUERY
    assert msg.unknown_types == ()
    check_expected(msg.events)


def test_form1_cometbft_attribute_list(decoder: FrameDecoder) -> None:
    events = [(t, kv_list(a)) for t, a in EVENTS]
    check_expected(decoder.decode(form1(events)).events)


def test_form1_numbers_and_defaults(decoder: FrameDecoder) -> None:
    book = {k: v for k, v in BOOK.items() if k != "kind"} | {"sequence": 7}
    trade = TRADE | {"price": 0.4502, "size": 12.5, "trade_id": 1001}
    msg = decoder.decode(form1([("OrderBookUpdate", book), ("Trade", trade), ("Other", {})]))
    book_update, trade_event = msg.events
    assert book_update.is_snapshot is True  # kind defaults to snapshot
    assert book_update.sequence == 7
    assert (trade_event.price, trade_event.size, trade_event.trade_id) == (0.4502, 12.5, "1001")
    assert msg.unknown_types == ("Other",)


@pytest.mark.parametrize("name", [KV_TX, KV_BLOCK, GAIA_BLOCK])
def test_form2_flat_map_in_real_frames(decoder: FrameDecoder, name: str) -> None:
    msg = decoder.decode(dumps(flat_into(load(name), EVENTS)))
    check_expected(msg.events)
    for etype in KNOWN_EVENT_TYPES:
        assert etype not in msg.unknown_types


def test_form2_zips_occurrences_in_order(decoder: FrameDecoder) -> None:
    second = BOOK | {"sequence": "43", "bids": "[]", "asks": '[["0.4504","1"]]'}
    frame = flat_into(load(KV_TX), [("OrderBookUpdate", BOOK), ("OrderBookUpdate", second)])
    first_update, second_update = decoder.decode(dumps(frame)).events
    assert (first_update.sequence, second_update.sequence) == (42, 43)
    assert second_update.bids.shape == (0, 2)
    np.testing.assert_array_equal(second_update.asks, [[0.4504, 1.0]])


def test_form2_unequal_lists_are_ambiguous(decoder: FrameDecoder) -> None:
    second = {k: v for k, v in BOOK.items() if k != "kind"} | {"sequence": "43"}
    frame = flat_into(load(KV_TX), [("OrderBookUpdate", BOOK), ("OrderBookUpdate", second)])
    with pytest.raises(InvalidEvent, match="ambiguous"):
        decoder.decode(dumps(frame))


@pytest.mark.parametrize(
    ("name", "where"),
    [
        (KV_TX, ("TxResult", "result")),
        (KV_BLOCK_EVENTS, ("result_begin_block",)),
        (KV_BLOCK, ("result_end_block",)),
        (KV_BLOCK, ("result_finalize_block",)),
    ],
)
def test_form3_plain_in_real_frames(decoder: FrameDecoder, name: str, where: tuple) -> None:
    msg = decoder.decode(dumps(data_into(load(name), EVENTS, where)))
    check_expected(msg.events)


@pytest.mark.parametrize("where", [("result_begin_block",), ("result_end_block",)])
@pytest.mark.parametrize("name", [GAIA_BLOCK, GAIA_BLOCK_1])
def test_form3_base64_in_real_gaia_frames(decoder: FrameDecoder, name: str, where: tuple) -> None:
    msg = decoder.decode(dumps(data_into(load(name), EVENTS, where, encode=True)))
    check_expected(msg.events)
    assert "mint" in msg.unknown_types


def test_form3_tx_results_and_new_block_events(decoder: FrameDecoder) -> None:
    frame = load(KV_BLOCK)
    value = frame["result"]["data"]["value"]
    body = [{"type": t, "attributes": kv_list(a)} for t, a in EVENTS]
    value["result_finalize_block"] = {"events": [], "tx_results": [{"events": body[:2]}]}
    value["events"] = body[2:]
    check_expected(decoder.decode(dumps(frame)).events)


def test_structured_data_wins_per_type(decoder: FrameDecoder) -> None:
    # The flat map disagrees for Trade (present in the data: ignored) and alone has the
    # book update and the status (absent from the data: used).
    frame = data_into(load(KV_TX), [("Trade", TRADE)], ("TxResult", "result"), encode=True)
    frame = flat_into(
        frame,
        [("OrderBookUpdate", BOOK), ("Trade", TRADE | {"price": "9"}), ("MarketStatus", STATUS)],
    )
    msg = decoder.decode(dumps(frame))
    by_type = {type(e): e for e in msg.events}
    assert len(msg.events) == 3
    check_expected([by_type[BookUpdate], by_type[Trade], by_type[MarketStatus]])


def test_structured_data_wins_over_specification_list(decoder: FrameDecoder) -> None:
    frame = json.loads(form1([("Trade", TRADE | {"price": "9"}), ("MarketStatus", STATUS)]))
    frame["result"]["data"] = {"value": {"TxResult": {"result": {"events": []}}}}
    frame = data_into(frame, [("Trade", TRADE)], ("TxResult", "result"))
    trade, status = decoder.decode(dumps(frame)).events
    assert trade.price == 0.4502
    assert status == MarketStatus("SEI/USDC", "halted")


def test_all_forms_are_equivalent(decoder: FrameDecoder) -> None:
    frames = {
        "form1": form1(EVENTS),
        "form1-list": form1([(t, kv_list(a)) for t, a in EVENTS]),
        "form2": dumps(flat_into(load(KV_TX), EVENTS)),
        "form3-plain": dumps(data_into(load(KV_TX), EVENTS, ("TxResult", "result"))),
        "form3-base64": dumps(
            data_into(load(GAIA_BLOCK), EVENTS, ("result_end_block",), encode=True)
        ),
    }
    decoded = {}
    for name, frame in frames.items():
        events = decoder.decode(frame).events
        decoded[name] = [
            msgspec.structs.asdict(e) | ({"bids": e.bids.tolist(), "asks": e.asks.tolist()})
            if isinstance(e, BookUpdate)
            else msgspec.structs.asdict(e)
            for e in events
        ]
    first = decoded["form1"]
    assert all(value == first for value in decoded.values())


# ---------------------------------------------------------------- round trips


def test_subscribe_request_round_trip() -> None:
    frame = encode_subscribe(7, "OrderBookUpdate", "SEI/USDC")
    assert json.loads(frame) == {
        "method": "subscribe",
        "jsonrpc": "2.0",
        "id": 7,
        "params": {"query": QUERY},
    }
    request = decode_request(frame)
    assert isinstance(request, SubscribeRequest)
    assert request.id == 7
    assert parse_query(request.params.query) == ("OrderBookUpdate", "SEI/USDC")
    request = decode_request(encode_unsubscribe("a", "Trade", "ATOM/USDC"))
    assert isinstance(request, UnsubscribeRequest)
    assert parse_query(request.params.query) == ("Trade", "ATOM/USDC")


@pytest.mark.parametrize(
    "query",
    [
        "tm.event='Trade' AND market_id='SEI/USDC'",
        "tm.event = 'Trade' AND market_id = 'SEI/USDC'",
        "  tm.event ='Trade'   AND   market_id=  'SEI/USDC'  ",
        "tm.event='Trade'\tAND\nmarket_id='SEI/USDC'",
    ],
)
def test_parse_query_tolerates_whitespace(query: str) -> None:
    assert parse_query(query) == ("Trade", "SEI/USDC")


@pytest.mark.parametrize(
    "query",
    [
        "tm.event='Trade'",
        "tm.event = 'Tx'",
        "tm.event='Tx' AND market_id='SEI/USDC'",
        "market_id='SEI/USDC' AND tm.event='Trade'",
        'tm.event="Trade" AND market_id="SEI/USDC"',
        "tm.event='Trade' AND market_id=''",
        "tm.event='Trade' AND market_id='SEI/USDC' AND x='1'",
        "tm.event='Trade' and market_id='SEI/USDC'",
        "malformed",
        "",
    ],
)
def test_parse_query_rejects(query: str) -> None:
    with pytest.raises(QueryError):
        parse_query(query)


def test_format_query_rejects_quotes() -> None:
    with pytest.raises(QueryError):
        format_query("Trade", "SEI'/USDC")
    with pytest.raises(QueryError):
        encode_subscribe(1, "Tx", "SEI/USDC")
    assert issubclass(QueryError, ValueError)


def test_ack_and_error_round_trip(decoder: FrameDecoder) -> None:
    assert decoder.decode(encode_ack(3)) == SubscribeAck(3)
    assert decoder.decode(encode_ack("x")) == SubscribeAck("x")
    assert decoder.decode(encode_error(4, -32603, "Internal error", "bad query")) == RpcError(
        4, -32603, "Internal error", "bad query"
    )
    assert decoder.decode(encode_error(None, -32600, "Invalid request")) == RpcError(
        None, -32600, "Invalid request", None
    )


def test_error_data_that_is_not_a_string(decoder: FrameDecoder) -> None:
    frame = dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m", "data": [1]}})
    assert decoder.decode(frame) == RpcError(1, 1, "m", "[1]")


def test_format_levels() -> None:
    levels = np.array([[0.4501, 100.0], [0.45, 0.0]])
    assert format_levels(levels, 4, 0) == '[["0.4501","100"],["0.4500","0"]]'
    assert format_levels(levels) == '[["0.4501","100"],["0.45","0"]]'
    assert format_levels(np.zeros((0, 2))) == "[]"
    assert format_levels(np.array([[1e-7, 1e20]])) == '[["0.0000001","100000000000000000000"]]'
    for bad in ([[0.0, 1.0]], [[1.0, -1.0]], [[math.nan, 1.0]], [[1.0, math.inf]], [1.0, 2.0]):
        with pytest.raises(ValueError, match=r"levels|prices"):
            format_levels(np.array(bad))
    with pytest.raises(ValueError, match="rounds"):
        format_levels(np.array([[0.00001, 1.0]]), 2, 0)


FIRST_NS = -9214560000 * 10**9  # 1678-01-01T00:00:00Z
END_NS = 9214646400 * 10**9  # 2262-01-01T00:00:00Z


@given(st.integers(min_value=FIRST_NS, max_value=END_NS - 1))
def test_rfc3339_round_trip(ns: int) -> None:
    text = format_rfc3339_ns(ns)
    assert len(text) == 30
    assert text.endswith("Z")
    assert parse_rfc3339_ns(text) == ns


def test_rfc3339_bounds() -> None:
    assert format_rfc3339_ns(FIRST_NS) == "1678-01-01T00:00:00.000000000Z"
    assert format_rfc3339_ns(END_NS) == "2262-01-01T00:00:00.000000000Z"
    assert format_rfc3339_ns(2**63 - 1) == "2262-04-11T23:47:16.854775807Z"
    with pytest.raises(ValueError, match="int64"):
        format_rfc3339_ns(2**63)


def _levels(draw: st.DrawFn, decimals: int, size_decimals: int) -> np.ndarray:
    n = draw(st.integers(0, 8))
    ticks = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    lots = draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n))
    rows = [[t / 10**decimals, q / 10**size_decimals] for t, q in zip(ticks, lots, strict=True)]
    return np.array(rows, dtype=np.float64).reshape(n, 2)


@st.composite
def on_grid_frames(draw: st.DrawFn) -> tuple[int, int, list[Any]]:
    pd = draw(st.integers(0, 8))
    sd = draw(st.integers(0, 6))
    events: list[Any] = []
    for _ in range(draw(st.integers(1, 4))):
        market = draw(st.sampled_from(["SEI/USDC", "ATOM/USDC", "m"]))
        ts = draw(st.integers(0, 4102444800 * 10**9))
        kind = draw(st.sampled_from(["book", "trade", "status"]))
        if kind == "book":
            seq = draw(st.integers(0, 2**63 - 1))
            bids, asks = _levels(draw, pd, sd), _levels(draw, pd, sd)
            events.append(BookUpdate(market, ts, seq, draw(st.booleans()), bids, asks))
        elif kind == "trade":
            price = draw(st.integers(1, 10**9)) / 10**pd
            size = draw(st.integers(1, 10**9)) / 10**sd
            trade_id = draw(st.text(min_size=1, max_size=8))
            events.append(Trade(market, ts, price, size, draw(st.sampled_from([1, -1])), trade_id))
        else:
            events.append(MarketStatus(market, draw(st.sampled_from(["open", "halted", "closed"]))))
    return pd, sd, events


def assert_same_events(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)
        if isinstance(w, BookUpdate):
            assert (g.market_id, g.timestamp_ns, g.sequence, g.is_snapshot) == (
                w.market_id,
                w.timestamp_ns,
                w.sequence,
                w.is_snapshot,
            )
            assert g.bids.dtype == np.float64
            assert g.bids.flags.c_contiguous
            assert g.asks.flags.c_contiguous
            np.testing.assert_array_equal(g.bids, w.bids, strict=True)
            np.testing.assert_array_equal(g.asks, w.asks, strict=True)
        else:
            assert g == w


@settings(max_examples=150, deadline=None)
@given(on_grid_frames())
def test_encode_decode_round_trip_on_grid(frame: tuple[int, int, list[Any]]) -> None:
    pd, sd, events = frame
    data = encode_notification(9, QUERY, events, price_decimals=pd, size_decimals=sd)
    msg = FrameDecoder(arena_rows=16).decode(data)
    assert isinstance(msg, Notification)
    assert (msg.id, msg.query, msg.unknown_types) == (9, QUERY, ())
    assert_same_events(msg.events, events)


finite_prices = st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
finite_sizes = st.just(0.0) | st.floats(min_value=1e-9, max_value=1e12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(finite_prices, finite_sizes), max_size=10),
    finite_prices,
    finite_prices,
    st.integers(0, 2**63 - 1),
)
def test_encode_decode_round_trip_shortest(
    rows: list[tuple[float, float]], price: float, size: float, seq: int
) -> None:
    levels = np.array(rows, dtype=np.float64).reshape(len(rows), 2)
    events = [
        BookUpdate("SEI/USDC", 1, seq, True, levels, levels[::-1].copy()),
        Trade("SEI/USDC", 2, price, size, 1, "t"),
    ]
    msg = FrameDecoder().decode(encode_notification("id", QUERY, events))
    assert_same_events(msg.events, events)


def test_encode_rejects_bad_events() -> None:
    for event in (
        Trade("m", 0, 1.0, 1.0, 0, "t"),
        Trade("m", 0, -1.0, 1.0, 1, "t"),
        Trade("m", 0, 1.0, math.nan, 1, "t"),
        MarketStatus("m", "paused"),
    ):
        with pytest.raises(ValueError, match=r"side|price|size|status"):
            encode_notification(1, QUERY, [event])
    with pytest.raises(TypeError):
        encode_notification(1, QUERY, [SubscribeAck(1)])  # type: ignore[list-item]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b'{"jsonrpc":"2.0","id":1,"result":{}} trailing',
        b'{"jsonrpc":"2.0","id":1,"result":{"a":"\xff"}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"q":NaN}}',
        "\ud800",
        b"[" * 100_000,
        b'{"a":' * 100_000,
    ],
)
def test_invalid_json(decoder: FrameDecoder, frame: bytes | str) -> None:
    with pytest.raises(MalformedFrame):
        decoder.decode(frame)


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ([1, 2], "object"),
        ({"id": 1, "result": {}}, "jsonrpc"),
        ({"jsonrpc": "1.0", "id": 1, "result": {}}, "$.jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1}, "result"),
        ({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {}}, "result"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}, "both"),
        ({"jsonrpc": "2.0", "id": 1.5, "result": {}}, "$.id"),
        ({"jsonrpc": "2.0", "id": True, "result": {}}, "$.id"),
        ({"jsonrpc": "2.0", "id": 1, "result": [1]}, "$.result"),
        ({"jsonrpc": "2.0", "id": 1, "result": "ok"}, "$.result"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}, "$.error.code"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}, "message"),
        ({"jsonrpc": "2.0", "id": 1, "result": {"query": 5}}, "$.result.query"),
        ({"jsonrpc": "2.0", "id": 1, "result": {"events": 5}}, "$.result.events"),
        (
            {"jsonrpc": "2.0", "id": 1, "result": {"events": [{"type": 3}]}},
            "$.result.events[0].type",
        ),
        ({"jsonrpc": "2.0", "id": 1, "result": {"events": [{"attributes": {}}]}}, "type"),
        (
            {"jsonrpc": "2.0", "id": 1, "result": {"events": [{"type": "Trade", "attributes": 5}]}},
            "$.result.events[0].attributes",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "result": {"events": {"Trade.price": "1"}}},
            "$.result.events",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "result": {"query": "q", "data": "x", "events": {}}},
            "$.result.data",
        ),
    ],
)
def test_malformed_frames(decoder: FrameDecoder, obj: Any, path: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        decoder.decode(dumps(obj))
    assert path in str(info.value)


def test_wrong_attribute_type_names_the_path(decoder: FrameDecoder) -> None:
    with pytest.raises(MalformedFrame, match=r"`\$\.result\.events\[1\]\.attributes\.sequence`"):
        decoder.decode(form1([("Trade", TRADE), ("OrderBookUpdate", BOOK | {"sequence": True})]))


def _without(attrs: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in attrs.items() if k != key}


BAD_EVENTS = [
    ("OrderBookUpdate", _without(BOOK, "market_id"), "market_id"),
    ("OrderBookUpdate", BOOK | {"market_id": ""}, "market_id"),
    ("OrderBookUpdate", _without(BOOK, "sequence"), "sequence"),
    ("OrderBookUpdate", _without(BOOK, "bids"), "bids"),
    ("OrderBookUpdate", _without(BOOK, "asks"), "asks"),
    ("OrderBookUpdate", _without(BOOK, "timestamp"), "timestamp"),
    ("OrderBookUpdate", BOOK | {"timestamp": "2024-03-01 noon"}, "timestamp"),
    ("OrderBookUpdate", BOOK | {"timestamp": "2024-02-30T00:00:00Z"}, "out of range"),
    ("OrderBookUpdate", BOOK | {"timestamp": "2024-03-01T12:00:00+0100"}, "offset"),
    ("OrderBookUpdate", BOOK | {"timestamp": "2262-04-11T23:47:16.854775808Z"}, "int64"),
    ("OrderBookUpdate", BOOK | {"timestamp": "9999-12-31T23:59:59Z"}, "int64"),
    ("OrderBookUpdate", BOOK | {"timestamp": "0001-01-01T00:00:00Z"}, "int64"),
    ("Trade", TRADE | {"timestamp": "1677-12-31T23:59:59Z"}, "int64"),
    ("OrderBookUpdate", BOOK | {"sequence": "-1"}, "negative sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": -1}, "negative sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": "4.2"}, "sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": " 42"}, "sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": "٤٢"}, "sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": str(2**63)}, "sequence"),
    ("OrderBookUpdate", BOOK | {"sequence": 2**63}, "sequence"),
    ("OrderBookUpdate", BOOK | {"kind": "full"}, "kind"),
    ("OrderBookUpdate", BOOK | {"kind": ""}, "kind"),
    ("OrderBookUpdate", BOOK | {"bids": "[[0.45,100]"}, "bids"),
    ("OrderBookUpdate", BOOK | {"bids": "not a list"}, "bids"),
    ("OrderBookUpdate", BOOK | {"bids": '[["0.45","-1"]]'}, "size"),
    ("OrderBookUpdate", BOOK | {"bids": [["0.45", "1"]]}, "bids"),  # a list, not a string
    ("OrderBookUpdate", BOOK | {"bids": None}, "bids"),
    ("OrderBookUpdate", BOOK | {"asks": r"[[\"0.45\", \"1\"]]"}, "asks"),  # escaped twice
    ("OrderBookUpdate", BOOK | {"asks": '[["0.45","nan"]]'}, "asks"),
    ("OrderBookUpdate", BOOK | {"asks": '[["0.45","NaN"]]'}, "asks"),
    ("OrderBookUpdate", BOOK | {"asks": '[["0","1"]]'}, "price"),
    ("OrderBookUpdate", BOOK | {"asks": '[["-0.45","1"]]'}, "price"),
    ("OrderBookUpdate", BOOK | {"asks": '[["inf","1"]]'}, "asks"),
    ("Trade", TRADE | {"side": "long"}, "side"),
    ("Trade", TRADE | {"side": "BUY"}, "side"),
    ("Trade", _without(TRADE, "side"), "side"),
    ("Trade", TRADE | {"size": "-1"}, "size"),
    ("Trade", TRADE | {"size": "nan"}, "size"),
    ("Trade", TRADE | {"size": "0"}, "size"),
    ("Trade", TRADE | {"price": "0"}, "price"),
    ("Trade", TRADE | {"price": "1_000"}, "price"),
    ("Trade", TRADE | {"price": "inf"}, "price"),
    ("Trade", TRADE | {"price": -1.0}, "price"),
    ("Trade", _without(TRADE, "price"), "price"),
    ("Trade", _without(TRADE, "trade_id"), "trade_id"),
    ("Trade", _without(TRADE, "timestamp"), "timestamp"),
    ("Trade", TRADE | {"timestamp": "yesterday"}, "timestamp"),
    ("MarketStatus", STATUS | {"status": "paused"}, "status"),
    ("MarketStatus", STATUS | {"status": "OPEN"}, "status"),
    ("MarketStatus", _without(STATUS, "status"), "status"),
    ("MarketStatus", _without(STATUS, "market_id"), "market_id"),
]


@pytest.mark.parametrize(("etype", "attrs", "match"), BAD_EVENTS)
def test_invalid_events_in_every_form(
    decoder: FrameDecoder, etype: str, attrs: dict[str, Any], match: str
) -> None:
    # All-or-nothing: the frame also carries valid events, and yields none of them.
    events = [*EVENTS, (etype, attrs)]
    frames = [form1(events)]
    if all(isinstance(v, str) for v in attrs.values()):
        frames += [
            form1([(t, kv_list(a)) for t, a in events]),
            dumps(data_into(load(KV_TX), events, ("TxResult", "result"))),
            dumps(data_into(load(GAIA_BLOCK), events, ("result_end_block",), encode=True)),
            dumps(flat_into(load(KV_TX), [(etype, attrs)])),
        ]
    for frame in frames:
        with pytest.raises(InvalidEvent, match=match):
            decoder.decode(frame)
    # The decoder is still fine afterwards.
    check_expected(decoder.decode(form1(EVENTS)).events)


def test_event_without_attributes(decoder: FrameDecoder) -> None:
    frame = dumps({"jsonrpc": "2.0", "id": 1, "result": {"events": [{"type": "Trade"}]}})
    with pytest.raises(InvalidEvent, match="no attributes"):
        decoder.decode(frame)


def test_base64_key_with_undecodable_value(decoder: FrameDecoder) -> None:
    attrs = kv_list(STATUS, encode=True)
    attrs[1]["value"] = "not base64!"
    frame = data_into(load(GAIA_BLOCK), [], ("result_end_block",))
    frame["result"]["data"]["value"]["result_end_block"]["events"] = [
        {"type": "MarketStatus", "attributes": attrs}
    ]
    with pytest.raises(InvalidEvent, match="base64"):
        decoder.decode(dumps(frame))


def test_duplicate_attribute(decoder: FrameDecoder) -> None:
    attrs = [*kv_list(STATUS), *kv_list({"status": "open"}, encode=True)]
    with pytest.raises(InvalidEvent, match="twice"):
        decoder.decode(form1([("MarketStatus", attrs)]))


def test_unknown_attributes_are_ignored(decoder: FrameDecoder) -> None:
    extra = {"msg_index": "0", "venue": "x"}
    msg = decoder.decode(form1([(t, kv_list(a | extra)) for t, a in EVENTS]))
    check_expected(msg.events)


def test_errors_are_value_errors() -> None:
    assert issubclass(MalformedFrame, FrameError)
    assert issubclass(InvalidEvent, FrameError)
    assert issubclass(FrameError, ValueError)


# ---------------------------------------------------------------- fuzz: only FrameError escapes


def decode_or_frame_error(decoder: FrameDecoder, frame: bytes | str) -> None:
    try:
        msg = decoder.decode(frame)
    except FrameError:
        return
    assert isinstance(msg, SubscribeAck | RpcResult | RpcError | Notification)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_or_frame_error(FrameDecoder(), data)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    decode_or_frame_error(FrameDecoder(), text)


VOCAB_KEYS = [
    "jsonrpc", "id", "result", "error", "code", "message", "data", "query", "events",
    "value", "TxResult", "result_begin_block", "result_end_block", "result_finalize_block",
    "tx_results", "type", "attributes", "key", "index", *KNOWN_EVENT_TYPES,
    "market_id", "timestamp", "sequence", "kind", "bids", "asks", "price", "size", "side",
    "trade_id", "status", "OrderBookUpdate.bids", "Trade.side", "tm.event",
]  # fmt: skip
VOCAB_STRINGS = [
    "2.0", *KNOWN_EVENT_TYPES, "snapshot", "delta", "buy", "sell", "open", "halted",
    "closed", "", "-1", "42", '[["0.45","1"]]', "[[", '[["0","1"]]', "2024-03-01T12:00:00Z",
    b64("market_id"), b64("status"), b64("sequence"), "bm90IGJhc2U2NA", "\x00", "é",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(VOCAB_STRINGS)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(VOCAB_KEYS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    decode_or_frame_error(FrameDecoder(), dumps(value))
    decode_or_frame_error(FrameDecoder(), dumps({"jsonrpc": "2.0", "id": 1, "result": value}))


SEEDS = [
    json.loads(form1(EVENTS)),
    json.loads(form1([(t, kv_list(a)) for t, a in EVENTS])),
    flat_into(load(KV_TX), EVENTS),
    data_into(load(KV_TX), EVENTS, ("TxResult", "result")),
    data_into(load(GAIA_BLOCK), EVENTS, ("result_end_block",), encode=True),
    load("kvstore_v0_37/subscribe_malformed.json"),
    load("kvstore_v0_37/subscribe_txs.json"),
    load("kvstore_v0_37/subscribe_txs_broadcast_tx_0.json"),
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(frame: Any, path: tuple, how: str, new: Any) -> Any:
    frame = copy.deepcopy(frame)
    if not path:
        return new
    parent = frame
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "insert" and isinstance(parent[last], dict):
        parent[last][new if isinstance(new, str) else "market_id"] = new
    elif how == "append" and isinstance(parent[last], list):
        parent[last].append(new)
    else:
        parent[last] = new
    return frame


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_frames(data: st.DataObject) -> None:
    frame = data.draw(st.sampled_from(SEEDS))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(frame)
        path = data.draw(st.sampled_from(paths))
        how = data.draw(st.sampled_from(["replace", "delete", "insert", "append"]))
        if how == "delete" and not path:
            continue
        frame = _mutate(frame, path, how, data.draw(json_values))
    text = dumps(frame)
    decoder = FrameDecoder(arena_rows=16)
    decode_or_frame_error(decoder, text)
    # Byte-level damage too: truncation and a flipped byte.
    cut = data.draw(st.integers(0, len(text)))
    decode_or_frame_error(decoder, text[:cut])
    pos = data.draw(st.integers(0, len(text) - 1))
    byte = data.draw(st.integers(0, 255))
    decode_or_frame_error(decoder, text[:pos] + bytes([byte]) + text[pos + 1 :])


def test_wrong_python_types(decoder: FrameDecoder) -> None:
    for frame in (None, 5, 1.5, ["x"], {"jsonrpc": "2.0"}):
        with pytest.raises(MalformedFrame):
            decoder.decode(frame)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the level arena


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_two_updates_get_consecutive_distinct_slices(decoder: FrameDecoder) -> None:
    second = BOOK | {"sequence": "43", "bids": '[["0.4499","7"]]', "asks": '[["0.4505","8"]]'}
    first_update, second_update = decoder.decode(
        form1([("OrderBookUpdate", BOOK), ("OrderBookUpdate", second)])
    ).events
    np.testing.assert_array_equal(first_update.bids, [[0.4501, 100.0], [0.4500, 250.5]])
    np.testing.assert_array_equal(first_update.asks, [[0.4503, 75.0]])
    np.testing.assert_array_equal(second_update.bids, [[0.4499, 7.0]])
    np.testing.assert_array_equal(second_update.asks, [[0.4505, 8.0]])
    views = [first_update.bids, first_update.asks, second_update.bids, second_update.asks]
    for i, a in enumerate(views):
        assert a.flags.c_contiguous
        assert a.dtype == np.float64
        assert not a.flags.writeable
        for b in views[i + 1 :]:
            assert not np.shares_memory(a, b)
    # Consecutive rows of one arena.
    for a, b in itertools.pairwise(views):
        assert _address(a) + a.nbytes == _address(b)


def test_next_decode_overwrites_views(decoder: FrameDecoder) -> None:
    first = decoder.decode(form1([("OrderBookUpdate", BOOK)])).events[0]
    kept = first.bids.copy()
    other = BOOK | {"bids": '[["1.5","3"],["1.4","4"]]'}
    second = decoder.decode(form1([("OrderBookUpdate", other)])).events[0]
    np.testing.assert_array_equal(second.bids, [[1.5, 3.0], [1.4, 4.0]])
    np.testing.assert_array_equal(first.bids, second.bids)  # overwritten, as documented
    np.testing.assert_array_equal(kept, [[0.4501, 100.0], [0.4500, 250.5]])


def test_decoders_do_not_share_arenas() -> None:
    a, b = FrameDecoder(), FrameDecoder()
    first = a.decode(form1([("OrderBookUpdate", BOOK)])).events[0]
    b.decode(form1([("OrderBookUpdate", BOOK | {"bids": '[["9","9"]]'})]))
    np.testing.assert_array_equal(first.bids, [[0.4501, 100.0], [0.4500, 250.5]])


def test_arena_grows_and_keeps_earlier_views_valid() -> None:
    decoder = FrameDecoder(arena_rows=16)
    rows = np.column_stack([np.arange(1, 3001) / 100, np.arange(3000) + 1.0])
    big = BookUpdate("SEI/USDC", 0, 5, True, rows, rows[:1000])
    small = BookUpdate("SEI/USDC", 0, 4, False, rows[:3], rows[3:6])
    for _ in range(2):  # the second time the grown arena is reused
        msg = decoder.decode(encode_notification(1, QUERY, [small, big, small]))
        assert_same_events(msg.events, [small, big, small])


def test_bad_level_list_larger_than_the_arena_is_an_invalid_event() -> None:
    rows = ",".join(f'["{100 + k}","1"]' for k in range(40)) + ',["0","1"]'
    with pytest.raises(InvalidEvent, match="bids: invalid level"):
        FrameDecoder(arena_rows=16).decode(
            form1([("OrderBookUpdate", BOOK | {"bids": f"[{rows}]"})])
        )


def test_invalid_utf8_inside_a_level_list_is_a_malformed_frame(decoder: FrameDecoder) -> None:
    # The typed decoder keeps the level lists as raw tokens, unchecked; this must not
    # escape as a UnicodeDecodeError.
    data = form1([("OrderBookUpdate", BOOK)]).replace(b'0.4503\\"', b'0.45\x80\\"')
    assert b"\x80" in data
    with pytest.raises(MalformedFrame, match="invalid JSON in asks"):
        decoder.decode(data)


def test_decoded_frames_drive_the_order_book(decoder: FrameDecoder) -> None:
    book = OrderBook(tick_size=0.0001, lot_size=1.0)
    snapshot = BOOK | {"kind": "snapshot", "bids": '[["0.4501","100"]]', "sequence": "1"}
    update = decoder.decode(form1([("OrderBookUpdate", snapshot)])).events[0]
    assert book.apply_snapshot(update.bids, update.asks, update.sequence) == OK
    delta = BOOK | {"sequence": "2", "bids": '[["0.4501","0"],["0.4500","5"]]'}
    update = decoder.decode(form1([("OrderBookUpdate", delta)])).events[0]
    assert book.apply_delta(update.bids, update.asks, update.sequence) == OK
    assert book.sequence == 2


def test_result_structs_are_tagged() -> None:
    # Tagged structs: a Trade/MarketStatus can be shipped through msgspec as a union.
    trade = Trade("SEI/USDC", 1, 0.5, 2.0, 1, "t")
    encoded = msgspec.json.encode(trade)
    assert json.loads(encoded)["type"] == "Trade"
    assert msgspec.json.decode(encoded, type=Trade | MarketStatus) == trade
