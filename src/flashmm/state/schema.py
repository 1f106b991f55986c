"""Everything the engine publishes to Redis and the sidecar reads back, as msgspec Structs.

One module, imported by both processes, so the two cannot drift. Payloads are MessagePack.
Timestamps are integer nanoseconds since the epoch (UTC); prices and sizes of orders and
fills are exact decimal strings; PnL and other aggregates are floats in the quote currency.

Events on pub/sub channels and history streams form one tagged union (:data:`Event`), so
any reader decodes any of them with one decoder. ``schema`` on :class:`EngineState` is
:data:`SCHEMA_VERSION`; a reader that finds another version refuses the state instead of
misreading it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "SCHEMA_VERSION",
    "AlertEvent",
    "AuditEntry",
    "Command",
    "CommandKind",
    "CommandResult",
    "Counters",
    "EmergencyStopCommand",
    "EngineState",
    "Event",
    "FillEvent",
    "MarketDataEvent",
    "MarketSnapshot",
    "ModelInfo",
    "OrderEvent",
    "PauseCommand",
    "PortfolioView",
    "PositionEvent",
    "PredictionEvent",
    "QuoteEvent",
    "QuoteInputs",
    "ResumeCommand",
    "RiskTransitionEvent",
    "RiskView",
    "SchemaMismatch",
    "decode_command",
    "decode_command_result",
    "decode_engine_state",
    "decode_event",
    "decode_snapshot",
    "encode",
]

SCHEMA_VERSION = 1

RiskStateName = Literal["active", "reducing", "paused", "halted", "flattened"]
Direction = Literal["bearish", "neutral", "bullish"]
SideName = Literal["buy", "sell"]


# ---------------------------------------------------------------------------- latest state
class RiskView(msgspec.Struct, kw_only=True):
    """The engine's place on the risk ladder."""

    state: RiskStateName
    reason: str = ""
    source: str = ""
    """Who moved it there: ``operator``, ``command``, ``monitor``, ``startup``..."""
    since_ns: int = 0
    until_ns: int | None = None
    """When a timed pause ends by itself."""


class PortfolioView(msgspec.Struct, kw_only=True):
    """Portfolio totals in the quote currency."""

    capital: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    """Negative when rebates exceed fees."""
    net_pnl: float
    daily_pnl: float
    """Net PnL since the start of the UTC day (or the engine's start, if later)."""
    peak_equity: float
    drawdown: float
    """``peak_equity - equity``, >= 0."""
    gross_notional: float
    long_notional: float
    short_notional: float
    volume: float
    """Traded quote notional this session."""


class Counters(msgspec.Struct, kw_only=True):
    """Monotonic counts since the engine started."""

    orders_placed: int = 0
    orders_filled: int = 0
    """Orders that ended FILLED."""
    fills: int = 0
    cancels: int = 0
    rejects: int = 0
    predictions: int = 0
    last_order_ns: int | None = None
    last_fill_ns: int | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    version: str
    horizon_ms: int
    last_prediction_ns: int | None = None
    predictions_per_second: float = 0.0
    inference_time_ms: float | None = None
    """Median time of one decision (features, model, quote) recently."""
    accuracy: float | None = None
    """Share of scored predictions whose direction matched the mid's move over the
    horizon; None until one is scored."""
    scored: int = 0


class EngineState(msgspec.Struct, kw_only=True):
    """``{prefix}:engine``: rewritten at every flush; ``heartbeat_ns`` says it is alive."""

    schema: int = SCHEMA_VERSION
    version: str
    pid: int
    started_ns: int
    heartbeat_ns: int
    ready: bool
    status: Literal["starting", "active", "reducing", "paused", "halted", "flattened", "stopped"]
    risk: RiskView
    markets: list[str]
    portfolio: PortfolioView
    counters: Counters
    model: ModelInfo
    venue_breaker: Literal["closed", "open", "half_open"] = "closed"
    latency_ms: dict[str, float] = {}
    """Recent p50/p95/p99 per stage, e.g. ``{"decide_p95": 0.04, "ack_p95": 1.2}``."""
    alerts: list[str] = []
    """The last few alert messages, newest last."""
    dropped: dict[str, int] = {}
    """What the publisher dropped while Redis was slow or down, by kind."""
    metrics_url: str | None = None


