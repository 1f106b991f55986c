"""Venue market-data frames: JSON-RPC 2.0 over the CometBFT ``/websocket`` endpoint.

:class:`FrameDecoder` turns one WebSocket text frame into one typed message:

- :class:`SubscribeAck` -- ``{"jsonrpc":"2.0","id":1,"result":{}}``;
- :class:`RpcError` -- a JSON-RPC error reply (e.g. a malformed query, code ``-32603``);
- :class:`RpcResult` -- any other reply on the same socket (``broadcast_tx_async`` ...);
- :class:`Notification` -- a subscription event: a ``result`` object carrying ``query``
  or ``events``. Its events are :class:`BookUpdate`, :class:`Trade` and
  :class:`MarketStatus`; every other event type is listed in ``unknown_types``
  (CometBFT frames always carry some, e.g. ``app``, ``transfer``, ``mint``).

Events are read from three wire forms, any one of which may be the only one present:

1. the specification form: ``result.events`` is a list of ``{"type", "attributes"}``;
   ``attributes`` is an object or a CometBFT list of ``{"key", "value", "index"}``;
2. the CometBFT flat map: ``result.events`` is ``{"<type>.<attr>": [values, ...]}``;
   several occurrences of one type are zipped by index (attribute lists of unequal
   length for a known type are ambiguous: :class:`InvalidEvent`);
3. the structured data: ``result.data.value`` ``TxResult.result.events``,
   ``result_begin_block.events``, ``result_end_block.events``,
   ``result_finalize_block.events`` and ``.tx_results[].events``, and ``events``
   (``NewBlockEvents``), where attribute keys and values are plain text or base64
   (Tendermint <= 0.34). Per attribute: a key that is a known attribute name is plain;
   otherwise, if the key base64-decodes to a known name, key and value are base64.

Per event type the structured data (3) wins; ``result.events`` (form 1 or 2) is used only
for known types that (3) does not contain.

Attribute objects (form 1) are typed: a known attribute name carrying another JSON type
than a string (or a number, for ``sequence``, ``price``, ``size``, ``trade_id``) is a
:class:`MalformedFrame` naming its path, even in an event of an unknown type. Values are
strict: ``kind``, ``side`` and ``status`` are lower case, sequences are ASCII digits,
timestamps must fall in years 1678-2261 (int64 ns).

Decoding is all-or-nothing: a frame with any invalid known event raises
:class:`InvalidEvent` and yields nothing. :meth:`FrameDecoder.decode` raises only
:class:`FrameError` subclasses, whatever the input.

The codec does not check sequence numbers across frames: ``flashmm._core.book.OrderBook``
answers ``STALE`` or ``GAP`` for a frame out of order.

The encoders below (subscribe requests, acks, errors, notifications in form 1) are what
the local venue simulator sends, so the codec and the simulator cannot drift apart.
"""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import numpy as np

from flashmm._core.wire import BOOK as ONE_BOOK
from flashmm._core.wire import (
    EventFrameReader,
    LevelsFormatError,
    format_levels_fixed,
    max_levels,
    parse_levels,
    parse_levels_json,
    parse_rfc3339_ns,
)

__all__ = [
    "KNOWN_EVENT_TYPES",
    "MARKET_STATUSES",
    "BookUpdate",
    "FrameDecoder",
    "FrameError",
    "InvalidEvent",
    "MalformedFrame",
    "MarketStatus",
    "Notification",
    "QueryError",
    "QueryParams",
    "RpcError",
    "RpcResult",
    "SubscribeAck",
    "SubscribeRequest",
    "Trade",
    "UnsubscribeRequest",
    "decode_request",
    "encode_ack",
    "encode_error",
    "encode_events",
    "encode_notification",
    "encode_notification_raw",
    "encode_subscribe",
    "encode_unsubscribe",
    "format_levels",
    "format_query",
    "format_rfc3339_ns",
    "parse_query",
]

KNOWN_EVENT_TYPES: tuple[str, ...] = ("OrderBookUpdate", "Trade", "MarketStatus")
"""The event types the codec decodes; every other type goes to ``unknown_types``."""

MARKET_STATUSES: frozenset[str] = frozenset({"open", "halted", "closed"})

_ATTRIBUTE_NAMES: dict[str, frozenset[str]] = {
    "OrderBookUpdate": frozenset({"market_id", "timestamp", "sequence", "kind", "bids", "asks"}),
    "Trade": frozenset({"market_id", "timestamp", "price", "size", "side", "trade_id"}),
    "MarketStatus": frozenset({"market_id", "status"}),
}

# Keys of the flat map that CometBFT adds to every notification; they are not events.
_FLAT_META_KEYS = frozenset({"tm.event", "tx.hash", "tx.height"})

