"""Venue order entry: the REST requests and answers, and the execution stream's events.

REST answers only validation, at once, in one envelope (:class:`ApiResponse`); what
happens to an order afterwards arrives only on ``WS /v1/stream`` as one of the
:data:`StreamEvent` Structs, tagged by ``type``. No message is sent on both channels.

Prices and quantities travel as plain decimal strings (``"0.4501"``); inside they are
integer ticks and lots (:func:`to_units`, :func:`from_units`).

The simulator (``flashmm.venue.sim``) encodes with these Structs and the engine's
gateway decodes with them, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal

import msgspec

__all__ = [
    "HTTP_STATUS",
    "ApiError",
    "ApiResponse",
    "BalanceView",
    "CancelAllRequest",
    "ErrorCode",
    "ExecutionReport",
    "MarketView",
    "NewOrderAck",
    "OrderCancelled",
    "OrderRejected",
    "OrderRequest",
    "OrderView",
    "PositionUpdate",
    "StreamEvent",
    "UnitsError",
    "decimal_text",
    "decode_stream_event",
    "encode_stream_event",
    "from_units",
    "to_units",
]


class ErrorCode(StrEnum):
    """Machine-readable ``error.code`` values of :class:`ApiResponse`."""

    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNKNOWN_MARKET = "UNKNOWN_MARKET"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    INVALID_TICK_SIZE = "INVALID_TICK_SIZE"
    INVALID_LOT_SIZE = "INVALID_LOT_SIZE"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    POST_ONLY_WOULD_CROSS = "POST_ONLY_WOULD_CROSS"
    DUPLICATE_CLIENT_ORDER_ID = "DUPLICATE_CLIENT_ORDER_ID"
    MARKET_NOT_OPEN = "MARKET_NOT_OPEN"
    RATE_LIMITED = "RATE_LIMITED"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_MARKET: 404,
    ErrorCode.UNKNOWN_ORDER: 404,
    ErrorCode.INVALID_TICK_SIZE: 400,
    ErrorCode.INVALID_LOT_SIZE: 400,
    ErrorCode.INSUFFICIENT_BALANCE: 400,
    ErrorCode.POST_ONLY_WOULD_CROSS: 400,
    ErrorCode.DUPLICATE_CLIENT_ORDER_ID: 409,
    ErrorCode.MARKET_NOT_OPEN: 409,
    ErrorCode.RATE_LIMITED: 429,
}
"""The HTTP status that goes with each error code."""

_CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_DECIMAL = re.compile(r"\d{1,30}(\.\d{1,30})?")

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
TimeInForce = Literal["GTC", "IOC", "FOK", "POST_ONLY"]


# ------------------------------------------------------------------------ requests


class OrderRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/orders``. ``price`` is required for limit orders, refused for market ones."""

    market_id: str
    side: Side
    quantity: str
    client_order_id: str
    type: OrderType = "limit"
    time_in_force: TimeInForce = "GTC"
    price: str | None = None

    def __post_init__(self) -> None:
        if not _CLIENT_ORDER_ID.fullmatch(self.client_order_id):
            raise ValueError("client_order_id must be 1-64 characters of [A-Za-z0-9_.:-]")
        if self.type == "limit" and self.price is None:
            raise ValueError("a limit order needs a price")
        if self.type == "market":
            if self.price is not None:
                raise ValueError("a market order takes no price")
            if self.time_in_force in ("GTC", "POST_ONLY"):
                raise ValueError("a market order is IOC or FOK")


class CancelAllRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/orders/cancel-all``: every open order of the account, or of one market."""

    market_id: str | None = None


# ----------------------------------------------------------------------- responses


class ApiError(msgspec.Struct, kw_only=True):
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None


class ApiResponse(msgspec.Struct, kw_only=True):
    """The one envelope of every REST answer (``success`` says which fields to read)."""

    success: bool
    request_id: str
    timestamp: str
    order_id: str | None = None
    data: Any = None
    error: ApiError | None = None


class OrderView(msgspec.Struct, kw_only=True):
    """An open order as ``GET /v1/orders`` lists it."""

    order_id: str
    client_order_id: str
    market_id: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    price: str | None
    quantity: str
    remaining_quantity: str
    filled_quantity: str
    timestamp: str


class MarketView(msgspec.Struct, kw_only=True):
    """A market as ``GET /v1/markets`` lists it."""

    market_id: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    status: str
    base_denom: str
    """The base asset's bank denomination (balances are listed by denom)."""
    base_decimals: int
    """Decimals of the denomination: ``1 base = 10**base_decimals`` units."""
    quote_denom: str
    quote_decimals: int
    sequence: int = 0