class QuoteInputs(msgspec.Struct, kw_only=True):
    """What the last quote decision saw and produced, in prices (not ticks)."""

    ts_ns: int
    mid: float | None
    fair_value: float | None
    """Mid skewed by the prediction."""
    reservation_price: float | None
    """Fair value shifted by inventory (Avellaneda-Stoikov)."""
    half_spread: float | None
    skew_bps: float
    inventory_ratio: float
    volatility: float
    """Ticks per square-root second."""
    bid_price: float | None
    ask_price: float | None
    bid_size: float
    ask_size: float
    direction: Direction
    confidence: float
    price_change_bps: float


class MarketSnapshot(msgspec.Struct, kw_only=True):
    """``{prefix}:snapshot:{symbol}``: one market's latest state, rewritten at each flush."""

    symbol: str
    ts_ns: int
    feed: str
    """The feed's state: ``live``, ``syncing``, ``stale``, ``halted``, ``down``..."""
    book_valid: bool
    staleness_s: float | None
    sequence: int
    best_bid: float | None
    best_ask: float | None
    mid: float | None
    spread_bps: float | None
    outside_spread_bps: float | None
    """The venue's spread without this engine's own orders."""
    last_trade_price: float | None = None
    volume_24h: float = 0.0
    """Quote notional traded on the venue over the last 24 h (since start, if shorter)."""
    quote: QuoteEvent | None = None
    """This engine's live quote, if any."""
    inputs: QuoteInputs | None = None
    quoting: bool
    """True when both (or the allowed) sides are live at the venue."""
    not_quoting: list[str] = []
    """Why a side is not live, in words an operator can act on (empty when quoting)."""
    rate_budget_left: float
    """New orders the rate budget allows right now."""
    position: PositionEvent
    open_orders: int
    orders_placed: int = 0
    fills: int = 0
    daily_pnl: float = 0.0
    last_quote_ns: int | None = None


# ---------------------------------------------------------------------------- events
class OrderEvent(msgspec.Struct, kw_only=True, tag="order"):
    """An order's state changed (``flashmm:orders:{symbol}``, ``stream:orders``)."""

    client_order_id: str
    order_id: str | None
    symbol: str
    side: SideName
    price: str
    size: str
    filled: str
    status: str
    """The engine's order state: ``pending_new``, ``open``, ``partially_filled``..."""
    order_type: Literal["limit", "market"] = "limit"
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    reason: str = ""
    created_ns: int
    ts_ns: int
    seq: int = 0
    """Sequence number on the ``orders`` live channel."""


class FillEvent(msgspec.Struct, kw_only=True, tag="fill"):
    """A fill, after it is journaled (``flashmm:fills:{symbol}``, ``stream:fills``)."""

    fill_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: SideName
    price: str
    size: str
    fee: str
    liquidity: Literal["maker", "taker"]
    ts_ns: int
    seq: int = 0


class PositionEvent(msgspec.Struct, kw_only=True, tag="position"):
    """One market's position and PnL (``flashmm:positions:{symbol}``)."""

    symbol: str
    ts_ns: int
    position: float
    """Base units, signed."""
    avg_price: float | None
    mark_price: float | None
    position_usdc: float
    """``position * mark``, signed, in the quote currency."""
    position_percent: float
    """``position_usdc`` as a percentage of equity."""
    limit_percent: float
    """The position limit, as a percentage of equity."""
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    pnl_usdc: float
    """Net PnL of this market."""
    volume_usdc: float = 0.0
    """Quote notional this engine traded in this market since it started."""
    fills: int = 0
    markouts_bps: dict[str, float] = {}
    seq: int = 0


class PredictionEvent(msgspec.Struct, kw_only=True, tag="prediction"):
    """The model's latest prediction for a market (``flashmm:predictions:{symbol}``)."""

    symbol: str
    ts_ns: int
    direction: Direction
    confidence: float
    price_change_bps: float
    horizon_ms: int
    model_version: str
    seq: int = 0


class QuoteEvent(msgspec.Struct, kw_only=True, tag="quote"):
    """This engine's two-sided quote as it rests at the venue (``flashmm:quotes:{symbol}``)."""

    symbol: str
    ts_ns: int
    bid_price: float | None
    bid_size: float
    ask_price: float | None
    ask_size: float
    spread_bps: float | None
    seq: int = 0


class MarketDataEvent(msgspec.Struct, kw_only=True, tag="market_data"):
    """Top of book and last trade (``flashmm:market_data:{symbol}``, live ``trading``)."""

    symbol: str
    ts_ns: int
    bid: float | None
    ask: float | None
    mid: float | None
    spread_bps: float | None
    last_trade_price: float | None
    volume_24h: float
    seq: int = 0