_INT64_MAX = 2**63 - 1
_VIEW_SLOTS = 1024  # a power of two: slots of the decoder's direct-mapped view cache
# Integer ns since the epoch fit in int64 from 1677-09-21 to 2262-04-11: timestamps are
# accepted from year 1678 to 2261 (compared as text, which is validated by the parser).
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


# ---------------------------------------------------------------------------- errors


class FrameError(ValueError):
    """A frame could not be decoded. Base of every error :meth:`FrameDecoder.decode` raises."""


class MalformedFrame(FrameError):
    """Not JSON, not a JSON-RPC 2.0 response, or a field of the wrong type or missing."""


class InvalidEvent(FrameError):
    """A known event (``OrderBookUpdate``, ``Trade``, ``MarketStatus``) with bad attributes."""


class QueryError(ValueError):
    """A subscription query other than ``tm.event='<type>' AND market_id='<market>'``."""


# ---------------------------------------------------------------------------- results


class BookUpdate(msgspec.Struct, tag=True, gc=False, eq=False):
    """One ``OrderBookUpdate``: a snapshot (replace the book) or a delta (absolute sizes).

    ``bids`` and ``asks`` are read-only ``(n, 2)`` float64 ``[price, size]`` views into the
    level arena of the :class:`FrameDecoder` that produced them. They stay valid only
    until that decoder's next :meth:`~FrameDecoder.decode` call, which overwrites the
    arena: copy them (``np.array(update.bids)``) to keep them longer. Frames of the same
    shape may get the very same view objects. Compared by identity (``eq=False``).
    """

    market_id: str
    timestamp_ns: int
    sequence: int
    is_snapshot: bool
    bids: np.ndarray
    asks: np.ndarray


class Trade(msgspec.Struct, tag=True, gc=False):
    """One ``Trade``; ``side`` is the taker's: +1 buy, -1 sell."""

    market_id: str
    timestamp_ns: int
    price: float
    size: float
    side: int
    trade_id: str


class MarketStatus(msgspec.Struct, tag=True, gc=False):
    """One ``MarketStatus``; ``status`` is ``open``, ``halted`` or ``closed``."""

    market_id: str
    status: str


class SubscribeAck(msgspec.Struct, tag=True, gc=False):
    """The empty result that acknowledges a (un)subscribe request."""

    id: int | str | None


class RpcResult(msgspec.Struct, tag=True, gc=False):
    """Any other JSON-RPC result on the socket (``result`` is the decoded object)."""

    id: int | str | None
    result: dict[str, Any]


class RpcError(msgspec.Struct, tag=True, gc=False):
    """A JSON-RPC error reply. A non-string ``data`` is kept as its JSON text."""

    id: int | str | None
    code: int
    message: str
    data: str | None = None


class Notification(msgspec.Struct, tag=True, gc=False):
    """A subscription notification: the known events, in wire order, and the other types."""

    id: int | str | None
    query: str
    events: list[BookUpdate | Trade | MarketStatus]
    unknown_types: tuple[str, ...] = ()


Event = BookUpdate | Trade | MarketStatus
Message = SubscribeAck | RpcResult | RpcError | Notification


# ---------------------------------------------------------------------------- wire model


class _KeyValue(msgspec.Struct, gc=False):
    key: str | None = None
    value: str | None = None


class _Attributes(msgspec.Struct, gc=False):
    # Every attribute of every known type; unknown attributes are skipped by msgspec.
    market_id: str | None = None
    timestamp: str | None = None
    sequence: int | str | None = None
    kind: str | None = None
    # The level lists stay raw JSON string tokens from the typed decoder (read in place
    # by parse_levels_json); the other event forms put decoded str here.
    bids: msgspec.Raw = msgspec.Raw()  # empty: absent
    asks: msgspec.Raw = msgspec.Raw()
    price: str | float | None = None
    size: str | float | None = None
    side: str | None = None
    trade_id: str | int | None = None
    status: str | None = None


class _Event(msgspec.Struct, gc=False):
    type: str
    attributes: _Attributes | list[_KeyValue] | None = None


class _EventList(msgspec.Struct, gc=False):
    events: list[_Event] | None = None


class _FinalizeBlock(msgspec.Struct, gc=False):
    events: list[_Event] | None = None
    tx_results: list[_EventList] | None = None


class _TxResult(msgspec.Struct, gc=False):
    result: _EventList | None = None


class _DataValue(msgspec.Struct, gc=False):
    result_begin_block: _EventList | None = None
    TxResult: _TxResult | None = None
    result_end_block: _EventList | None = None
    result_finalize_block: _FinalizeBlock | None = None
    events: list[_Event] | None = None


