"""The dashboard contract: ``GET /api/dashboard/snapshot`` and ``WS /ws/dashboard``.

The WebSocket sends ``{"type", "timestamp", "payload"}``: ``connected`` first, then
``heartbeat`` every ``api.ws_heartbeat_s``, ``pong`` for each ``ping``, and the events
``position_updated``, ``pnl_updated``, ``signal_generated``, ``ess_state_changed``,
``health_alert``, ``trade_executed`` and ``order_placed`` as the engine publishes them.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, WebSocket

from flashmm.api._clock import now_ns, rfc3339, rfc3339_now
from flashmm.api._context import ApiContext, Ctx, guard
from flashmm.api._health import assess
from flashmm.api._hub import PNL, Subscriber
from flashmm.api._live import hub_session, run_session
from flashmm.api._models import (
    DashboardPortfolio,
    DashboardPosition,
    DashboardRisk,
    DashboardSignal,
    DashboardSnapshot,
    DashboardSystemHealth,
    ServiceHealthInfo,
    error_responses,
)
from flashmm.api._state import HistoryEntry
from flashmm.api._trading import utilization_percent
from flashmm.api._views import fill_data, json_bytes, order_data
from flashmm.api._wsgate import admit
from flashmm.state.keys import LIVE_CHANNELS
from flashmm.state.schema import (
    AlertEvent,
    EngineState,
    FillEvent,
    OrderEvent,
    PositionEvent,
    PredictionEvent,
    RiskTransitionEvent,
)

__all__ = ["dashboard_ws", "ess_state", "router"]

_SIGNALS = 20

router = APIRouter(
    prefix="/api/dashboard", tags=["dashboard"], responses=error_responses(401, 403, 429, 503)
)


def ess_state(risk_state: str) -> str:
    """The emergency stop switch of the dashboard contract, from the risk ladder."""
    if risk_state in ("halted", "flattened"):
        return "tripped"
    return "cooling" if risk_state == "paused" else "armed"


def _position(p: PositionEvent) -> dict[str, Any]:
    side = "LONG" if p.position > 0 else "SHORT" if p.position < 0 else "FLAT"
    cost = abs(p.position) * p.avg_price if p.avg_price else 0.0
    return {
        "symbol": p.symbol,
        "side": side,
        "size": abs(p.position),
        "entry_price": p.avg_price,
        "current_price": p.mark_price,
        "unrealized_pnl": p.unrealized_pnl,
        "unrealized_pnl_pct": p.unrealized_pnl / cost * 100 if cost else None,
        "position_usdc": p.position_usdc,
    }


def _signal(p: PredictionEvent) -> dict[str, Any]:
    return {
        "timestamp": rfc3339(p.ts_ns),
        "symbol": p.symbol,
        "direction": p.direction,
        "confidence": p.confidence,
        "price_change_bps": p.price_change_bps,
        "horizon_ms": p.horizon_ms,
        "strategy": p.model_version,
    }


def _pnl(state: EngineState) -> dict[str, Any]:
    p = state.portfolio
    return {
        "equity": p.equity,
        "total_pnl": p.net_pnl,
        "daily_pnl": p.daily_pnl,
        "daily_pnl_pct": p.daily_pnl / p.capital * 100 if p.capital else 0.0,
        "realized_pnl": p.realized_pnl,
        "unrealized_pnl": p.unrealized_pnl,
    }


def _event(item: HistoryEntry | EngineState) -> tuple[str, dict[str, Any]] | None:
    if isinstance(item, EngineState):
        return "pnl_updated", _pnl(item)
    event = item.event
    if isinstance(event, PositionEvent):
        return "position_updated", _position(event)
    if isinstance(event, FillEvent):
        return "trade_executed", fill_data(event)
    if isinstance(event, OrderEvent):
        # one event per order: when it is first sent
        return ("order_placed", order_data(event)) if event.status == "pending_new" else None
    if isinstance(event, PredictionEvent):
        return "signal_generated", _signal(event)
    if isinstance(event, RiskTransitionEvent):
        return "ess_state_changed", {
            "ess_state": ess_state(event.to_state),
            "previous_ess_state": ess_state(event.from_state),
            "risk_state": event.to_state,
            "reason": event.reason,
            "source": event.source,
            "until": rfc3339(event.until_ns),
        }
    if isinstance(event, AlertEvent):
        return "health_alert", {
            "level": event.level,
            "kind": event.kind,
            "message": event.message,
            "symbol": event.symbol,
        }
    return None


def _message(kind: str, payload: dict[str, Any], ts_ns: int | None = None) -> bytes:
    stamp = rfc3339(ts_ns) if ts_ns is not None else rfc3339_now()
    return json_bytes({"type": kind, "timestamp": stamp, "payload": payload})


def render_dashboard(channel: str, item: HistoryEntry | EngineState) -> bytes | None:
    found = _event(item)
    if found is None:
        return None
    ts_ns = item.event.ts_ns if isinstance(item, HistoryEntry) else item.heartbeat_ns
    return _message(found[0], found[1], ts_ns)


ReadAccess = Annotated[object, Depends(guard("trading", "read"))]


@router.get(
    "/snapshot",
    response_model=DashboardSnapshot,
    summary="Everything the dashboard shows, in one request",
)
async def snapshot(ctx: Ctx, _: ReadAccess) -> DashboardSnapshot:
    state = (await ctx.state.require_engine())[0]
    health = await assess(ctx)
    snaps = list(health.snapshots.values())
    signals = await ctx.reader.recent(ctx.keys.history("predictions"), _SIGNALS)
    p = state.portfolio
    positions = [_position(s.position) for s in snaps]
    net = p.long_notional - p.short_notional
    checked = rfc3339_now()
    return DashboardSnapshot(
        timestamp=checked,
        portfolio=DashboardPortfolio(
            **_pnl(state),
            cash=p.equity - net,
            capital=p.capital,
            fees=p.fees,
            volume=p.volume,
            gross_notional=p.gross_notional,
            position_count=sum(1 for s in snaps if s.position.position != 0),
        ),
        positions=[DashboardPosition(**row) for row in positions],
        signals=[
            DashboardSignal(**_signal(e.event))
            for e in reversed(signals)
            if isinstance(e.event, PredictionEvent)
        ],
        risk=DashboardRisk(
            ess_state=ess_state(state.risk.state),  # type: ignore[arg-type]
            ess_reason=state.risk.reason,
            risk_state=state.risk.state,
            drawdown=p.drawdown,
            drawdown_pct=p.drawdown / p.peak_equity * 100 if p.peak_equity > 0 else 0.0,
            long_exposure=p.long_notional,
            short_exposure=p.short_notional,
            net_exposure=net,
            risk_limit_pct=utilization_percent(snaps),
        ),
        system=DashboardSystemHealth(
            status=health.status,
            services=[
                ServiceHealthInfo(
                    name=name,
                    status=status,
                    latency_ms=health.redis_latency_ms if name == "redis" else None,
                    last_check=checked,
                )
                for name, status in health.components.items()
            ],
            alerts_count=len(state.alerts),
            alerts=state.alerts,
        ),
    )


async def _heartbeat(sub: Subscriber, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        sub.offer_control(_message("heartbeat", {"server_time_ns": now_ns()}))


async def _receive(websocket: WebSocket, sub: Subscriber) -> None:
    async for text in websocket.iter_text():
        # the contract's ping is a bare "ping" or {"type": "ping"}
        if text.strip() == "ping" or text.replace(" ", "") == '{"type":"ping"}':
            sub.offer_control(_message("pong", {}))
        else:
            error = {"code": "INVALID_MESSAGE", "message": 'send "ping" or {"type": "ping"}'}
            sub.offer_control(_message("error", error))


async def _deliver(websocket: WebSocket, sub: Subscriber) -> None:
    while True:
        item = await sub.queue.get()
        _channel, _seq, message = item  # type: ignore[misc]
        await websocket.send_text(message.decode())


async def dashboard_ws(websocket: WebSocket, ctx: ApiContext) -> None:
    admitted = await admit(websocket, ctx)
    if admitted is None:
        return
    _, slot = admitted
    sub = Subscriber(render_dashboard, ctx.config.api.ws_send_queue)
    sub.channels.update(LIVE_CHANNELS)
    sub.channels.add(PNL)
    client_id = uuid.uuid4().hex
    async with hub_session(websocket, ctx, sub, slot):
        hello = {"client_id": client_id, "heartbeat_s": ctx.config.api.ws_heartbeat_s}
        sub.offer_control(_message("connected", hello))
        tasks = [
            asyncio.create_task(_receive(websocket, sub)),
            asyncio.create_task(_deliver(websocket, sub)),
            asyncio.create_task(_heartbeat(sub, ctx.config.api.ws_heartbeat_s)),
        ]
        await run_session(websocket, sub, tasks)
