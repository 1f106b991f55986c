"""The API's JSON shapes of the schema's Structs, shared by REST responses and WebSockets."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from flashmm.api._clock import rfc3339
from flashmm.api._state import order_status
from flashmm.state.schema import (
    AlertEvent,
    Event,
    FillEvent,
    MarketDataEvent,
    MarketSnapshot,
    OrderEvent,
    PositionEvent,
    PredictionEvent,
    RiskTransitionEvent,
)

__all__ = [
    "alert_data",
    "decimal_text",
    "event_data",
    "fill_data",
    "json_bytes",
    "order_data",
    "position_data",
    "prediction_data",
    "risk_data",
    "trading_data",
]

json_bytes = msgspec.json.Encoder().encode


def decimal_text(value: float | None) -> str | None:
    """A float price as the shortest exact decimal string (``0.042``, never ``4.2e-02``)."""
    if value is None:
        return None
    return format(Decimal(repr(value)), "f")


def order_data(order: OrderEvent) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "price": order.price,
        "size": order.size,
        "filled": order.filled,
        "status": order_status(order.status),
        "state": order.status,
        "reason": order.reason,
        "created_at": rfc3339(order.created_ns),
        "updated_at": rfc3339(order.ts_ns),
    }


def fill_data(fill: FillEvent) -> dict[str, Any]:
    return {
        "fill_id": fill.fill_id,
        "order_id": fill.order_id,
        "client_order_id": fill.client_order_id,
        "symbol": fill.symbol,
        "side": fill.side,
        "price": fill.price,
        "size": fill.size,
        "fee": fill.fee,
        "liquidity": fill.liquidity,
        "timestamp": rfc3339(fill.ts_ns),
    }


def trading_data(market: MarketDataEvent | MarketSnapshot) -> dict[str, Any]:
    """The spec's trading update: top of book, last trade, 24 h volume."""
    if isinstance(market, MarketSnapshot):
        bid, ask = market.best_bid, market.best_ask
    else:
        bid, ask = market.bid, market.ask
    return {
        "symbol": market.symbol,
        "bid": decimal_text(bid),
        "ask": decimal_text(ask),
        "mid": market.mid,
        "spread_bps": market.spread_bps,
        "last_trade_price": decimal_text(market.last_trade_price),
        "volume_24h": market.volume_24h,
    }


def position_data(position: PositionEvent) -> dict[str, Any]:
    return {
        "symbol": position.symbol,
        "position": position.position,
        "position_usdc": position.position_usdc,
        "pnl_usdc": position.pnl_usdc,
        "risk_percent": abs(position.position_percent),
        "limit_percent": position.limit_percent,
        "avg_price": position.avg_price,
        "mark_price": position.mark_price,
        "realized_pnl": position.realized_pnl,
        "unrealized_pnl": position.unrealized_pnl,
        "fees": position.fees,
    }


def prediction_data(prediction: PredictionEvent) -> dict[str, Any]:
    return {
        "symbol": prediction.symbol,
        "prediction": prediction.direction,
        "confidence": prediction.confidence,
        "horizon_ms": prediction.horizon_ms,
        "price_change_bps": prediction.price_change_bps,
        "model_version": prediction.model_version,
    }


def alert_data(alert: AlertEvent) -> dict[str, Any]:
    # the alerts channel carries two kinds of event: "type" tells them apart
    return {
        "type": "alert",
        "level": alert.level,
        "kind": alert.kind,
        "message": alert.message,
        "symbol": alert.symbol,
    }


def risk_data(risk: RiskTransitionEvent) -> dict[str, Any]:
    return {
        "type": "risk",
        "from_state": risk.from_state,
        "to_state": risk.to_state,
        "reason": risk.reason,
        "source": risk.source,
        "until": rfc3339(risk.until_ns),
    }


_SHAPERS: dict[type, Callable[[Any], dict[str, Any]]] = {
    OrderEvent: order_data,
    FillEvent: fill_data,
    MarketDataEvent: trading_data,
    PositionEvent: position_data,
    PredictionEvent: prediction_data,
    AlertEvent: alert_data,
    RiskTransitionEvent: risk_data,
}


def event_data(event: Event) -> dict[str, Any] | None:
    """The live-channel data of ``event``; None for a kind no channel carries."""
    shaper = _SHAPERS.get(type(event))
    return shaper(event) if shaper is not None else None