class _Data(msgspec.Struct, gc=False):
    value: _DataValue | None = None


class _Result(msgspec.Struct, gc=False):
    query: str | None = None
    data: _Data | None = None
    events: list[_Event] | dict[str, list[str]] | None = None


class _ErrorBody(msgspec.Struct, gc=False):
    code: int
    message: str
    data: Any = None


class _Envelope(msgspec.Struct, gc=False):
    jsonrpc: Literal["2.0"]
    id: int | str | None = None
    result: _Result | None = None
    error: _ErrorBody | None = None


# ---------------------------------------------------------------------------- decoding


def _invalid(etype: str, attrs: _Attributes, problem: str) -> InvalidEvent:
    market = attrs.market_id
    where = f" for market {market!r}" if isinstance(market, str) and market else ""
    return InvalidEvent(f"{etype}{where}: {problem}")


def _market_id(etype: str, a: _Attributes) -> str:
    market = a.market_id
    if not market:
        raise _invalid(etype, a, "missing market_id")
    return market


def _timestamp_ns(etype: str, a: _Attributes) -> int:
    text = a.timestamp
    if text is None:
        raise _invalid(etype, a, "missing timestamp")
    try:
        ns = parse_rfc3339_ns(text)
    except ValueError as exc:
        raise _invalid(etype, a, str(exc)) from None
    return ns


def _sequence(a: _Attributes) -> int:
    seq = a.sequence
    if type(seq) is str:
        if not (seq.isascii() and seq.isdigit() and len(seq) <= 19):
            problem = "negative sequence" if seq[:1] == "-" else "sequence is not an integer"
            raise _invalid("OrderBookUpdate", a, f"{problem}: {seq[:40]!r}")
        seq = int(seq)
    elif seq is None:
        raise _invalid("OrderBookUpdate", a, "missing sequence")
    if seq < 0:
        raise _invalid("OrderBookUpdate", a, f"negative sequence: {seq}")
    if seq > _INT64_MAX:
        raise _invalid("OrderBookUpdate", a, f"sequence out of range: {seq}")
    return seq