class AlertEvent(msgspec.Struct, kw_only=True, tag="alert"):
    """Something an operator should see (``flashmm:alerts``)."""

    ts_ns: int
    level: Literal["info", "warning", "critical"]
    kind: str
    """``feed``, ``risk``, ``venue``, ``stream``, ``balance``, ``health``..."""
    message: str
    symbol: str | None = None
    seq: int = 0


class RiskTransitionEvent(msgspec.Struct, kw_only=True, tag="risk"):
    """The risk ladder moved (published on ``flashmm:alerts`` too)."""

    ts_ns: int
    from_state: RiskStateName
    to_state: RiskStateName
    reason: str
    source: str
    until_ns: int | None = None
    seq: int = 0


Event = (
    OrderEvent
    | FillEvent
    | PositionEvent
    | PredictionEvent
    | QuoteEvent
    | MarketDataEvent
    | AlertEvent
    | RiskTransitionEvent
)


# ---------------------------------------------------------------------------- control
CommandKind = Literal["pause", "resume", "emergency_stop"]


class _CommandBase(msgspec.Struct, kw_only=True):
    id: str
    """Idempotency key: the engine executes a given id at most once."""
    issued_ns: int
    subject: str = ""
    """Who asked (the token's subject)."""
    request_id: str = ""


class PauseCommand(_CommandBase, tag="pause"):
    reason: str
    duration_s: float | None = None


class ResumeCommand(_CommandBase, tag="resume"):
    reason: str = "operator resume"


class EmergencyStopCommand(_CommandBase, tag="emergency_stop"):
    reason: str = "operator emergency stop"


Command = PauseCommand | ResumeCommand | EmergencyStopCommand


class CommandResult(msgspec.Struct, kw_only=True):
    """The engine's answer to one command, on ``{prefix}:command_results``."""

    id: str
    kind: CommandKind
    ok: bool
    ts_ns: int
    risk_state: RiskStateName
    error: str | None = None
    """Why the command could not be carried out."""
    duplicate: bool = False
    """True when the id had been executed before; the result is the first one's."""
    # pause
    paused_at_ns: int | None = None
    resume_at_ns: int | None = None
    # resume
    resumed_at_ns: int | None = None
    # emergency stop
    stopped_at_ns: int | None = None
    orders_cancelled: int | None = None
    open_orders: int | None = None
    positions_flattened: bool | None = None


class AuditEntry(msgspec.Struct, kw_only=True):
    """One admin action on ``{prefix}:audit``, refused ones included."""

    ts_ns: int
    action: str
    """``pause``, ``resume``, ``emergency_stop``, or the path of a refused request."""
    subject: str | None
    scope: str | None
    client: str
    request_id: str
    result: str
    """``ok``, ``refused: <why>``, ``timeout``, ``error: <why>``."""
    status_code: int
    details: dict[str, str] = {}


# ---------------------------------------------------------------------------- codecs
_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)
_engine_decoder = msgspec.msgpack.Decoder(EngineState)
_snapshot_decoder = msgspec.msgpack.Decoder(MarketSnapshot)
_command_decoder = msgspec.msgpack.Decoder(Command)
_result_decoder = msgspec.msgpack.Decoder(CommandResult)
_schema_probe = msgspec.msgpack.Decoder(dict[str, object])


class SchemaMismatch(ValueError):
    """The state in Redis was written by another schema version."""


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes) -> Event:
    return _event_decoder.decode(data)


def decode_engine_state(data: bytes) -> EngineState:
    """Decode ``{prefix}:engine``; :class:`SchemaMismatch` if another version wrote it."""
    try:
        return _engine_decoder.decode(data)
    except msgspec.ValidationError:
        version = _schema_probe.decode(data).get("schema")
        if version != SCHEMA_VERSION:
            raise SchemaMismatch(
                f"engine state has schema {version!r}, this FlashMM reads {SCHEMA_VERSION}: "
                "run the engine and the sidecar from the same release"
            ) from None
        raise


def decode_snapshot(data: bytes) -> MarketSnapshot:
    return _snapshot_decoder.decode(data)


def decode_command(data: bytes) -> Command:
    return _command_decoder.decode(data)


def decode_command_result(data: bytes) -> CommandResult:
    return _result_decoder.decode(data)
