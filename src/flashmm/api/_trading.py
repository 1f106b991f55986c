"""``/trading/*``: status, positions, orders and fills, and why a market is (not) quoted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from flashmm.api._clock import rfc3339, rfc3339_now
from flashmm.api._context import Ctx, guard
from flashmm.api._errors import ApiError
from flashmm.api._models import (
    BookDetail,
    Fill,
    LiveQuote,
    MarketStatus,
    Order,
    OrdersResponse,
    Position,
    PositionsResponse,
    PredictionView,
    QuoteDecision,
    RiskDetail,
    TradingStatus,
    WhyResponse,
    error_responses,
)
from flashmm.api._state import OrderFilter
from flashmm.api._views import fill_data, order_data
from flashmm.state.schema import EngineState, MarketSnapshot

__all__ = ["STATUS_BODY", "market_status", "router", "status_body", "utilization_percent"]

router = APIRouter(
    prefix="/trading",
    tags=["trading"],
    dependencies=[Depends(guard("trading", "read"))],
    responses=error_responses(401, 403, 429, 503),
)


def market_status(state: EngineState, snap: MarketSnapshot | None) -> str:
    """``trading`` when quoted; otherwise the first thing in the way."""
    if state.risk.state in ("paused", "halted", "flattened"):
        return state.risk.state
    if snap is None:
        return "no_data"
    if snap.feed != "live":
        return snap.feed
    return "trading" if snap.quoting else "not_quoting"


def utilization_percent(snapshots: list[MarketSnapshot]) -> float:
    """The largest position as a percentage of its own limit."""
    used = [
        abs(s.position.position_percent) / s.position.limit_percent * 100
        for s in snapshots
        if s.position.limit_percent > 0
    ]
    return max(used, default=0.0)


STATUS_BODY = "trading_status"
"""Name of the ``/trading/status`` body among what is derived from a state read."""


def status_body(state: EngineState, snaps: dict[str, MarketSnapshot]) -> bytes:
    """The ``/trading/status`` JSON of one state read."""
    markets = []
    for symbol in state.markets:
        snap = snaps.get(symbol)
        markets.append(
            MarketStatus(
                symbol=symbol,
                status=market_status(state, snap),
                last_quote_time=rfc3339(snap.last_quote_ns) if snap else None,
                spread_bps=snap.quote.spread_bps if snap and snap.quote else None,
                position_usdc=snap.position.position_usdc if snap else 0.0,
                daily_pnl_usdc=snap.daily_pnl if snap else 0.0,
            )
        )
    status = TradingStatus(
        status=state.status,
        markets=markets,
        total_pnl_usdc=state.portfolio.net_pnl,
        risk_level=state.risk.state,
        risk_reason=state.risk.reason,
    )
    return status.model_dump_json().encode()


@router.get("/status", response_model=TradingStatus, summary="Engine and per-market status")
async def status(ctx: Ctx) -> Response:
    state, read = await ctx.state.require_engine()
    # nothing in the body depends on the time of the request: one encoding per engine flush
    body = read.derived(STATUS_BODY, lambda: status_body(state, read.snapshots))
    return Response(body, media_type="application/json")


@router.get("/positions", response_model=PositionsResponse, summary="Inventory per market")
async def positions(ctx: Ctx) -> PositionsResponse:
    _, read = await ctx.state.require_engine()
    snaps = list(read.snapshots.values())
    rows = []
    for snap in snaps:
        p = snap.position
        rows.append(
            Position(
                symbol=p.symbol,
                base_balance=p.position,
                # cash this market's trades moved: net PnL less what the inventory is worth
                quote_balance=p.pnl_usdc - p.position_usdc,
                position_usdc=p.position_usdc,
                position_percent=p.position_percent,
                limit_percent=p.limit_percent,
                avg_price=p.avg_price,
                mark_price=p.mark_price,
                realized_pnl=p.realized_pnl,
                unrealized_pnl=p.unrealized_pnl,
                last_updated=rfc3339(p.ts_ns) or rfc3339_now(),
            )
        )
    return PositionsResponse(
        positions=rows,
        total_position_usdc=sum(r.position_usdc for r in rows),
        risk_utilization_percent=utilization_percent(snaps),
    )


@router.get(
    "/orders",
    response_model=OrdersResponse,
    responses=error_responses(400),
    summary="Live orders and recent fills",
)
async def orders(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000, description="Records per list.")] = 100,
    status: Annotated[
        OrderFilter | None, Query(description="Orders whose latest status is this.")
    ] = None,
) -> OrdersResponse:
    _, read = await ctx.state.require_engine()
    expected = sum(s.open_orders for s in read.snapshots.values())
    found = await ctx.reader.orders(status, limit, expected)
    fills = await ctx.reader.fills(limit)
    return OrdersResponse(
        active_orders=[Order(**order_data(o)) for o in found],
        recent_fills=[Fill(**fill_data(f)) for f in fills],
    )


@router.get(
    "/why",
    response_model=WhyResponse,
    responses=error_responses(400),
    summary="Why the engine is or is not quoting a market right now",
)
async def why(
    ctx: Ctx, symbol: Annotated[str, Query(min_length=1, examples=["SEI/USDC"])]
) -> WhyResponse:
    state, read = await ctx.state.require_engine()
    if symbol not in state.markets:
        raise ApiError(
            400,
            "INVALID_SYMBOL",
            f"Symbol {symbol!r} not supported",
            {"supported_symbols": state.markets},
        )
    snap = read.snapshots.get(symbol)
    if snap is None:
        raise ApiError(
            503,
            "ENGINE_UNAVAILABLE",
            f"the engine has not published a snapshot of {symbol} yet",
            {"symbol": symbol},
        )
    risk = state.risk
    reasons = list(snap.not_quoting)
    if risk.state != "active":
        reason = f"risk state is {risk.state}" + (f": {risk.reason}" if risk.reason else "")
        if reason not in reasons:
            reasons.insert(0, reason)
    i = snap.inputs
    return WhyResponse(
        symbol=symbol,
        timestamp=rfc3339_now(),
        quoting=snap.quoting,
        reasons=[] if snap.quoting and risk.state == "active" else reasons,
        risk=RiskDetail(
            state=risk.state,
            reason=risk.reason,
            source=risk.source,
            since=rfc3339(risk.since_ns) if risk.since_ns else None,
            until=rfc3339(risk.until_ns),
        ),
        book=BookDetail(
            valid=snap.book_valid,
            feed=snap.feed,
            staleness_s=snap.staleness_s,
            sequence=snap.sequence,
            best_bid=snap.best_bid,
            best_ask=snap.best_ask,
        ),
        rate_budget_left=snap.rate_budget_left,
        open_orders=snap.open_orders,
        live_quote=(
            LiveQuote(
                bid_price=snap.quote.bid_price,
                bid_size=snap.quote.bid_size,
                ask_price=snap.quote.ask_price,
                ask_size=snap.quote.ask_size,
                spread_bps=snap.quote.spread_bps,
                timestamp=rfc3339(snap.quote.ts_ns) or "",
            )
            if snap.quote is not None
            else None
        ),
        last_decision=(
            QuoteDecision(
                timestamp=rfc3339(i.ts_ns) or "",
                mid=i.mid,
                fair_value=i.fair_value,
                reservation_price=i.reservation_price,
                half_spread=i.half_spread,
                skew_bps=i.skew_bps,
                inventory_ratio=i.inventory_ratio,
                volatility=i.volatility,
                bid_price=i.bid_price,
                ask_price=i.ask_price,
                bid_size=i.bid_size,
                ask_size=i.ask_size,
                prediction=PredictionView(
                    direction=i.direction,
                    confidence=i.confidence,
                    price_change_bps=i.price_change_bps,
                ),
            )
            if i is not None
            else None
        ),
    )