def _positive(etype: str, a: _Attributes, name: str, value: str | float | None) -> float:
    if value is None:
        raise _invalid(etype, a, f"missing {name}")
    if type(value) is str:
        if _DECIMAL.fullmatch(value) is None:
            raise _invalid(etype, a, f"{name} is not a decimal number: {value[:40]!r}")
        value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise _invalid(etype, a, f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _trade(a: _Attributes) -> Trade:
    market = _market_id("Trade", a)
    ts = _timestamp_ns("Trade", a)
    price = _positive("Trade", a, "price", a.price)
    size = _positive("Trade", a, "size", a.size)
    side_text = a.side
    if side_text == "buy":
        side = 1
    elif side_text == "sell":
        side = -1
    elif side_text is None:
        raise _invalid("Trade", a, "missing side")
    else:
        raise _invalid("Trade", a, f"side must be 'buy' or 'sell', got {side_text[:40]!r}")
    trade_id = a.trade_id
    if trade_id is None or trade_id == "":
        raise _invalid("Trade", a, "missing trade_id")
    return Trade(market, ts, price, size, side, str(trade_id))


def _market_status(a: _Attributes) -> MarketStatus:
    market = _market_id("MarketStatus", a)
    status = a.status
    if status is None:
        raise _invalid("MarketStatus", a, "missing status")
    if status not in MARKET_STATUSES:
        raise _invalid("MarketStatus", a, f"unknown status {status[:40]!r}")
    return MarketStatus(market, status)


def _b64_text(text: str) -> str:
    return base64.b64decode(text, validate=True).decode("utf-8")


def _from_key_values(etype: str, pairs: list[_KeyValue]) -> _Attributes:
    """CometBFT ``[{key, value}]`` attributes (plain or base64) of a known event type."""
    names = _ATTRIBUTE_NAMES[etype]
    found: dict[str, str | None] = {}
    for pair in pairs:
        key = pair.key
        if key is None:
            continue
        value = pair.value
        if key not in names:
            try:
                key = _b64_text(key)
            except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
                continue
            if key not in names:
                continue
            if value is not None:
                try:
                    value = _b64_text(value)
                except ValueError:
                    raise InvalidEvent(
                        f"{etype}: attribute {key!r} has a base64 key but its value "
                        "is not base64-encoded UTF-8"
                    ) from None
        if key in found:
            raise InvalidEvent(f"{etype}: attribute {key!r} appears twice")
        found[key] = value
    return _Attributes(**found)


class FrameDecoder:
    """Decodes the frames of one connection; build one per connection and reuse it.

    The msgspec decoder and a growable float64 level arena are built once. The level
    arrays of the :class:`BookUpdate` events of one frame are consecutive read-only
    slices of that arena, valid until the next :meth:`decode` call on this decoder.
    """

    __slots__ = ("_arena", "_decode", "_offset", "_read_one", "_views")

    _views: list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None]

    def __init__(self, arena_rows: int = 1024) -> None:
        self._decode = msgspec.json.Decoder(_Envelope).decode
        self._read_one = EventFrameReader().read
        self._new_arena(max(int(arena_rows), 16))
        self._offset = 0

    def _new_arena(self, rows: int) -> np.ndarray:
        arena = np.empty((rows, 2), dtype=np.float64)
        # The views handed out are read-only; ``parse_levels`` writes through C.
        arena.flags.writeable = False
        self._arena = arena
        self._views = [None] * _VIEW_SLOTS
        return arena

    def decode(self, frame: bytes | str) -> SubscribeAck | RpcResult | RpcError | Notification:
        """Decode one frame. Raises :class:`MalformedFrame` or :class:`InvalidEvent`."""
        if type(frame) is bytes:
            # One book update or trade in one pass; None leaves any other to msgspec.
            one = self._read_one(frame, self._arena)
            if one is not None:
                if one[0] == ONE_BOOK:
                    _, rid, query, market, ts, seq, is_snapshot, b0, b1, a0, a1 = one
                    bids, asks = self._level_views(b0, b1, a0, a1)
                    event: Event = BookUpdate(market, ts, seq, is_snapshot, bids, asks)
                else:
                    _, rid, query, market, ts, price, size, side, trade_id = one
                    event = Trade(market, ts, price, size, side, trade_id)
                return Notification(rid, query, [event])
        try:
            env = self._decode(frame)
        except msgspec.ValidationError as exc:
            return self._untyped(frame, exc)
        except msgspec.DecodeError as exc:
            raise MalformedFrame(f"invalid JSON: {exc}") from None
        except (UnicodeError, RecursionError) as exc:
            raise MalformedFrame(f"undecodable frame: {exc}") from None
        except TypeError as exc:
            raise MalformedFrame(f"a frame must be bytes or str: {exc}") from None
        res = env.result
        if res is None or env.error is not None:
            return self._reply(env)
        events = res.events
        if type(events) is not list or res.data is not None:
            if events is None and res.query is None:
                return self._untyped(frame, None)
            return self._notification(env.id, res)
        # Hot path: the specification form, a list of events and no structured data.
        self._offset = 0
        out: list[BookUpdate | Trade | MarketStatus] = []
        unknown: dict[str, None] | None = None
        for ev in events:
            etype = ev.type
            attrs = ev.attributes
            if etype == "OrderBookUpdate" and type(attrs) is _Attributes:
                out.append(self._book(attrs))
            elif etype in _ATTRIBUTE_NAMES:
                out.append(self._event(etype, attrs))
            else:
                if unknown is None:
                    unknown = {}
                unknown[etype] = None
        return Notification(env.id, res.query or "", out, () if unknown is None else tuple(unknown))

    @staticmethod
    def _reply(env: _Envelope) -> RpcError:
        res = env.result
        err = env.error
        if err is None:
            raise MalformedFrame("a JSON-RPC response needs a result object or an error")
        if res is not None:
            raise MalformedFrame("a JSON-RPC response carries both result and error")
        data = err.data
        if data is not None and type(data) is not str:
            data = msgspec.json.encode(data).decode()
        return RpcError(env.id, err.code, err.message, data)

    # ------------------------------------------------------------------ other results

    @staticmethod
    def _untyped(frame: bytes | str, error: msgspec.ValidationError | None) -> Message:
        """An ack or a result without ``query``/``events``; else :class:`MalformedFrame`.

        Only such results are decoded untyped (their fields are not modelled). ``error``
        is the typed decoder's complaint, reported when the frame is not one of them.
        """
        try:
            obj = msgspec.json.decode(frame)
        except (msgspec.DecodeError, UnicodeError, RecursionError, TypeError) as exc:
            raise MalformedFrame(f"invalid JSON: {exc}") from None
        result = obj.get("result") if type(obj) is dict else None
        if not (
            type(result) is dict
            and obj.get("jsonrpc") == "2.0"
            and obj.get("error") is None
            and type(obj.get("id")) in (int, str, type(None))
            and result.get("query") is None
            and result.get("events") is None
        ):
            raise MalformedFrame(f"malformed frame: {error or 'not a JSON-RPC 2.0 response'}")
        if not result:
            return SubscribeAck(obj.get("id"))
        return RpcResult(obj.get("id"), result)

    # ------------------------------------------------------------------ notifications

    def _notification(self, request_id: int | str | None, res: _Result) -> Notification:
        self._offset = 0
        out: list[BookUpdate | Trade | MarketStatus] = []
        unknown: dict[str, None] = {}
        events = res.events
        data = res.data
        if data is None or data.value is None:
            if type(events) is list:
                self._events(events, out, unknown, None)
            elif events is not None:
                self._flat(events, out, unknown, None)
            return Notification(request_id, res.query or "", out, tuple(unknown))
        # Structured data first; result.events only for known types it lacks.
        from_data: set[str] = set()
        for source in _data_sources(data.value):
            self._events(source, out, unknown, from_data)
        if type(events) is list:
            self._events(events, out, unknown, None, skip=from_data)
        elif events is not None:
            self._flat(events, out, unknown, from_data)
        return Notification(request_id, res.query or "", out, tuple(unknown))

    def _events(
        self,
        events: list[_Event],
        out: list[BookUpdate | Trade | MarketStatus],
        unknown: dict[str, None],
        seen: set[str] | None,
        skip: set[str] | None = None,
    ) -> None:
        for ev in events:
            etype = ev.type
            if etype not in _ATTRIBUTE_NAMES:
                unknown[etype] = None
                continue
            if skip is not None and etype in skip:
                continue
            if seen is not None:
                seen.add(etype)
            out.append(self._event(etype, ev.attributes))

    def _flat(
        self,
        flat: dict[str, list[str]],
        out: list[BookUpdate | Trade | MarketStatus],
        unknown: dict[str, None],
        skip: set[str] | None,
    ) -> None:
        grouped: dict[str, dict[str, list[str]]] = {}
        for key, values in flat.items():
            if key in _FLAT_META_KEYS:
                continue
            etype, dot, attr = key.rpartition(".")
            if not dot:
                etype = key
            if etype not in _ATTRIBUTE_NAMES:
                unknown[etype] = None
            elif dot and (skip is None or etype not in skip):
                grouped.setdefault(etype, {})[attr] = values
        for etype, columns in grouped.items():
            lengths = {len(values) for values in columns.values()}
            if len(lengths) != 1:
                detail = ", ".join(f"{a}={len(v)}" for a, v in columns.items())
                raise InvalidEvent(
                    f"{etype}: ambiguous flat event map, attribute lists differ in length "
                    f"({detail}); cannot tell which values belong together"
                )
            names = _ATTRIBUTE_NAMES[etype]
            known = {a: v for a, v in columns.items() if a in names}
            for i in range(lengths.pop()):
                attrs = _Attributes(**{a: v[i] for a, v in known.items()})
                out.append(self._event(etype, attrs))

    def _event(
        self, etype: str, a: _Attributes | list[_KeyValue] | None
    ) -> BookUpdate | Trade | MarketStatus:
        if type(a) is not _Attributes:
            if a is None:
                raise InvalidEvent(f"{etype}: no attributes")
            a = _from_key_values(etype, a)
        if etype == "OrderBookUpdate":
            return self._book(a)
        if etype == "Trade":
            return _trade(a)
        return _market_status(a)

    def _book(self, a: _Attributes) -> BookUpdate:
        market = a.market_id
        if not market:
            raise _invalid("OrderBookUpdate", a, "missing market_id")
        kind = a.kind
        if kind is None or kind == "snapshot":
            is_snapshot = True
        elif kind == "delta":
            is_snapshot = False
        else:
            raise _invalid(
                "OrderBookUpdate", a, f"kind must be 'snapshot' or 'delta', got {kind[:40]!r}"
            )
        seq = a.sequence
        if type(seq) is str and seq.isdigit() and seq.isascii() and len(seq) < 19:
            seq = int(seq)
        elif type(seq) is not int or seq < 0 or seq > _INT64_MAX:
            seq = _sequence(a)  # the careful path: converts or raises
        ts_text = a.timestamp
        bids_text = a.bids
        asks_text = a.asks
        arena = self._arena
        start = self._offset
        try:
            ts = parse_rfc3339_ns(ts_text)
            if type(bids_text) is msgspec.Raw and type(asks_text) is msgspec.Raw:
                n = parse_levels_json(bids_text, arena, start)
                if n < 0:
                    raise ValueError
                mid = start + n
                n = parse_levels_json(asks_text, arena, mid)
                if n < 0:
                    raise ValueError
                end = mid + n
            else:
                mid = start + parse_levels(bids_text, arena, start)
                end = mid + parse_levels(asks_text, arena, mid)
        except (ValueError, TypeError):
            # A missing or malformed field, or a full arena: the careful path.
            ts = _timestamp_ns("OrderBookUpdate", a)
            bids = self._levels(a, "bids", _level_text(a, "bids", bids_text))
            asks = self._levels(a, "asks", _level_text(a, "asks", asks_text))
            return BookUpdate(market, ts, seq, is_snapshot, bids, asks)
        self._offset = end
        bids, asks = self._level_views(start, mid, mid, end)
        return BookUpdate(market, ts, seq, is_snapshot, bids, asks)

    def _level_views(
        self, bids_at: int, bids_end: int, asks_at: int, asks_end: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # Views depend only on the arena and the offsets: frames of the same shape reuse
        # them (the arena contract makes that invisible). The cache is direct-mapped, so
        # a miss frees at most one pair of views; clearing a full cache at once had cost
        # one frame in a few hundred some 20 µs.
        slot = (bids_at * 7919 + bids_end * 131 + asks_at * 17 + asks_end) & (_VIEW_SLOTS - 1)
        entry = self._views[slot]
        if entry is None or entry[0] != (bids_at, bids_end, asks_at, asks_end):
            arena = self._arena
            entry = self._views[slot] = (
                (bids_at, bids_end, asks_at, asks_end),
                arena[bids_at:bids_end],
                arena[asks_at:asks_end],
            )
        return entry[1], entry[2]

    def _levels(self, a: _Attributes, side: str, text: str | None) -> np.ndarray:
        if text is None:
            raise _invalid("OrderBookUpdate", a, f"missing {side}")
        arena = self._arena
        start = self._offset
        room = max_levels(text)
        if len(arena) - start < room:
            # Perhaps out of room: a fresh, larger arena. Views already handed out for
            # this frame keep the old one alive, so they stay valid.
            arena = self._new_arena(max(2 * len(arena), room))
            start = 0
        try:
            n = parse_levels(text, arena, start)
        except LevelsFormatError as exc:
            raise _invalid("OrderBookUpdate", a, f"{side}: {exc}") from None
        self._offset = start + n
        return arena[start : start + n]


def _level_text(a: _Attributes, side: str, value: msgspec.Raw | str | None) -> str | None:
    """The level list as text, whichever form the frame carried it in."""
    if type(value) is not msgspec.Raw:
        return value
    try:
        text = msgspec.json.decode(value) if len(value) else None
    except (msgspec.DecodeError, UnicodeError) as exc:
        # The typed decoder leaves a raw token's bytes unchecked: invalid UTF-8 shows here.
        raise MalformedFrame(f"invalid JSON in {side}: {exc}") from None
    if text is not None and type(text) is not str:
        raise _invalid(
            "OrderBookUpdate", a, f"{side} must be a JSON string holding [[price, size], ...]"
        )
    return text


def _data_sources(value: _DataValue) -> list[list[_Event]]:
    sources: list[list[_Event]] = []
    if value.result_begin_block is not None and value.result_begin_block.events:
        sources.append(value.result_begin_block.events)
    tx = value.TxResult
    if tx is not None and tx.result is not None and tx.result.events:
        sources.append(tx.result.events)
    if value.result_end_block is not None and value.result_end_block.events:
        sources.append(value.result_end_block.events)
    fin = value.result_finalize_block
    if fin is not None:
        if fin.events:
            sources.append(fin.events)
        for txr in fin.tx_results or ():
            if txr.events:
                sources.append(txr.events)
    if value.events:
        sources.append(value.events)
    return sources


# ---------------------------------------------------------------------------- requests


class QueryParams(msgspec.Struct, gc=False):
    query: str


class SubscribeRequest(msgspec.Struct, kw_only=True, tag_field="method", tag="subscribe"):
    """``{"jsonrpc":"2.0","method":"subscribe","id":..,"params":{"query":..}}``."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: int | str
    params: QueryParams


class UnsubscribeRequest(msgspec.Struct, kw_only=True, tag_field="method", tag="unsubscribe"):
    """``{"jsonrpc":"2.0","method":"unsubscribe","id":..,"params":{"query":..}}``."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: int | str
    params: QueryParams


_ENCODE = msgspec.json.Encoder().encode
_DECODE_REQUEST = msgspec.json.Decoder(SubscribeRequest | UnsubscribeRequest).decode

_QUERY = re.compile(
    r"\s*tm\.event\s*=\s*'(?P<type>[^']*)'\s*AND\s+market_id\s*=\s*'(?P<market>[^']*)'\s*"
)


def _check_query_parts(event_type: str, market_id: str) -> None:
    if event_type not in _ATTRIBUTE_NAMES:
        raise QueryError(
            f"unsupported event type {event_type!r}; expected one of {KNOWN_EVENT_TYPES}"
        )
    if not market_id or market_id != market_id.strip() or "'" in market_id:
        raise QueryError(f"invalid market_id {market_id!r} in query")


def format_query(event_type: str, market_id: str) -> str:
    """``tm.event='<event_type>' AND market_id='<market_id>'``; :class:`QueryError` if invalid."""
    _check_query_parts(event_type, market_id)
    return f"tm.event='{event_type}' AND market_id='{market_id}'"


def parse_query(query: str) -> tuple[str, str]:
    """``(event_type, market_id)`` of ``tm.event='X' AND market_id='Y'``.

    Whitespace around ``=`` and ``AND`` is tolerated; any other query, or an event type
    outside :data:`KNOWN_EVENT_TYPES`, raises :class:`QueryError`.
    """
    m = _QUERY.fullmatch(query) if isinstance(query, str) else None
    if m is None:
        raise QueryError(
            f"unsupported query {str(query)[:80]!r}; "
            "expected tm.event='<type>' AND market_id='<market>'"
        )
    event_type, market_id = m.group("type"), m.group("market")
    _check_query_parts(event_type, market_id)
    return event_type, market_id


def encode_subscribe(request_id: int | str, event_type: str, market_id: str) -> bytes:
    """A ``subscribe`` request for one event type of one market."""
    query = format_query(event_type, market_id)
    return _ENCODE(SubscribeRequest(id=request_id, params=QueryParams(query)))


def encode_unsubscribe(request_id: int | str, event_type: str, market_id: str) -> bytes:
    """The ``unsubscribe`` request matching :func:`encode_subscribe`."""
    query = format_query(event_type, market_id)
    return _ENCODE(UnsubscribeRequest(id=request_id, params=QueryParams(query)))


def decode_request(frame: bytes | str) -> SubscribeRequest | UnsubscribeRequest:
    """A (un)subscribe request, as the simulator receives it; :class:`MalformedFrame` else.

    The query itself is not checked: use :func:`parse_query` to answer with an error.
    """
    try:
        return _DECODE_REQUEST(frame)
    except (msgspec.DecodeError, UnicodeError, RecursionError, TypeError) as exc:
        raise MalformedFrame(f"malformed request: {exc}") from None


# ---------------------------------------------------------------------------- replies


def encode_ack(request_id: int | str | None) -> bytes:
    """``{"jsonrpc":"2.0","id":<id>,"result":{}}``."""
    return _ENCODE({"jsonrpc": "2.0", "id": request_id, "result": {}})


def encode_error(
    request_id: int | str | None, code: int, message: str, data: str | None = None
) -> bytes:
    """A JSON-RPC error reply (``data`` is omitted when ``None``)."""
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return _ENCODE({"jsonrpc": "2.0", "id": request_id, "error": error})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_last_second: list = [None, ""]


def format_rfc3339_ns(timestamp_ns: int) -> str:
    """Integer ns since the epoch as ``YYYY-MM-DDTHH:MM:SS.fffffffffZ`` (9 digits, UTC).

    The decoder accepts years 1678 to 2261 (int64 ns); ``ValueError`` outside int64.
    """
    timestamp_ns = int(timestamp_ns)
    if not -(2**63) <= timestamp_ns <= _INT64_MAX:
        raise ValueError(f"timestamp out of the int64 ns range: {timestamp_ns}")
    secs, frac = divmod(timestamp_ns, 1_000_000_000)
    cached_secs, prefix = _last_second
    if secs != cached_secs:
        # A feed formats many timestamps within one second: build the date part once.
        t = _EPOCH + timedelta(seconds=secs)
        prefix = (
            f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
        )
        _last_second[:] = (secs, prefix)
    return f"{prefix}{frac:09d}Z"


def _format_decimal(x: float, decimals: int | None) -> str:
    if decimals is None:
        # Shortest text that reads back as the same double, never in exponent form.
        text = repr(x)
        if "e" in text or "E" in text:
            text = np.format_float_positional(x, unique=True, trim="-")
        elif text.endswith(".0"):
            text = text[:-2]
        return text
    return f"{x:.{decimals}f}"


def _check_decimals(decimals: int | None, name: str) -> None:
    if decimals is not None and not (isinstance(decimals, int) and 0 <= decimals <= 18):
        raise ValueError(f"{name} must be an int in [0, 18] or None, got {decimals!r}")


def format_levels(
    levels: np.ndarray, price_decimals: int | None = None, size_decimals: int | None = None
) -> str:
    """``(n, 2)`` ``[price, size]`` rows as the wire level list ``[["0.4501","100"],...]``.

    Values are rounded to ``price_decimals``/``size_decimals`` digits after the point;
    ``None`` writes the shortest decimal that reads back as the same double. Raises
    ``ValueError`` for a non-finite value, a price that is (or rounds to) <= 0, or a
    negative size.
    """
    _check_decimals(price_decimals, "price_decimals")
    _check_decimals(size_decimals, "size_decimals")
    rows = np.asarray(levels, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ValueError(f"levels must have shape (n, 2), got {rows.shape}")
    if price_decimals is not None and size_decimals is not None:
        # The fixed-point writer checks finiteness and signs itself, without numpy's
        # per-call overhead (this is the simulator's per-frame path).
        return format_levels_fixed(np.ascontiguousarray(rows), price_decimals, size_decimals)
    if not np.isfinite(rows).all():
        raise ValueError("levels must be finite")
    if (rows[:, 0] <= 0).any() or (rows[:, 1] < 0).any():
        raise ValueError("prices must be > 0 and sizes >= 0")
    parts = []
    for price, size in rows.tolist():
        p = _format_decimal(price, price_decimals)
        if float(p) <= 0.0:
            raise ValueError(f"price {price!r} rounds to {p!r} with {price_decimals} decimals")
        s = _format_decimal(size + 0.0, size_decimals)  # + 0.0: no "-0"
        parts.append(f'["{p}","{s}"]')
    return "[" + ",".join(parts) + "]"


def _event_dict(event: Event, price_decimals: int | None, size_decimals: int | None) -> dict:
    if type(event) is BookUpdate:
        return {
            "type": "OrderBookUpdate",
            "attributes": {
                "market_id": event.market_id,
                "timestamp": format_rfc3339_ns(event.timestamp_ns),
                "sequence": str(int(event.sequence)),
                "kind": "snapshot" if event.is_snapshot else "delta",
                "bids": format_levels(event.bids, price_decimals, size_decimals),
                "asks": format_levels(event.asks, price_decimals, size_decimals),
            },
        }
    if type(event) is Trade:
        if event.side not in (1, -1):
            raise ValueError(f"Trade.side must be +1 or -1, got {event.side!r}")
        if not (math.isfinite(event.price) and event.price > 0):
            raise ValueError(f"Trade.price must be finite and > 0, got {event.price!r}")
        if not (math.isfinite(event.size) and event.size > 0):
            raise ValueError(f"Trade.size must be finite and > 0, got {event.size!r}")
        return {
            "type": "Trade",
            "attributes": {
                "market_id": event.market_id,
                "timestamp": format_rfc3339_ns(event.timestamp_ns),
                "price": _format_decimal(event.price, price_decimals),
                "size": _format_decimal(event.size, size_decimals),
                "side": "buy" if event.side == 1 else "sell",
                "trade_id": event.trade_id,
            },
        }
    if type(event) is MarketStatus:
        if event.status not in MARKET_STATUSES:
            raise ValueError(f"unknown market status {event.status!r}")
        return {
            "type": "MarketStatus",
            "attributes": {"market_id": event.market_id, "status": event.status},
        }
    raise TypeError(f"cannot encode {type(event).__name__} as a venue event")


def encode_events(
    events: list[BookUpdate | Trade | MarketStatus],
    *,
    price_decimals: int | None = None,
    size_decimals: int | None = None,
) -> bytes:
    """The JSON ``events`` list of a notification (see :func:`encode_notification`).

    A server sending one update to many subscriptions encodes it once and wraps it per
    subscription with :func:`encode_notification_raw`.
    """
    _check_decimals(price_decimals, "price_decimals")
    _check_decimals(size_decimals, "size_decimals")
    return _ENCODE([_event_dict(e, price_decimals, size_decimals) for e in events])


def encode_notification_raw(request_id: int | str | None, query: str, events_json: bytes) -> bytes:
    """A notification around an ``events`` list already encoded by :func:`encode_events`."""
    return _ENCODE(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "result": {"query": query, "events": msgspec.Raw(events_json)},
        }
    )


def encode_notification(
    request_id: int | str | None,
    query: str,
    events: list[BookUpdate | Trade | MarketStatus],
    *,
    price_decimals: int | None = None,
    size_decimals: int | None = None,
) -> bytes:
    """A notification in the specification form (1): attribute objects of strings.

    Sequences are decimal strings, timestamps RFC 3339 with 9 fraction digits and ``Z``;
    prices and sizes use ``price_decimals``/``size_decimals`` digits (``None``: the
    shortest exact decimal), so decoding gives back the same values for on-grid input.
    """
    body = encode_events(events, price_decimals=price_decimals, size_decimals=size_decimals)
    return encode_notification_raw(request_id, query, body)
