"""Request and response bodies of the REST API, as pydantic models for the OpenAPI document.

Shapes follow the API specification (and the dashboard contract); fields it does not have
are additions, never renames. Times are RFC 3339 UTC strings ending in ``Z``; order and fill
prices and sizes are exact decimal strings; aggregates are floats in the quote currency.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditLogResponse",
    "AuditRecord",
    "ComponentHealth",
    "DashboardSnapshot",
    "DetailedHealth",
    "EmergencyStopRequest",
    "EmergencyStopResponse",
    "ErrorResponse",
    "HealthResponse",
    "OrdersResponse",
    "PauseRequest",
    "PauseResponse",
    "PositionsResponse",
    "ResumeResponse",
    "TradingMetrics",
    "TradingStatus",
    "WhyResponse",
    "error_responses",
]

ComponentHealth = Literal["healthy", "degraded", "unhealthy", "unknown"]
RiskState = Literal["active", "reducing", "paused", "halted", "flattened"]
Timestamp = str


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    # an unknown field is a typo the operator should hear about, not something to ignore
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- errors
class ErrorDetail(_Out):
    code: str = Field(examples=["INVALID_SYMBOL"])
    message: str
    details: dict[str, Any]
    timestamp: Timestamp
    request_id: str


class ErrorResponse(_Out):
    error: ErrorDetail


# ---------------------------------------------------------------------------- health
class HealthResponse(_Out):
    status: ComponentHealth
    timestamp: Timestamp
    version: str
    components: dict[str, ComponentHealth] = Field(
        description="redis, websocket (the venue feed), ml_model, trading_engine"
    )
    uptime_seconds: int | None = Field(description="The engine's uptime; null if unavailable.")


class SystemLoad(_Out):
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    network_latency_ms: float | None = Field(description="Round trip to Redis.")


class RedisHealth(_Out):
    status: ComponentHealth
    latency_ms: float | None


class FeedHealth(_Out):
    status: ComponentHealth
    last_message: Timestamp | None
    messages_per_second: float | None
    latency_ms: float | None
    markets: dict[str, str] = Field(description="Each market's feed state (live, stale...).")


class ModelHealth(_Out):
    status: ComponentHealth
    last_prediction: Timestamp | None
    predictions_per_second: float | None
    inference_time_ms: float | None
    model_confidence: float | None
    version: str | None
    accuracy: float | None


class EngineHealth(_Out):
    status: str = Field(description="The engine's status, or 'unavailable'.")
    health: ComponentHealth
    reason: str
    orders_placed: int | None
    orders_filled: int | None
    last_order: Timestamp | None
    heartbeat_age_s: float | None
    risk_state: RiskState | None
    version: str | None


class DetailedComponents(_Out):
    redis: RedisHealth
    websocket: FeedHealth
    ml_model: ModelHealth
    trading_engine: EngineHealth


class DetailedHealth(_Out):
    status: ComponentHealth
    timestamp: Timestamp
    system: SystemLoad
    components: DetailedComponents


# ---------------------------------------------------------------------------- trading
class MarketStatus(_Out):
    symbol: str
    status: str = Field(
        description="trading, not_quoting, or what stops it: the risk state or feed state"
    )
    last_quote_time: Timestamp | None
    spread_bps: float | None
    position_usdc: float
    daily_pnl_usdc: float


class TradingStatus(_Out):
    status: str
    markets: list[MarketStatus]
    total_pnl_usdc: float
    risk_level: RiskState
    risk_reason: str


class Position(_Out):
    symbol: str
    base_balance: float = Field(description="Inventory in base units (signed).")
    quote_balance: float = Field(
        description="Quote currency this market's trading added (net of fees)."
    )
    position_usdc: float
    position_percent: float
    limit_percent: float
    avg_price: float | None
    mark_price: float | None
    realized_pnl: float
    unrealized_pnl: float
    last_updated: Timestamp


class PositionsResponse(_Out):
    positions: list[Position]
    total_position_usdc: float
    risk_utilization_percent: float = Field(
        description="The largest position as a percentage of its limit."
    )


class Order(_Out):
    order_id: str | None
    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    price: str
    size: str
    filled: str
    status: Literal["active", "filled", "cancelled", "rejected"]
    state: str = Field(description="The engine's own order state (open, pending_cancel...).")
    reason: str
    created_at: Timestamp
    updated_at: Timestamp


class Fill(_Out):
    fill_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    price: str
    size: str
    fee: str
    liquidity: Literal["maker", "taker"]
    timestamp: Timestamp


class OrdersResponse(_Out):
    active_orders: list[Order] = Field(
        description="Live orders, or the orders whose latest status matches ?status=."
    )
    recent_fills: list[Fill]


class PredictionView(_Out):
    direction: Literal["bearish", "neutral", "bullish"]
    confidence: float
    price_change_bps: float


class QuoteDecision(_Out):
    timestamp: Timestamp
    mid: float | None
    fair_value: float | None
    reservation_price: float | None
    half_spread: float | None
    skew_bps: float
    inventory_ratio: float
    volatility: float = Field(description="Ticks per square-root second.")
    bid_price: float | None
    ask_price: float | None
    bid_size: float
    ask_size: float
    prediction: PredictionView


class LiveQuote(_Out):
    bid_price: float | None
    bid_size: float
    ask_price: float | None
    ask_size: float
    spread_bps: float | None
    timestamp: Timestamp


class RiskDetail(_Out):
    state: RiskState
    reason: str
    source: str
    since: Timestamp | None
    until: Timestamp | None


class BookDetail(_Out):
    valid: bool
    feed: str
    staleness_s: float | None
    sequence: int
    best_bid: float | None
    best_ask: float | None


class WhyResponse(_Out):
    symbol: str
    timestamp: Timestamp
    quoting: bool
    reasons: list[str] = Field(description="Why it is not quoting; empty when it is.")
    risk: RiskDetail
    book: BookDetail
    rate_budget_left: float
    open_orders: int
    live_quote: LiveQuote | None
    last_decision: QuoteDecision | None


# ---------------------------------------------------------------------------- metrics
class TradingTotals(_Out):
    total_volume_usdc: float
    total_trades: int
    average_spread_bps: float | None
    spread_improvement_percent: float | None
    maker_fee_earned_usdc: float
    prediction_accuracy: float | None
    system_uptime_seconds: int
    orders_per_minute: float
    latency_p95_ms: float | None


class MarketMetrics(_Out):
    volume_usdc: float = Field(description="Quote notional this engine traded in the market.")
    trades: int
    spread_bps: float | None
    position_usdc: float
    pnl_usdc: float


class TradingMetrics(_Out):
    timestamp: Timestamp
    metrics: TradingTotals
    by_market: dict[str, MarketMetrics]
    latency_ms: dict[str, float] = Field(description="The engine's recent stage latencies.")


# ---------------------------------------------------------------------------- admin
class PauseRequest(_In):
    reason: str = Field(min_length=1, max_length=500, examples=["Manual intervention required"])
    duration_seconds: float | None = Field(
        default=None, gt=0, le=7 * 86_400, description="Omit to pause until /admin/resume."
    )


class _CommandAnswer(_Out):
    command_id: str
    duplicate: bool = Field(description="The id was executed before; this is its first result.")
    risk_state: RiskState


class PauseResponse(_CommandAnswer):
    status: Literal["paused"]
    reason: str
    paused_at: Timestamp | None
    resume_at: Timestamp | None


class ResumeResponse(_CommandAnswer):
    status: RiskState = Field(description="Where the ladder is after the resume.")
    resumed_at: Timestamp | None


class EmergencyStopRequest(_In):
    confirmation: Literal["EMERGENCY_STOP_CONFIRMED"]
    reason: str = Field(default="operator emergency stop", min_length=1, max_length=500)


class EmergencyStopResponse(_CommandAnswer):
    status: Literal["emergency_stopped"]
    stopped_at: Timestamp | None
    orders_cancelled: int | None
    open_orders: int | None
    positions_flattened: bool | None


class AuditRecord(_Out):
    timestamp: Timestamp
    action: str
    subject: str | None
    scope: str | None
    client: str
    request_id: str
    result: str
    status_code: int
    details: dict[str, str]


class AuditLogResponse(_Out):
    entries: list[AuditRecord] = Field(description="Newest first.")


# ---------------------------------------------------------------------------- dashboard
class DashboardPortfolio(_Out):
    equity: float
    cash: float = Field(description="Equity minus the net position notional.")
    capital: float
    total_pnl: float
    daily_pnl: float
    daily_pnl_pct: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    volume: float
    gross_notional: float
    position_count: int


class DashboardPosition(_Out):
    symbol: str
    side: Literal["LONG", "SHORT", "FLAT"]
    size: float
    entry_price: float | None
    current_price: float | None
    unrealized_pnl: float
    unrealized_pnl_pct: float | None
    position_usdc: float


class DashboardSignal(_Out):
    timestamp: Timestamp
    symbol: str
    direction: Literal["bearish", "neutral", "bullish"]
    confidence: float
    price_change_bps: float
    horizon_ms: int
    strategy: str = Field(description="The model version that made the prediction.")


class DashboardRisk(_Out):
    ess_state: Literal["armed", "cooling", "tripped"] = Field(
        description="Emergency stop switch: armed (active, reducing), cooling (paused), "
        "tripped (halted, flattened)."
    )
    ess_reason: str
    risk_state: RiskState
    drawdown: float
    drawdown_pct: float
    long_exposure: float
    short_exposure: float
    net_exposure: float
    risk_limit_pct: float = Field(description="The largest position as a % of its limit.")


class ServiceHealthInfo(_Out):
    name: str
    status: ComponentHealth
    latency_ms: float | None
    last_check: Timestamp


class DashboardSystemHealth(_Out):
    status: ComponentHealth
    services: list[ServiceHealthInfo]
    alerts_count: int
    alerts: list[str]


class DashboardSnapshot(_Out):
    timestamp: Timestamp
    portfolio: DashboardPortfolio
    positions: list[DashboardPosition]
    signals: list[DashboardSignal]
    risk: DashboardRisk
    system: DashboardSystemHealth


_ERROR_TEXT = {
    400: "Invalid parameters or body; details.fields lists each bad field.",
    401: "Token missing, malformed, expired or not signed by this server.",
    403: "The token lacks the scope this endpoint needs.",
    409: "The engine refused the command (details say why).",
    413: "Request body larger than api.max_body_bytes.",
    429: "Rate limited; retry after the Retry-After header's seconds.",
    503: "The engine or Redis is unavailable (the message says which and why).",
    504: "The engine did not answer the command in time.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, all in the :class:`ErrorResponse` shape."""
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}