class BalanceView(msgspec.Struct, kw_only=True):
    total: str
    available: str


# ------------------------------------------------------------------- stream events


class _StreamEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    """``seq`` counts an account's stream events from 1, without gaps: a client that sees
    a jump missed events and reconnects with ``?since=<last seq>`` to have them resent."""

    seq: int
    timestamp: str


class NewOrderAck(_StreamEvent, tag="new_order_ack"):
    """The order is live at the matcher (first event of every accepted order)."""

    order_id: str
    client_order_id: str
    market_id: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    price: str | None
    quantity: str


class ExecutionReport(_StreamEvent, tag="execution_report"):
    """One fill of one order; ``status`` is ``filled`` when nothing remains."""

    order_id: str
    client_order_id: str
    market_id: str
    trade_id: str
    side: Side
    price: str
    quantity: str
    cumulative_quantity: str
    remaining_quantity: str
    liquidity_type: Literal["maker", "taker"]
    fee: str
    fee_asset: str
    status: Literal["partially_filled", "filled"]


class OrderCancelled(_StreamEvent, tag="order_cancelled"):
    """The order is gone with ``remaining_quantity`` unfilled; ``reason`` says why."""

    order_id: str
    client_order_id: str
    market_id: str
    remaining_quantity: str
    reason: str


class OrderRejected(_StreamEvent, tag="order_rejected"):
    """The matcher refused an order that passed validation; it never went live."""

    order_id: str
    client_order_id: str
    market_id: str
    code: str
    reason: str


class PositionUpdate(_StreamEvent, tag="position_update"):
    """The account's position in one market and its balances after a fill."""

    market_id: str
    position: str
    average_entry_price: str | None
    balances: dict[str, BalanceView]


StreamEvent = NewOrderAck | ExecutionReport | OrderCancelled | OrderRejected | PositionUpdate

_encode = msgspec.json.Encoder().encode
_stream_decoder = msgspec.json.Decoder(StreamEvent)


def encode_stream_event(event: StreamEvent) -> bytes:
    return _encode(event)


def decode_stream_event(frame: bytes | str) -> StreamEvent:
    """One ``/v1/stream`` message; ``msgspec.DecodeError`` (a ``ValueError``) if malformed."""
    return _stream_decoder.decode(frame)


# ------------------------------------------------------------------------- numbers


class UnitsError(ValueError):
    """A decimal string that is malformed or off its increment's grid."""

    def __init__(self, message: str, *, off_grid: bool) -> None:
        super().__init__(message)
        self.off_grid = off_grid


def to_units(text: str, increment: Decimal, field: str) -> int:
    """``text`` (a plain decimal such as ``"0.4501"``) as a whole number of ``increment``.

    :class:`UnitsError` when ``text`` is not a plain non-negative decimal, or
    (``off_grid=True``) when it is not a multiple of ``increment``.
    """
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise UnitsError(f"{field} must be a plain decimal string like '1.25'", off_grid=False)
    try:
        units, rest = divmod(Decimal(text), increment)
    except InvalidOperation:  # pragma: no cover - the pattern admits only finite decimals
        raise UnitsError(f"{field} is not a number", off_grid=False) from None
    if rest:
        raise UnitsError(f"{field} {text} is not a multiple of {increment}", off_grid=True)
    return int(units)


def decimal_text(value: Decimal) -> str:
    """``value`` as a plain decimal string without trailing zeros (never in exponent form)."""
    return format(value.normalize() if value else Decimal(0), "f")


def from_units(units: int, increment: Decimal) -> str:
    """``units * increment`` as a plain decimal string (never in exponent form)."""
    return decimal_text(units * increment)
