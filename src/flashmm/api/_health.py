"""``/health`` and ``/health/detailed``: how each part of the system is doing right now."""

from __future__ import annotations

import os
from typing import Annotated

import msgspec
import psutil
import redis.exceptions
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from flashmm import __version__
from flashmm.api._clock import now_ns, rfc3339, rfc3339_now
from flashmm.api._context import ApiContext, Ctx, guard
from flashmm.api._models import (
    ComponentHealth,
    DetailedComponents,
    DetailedHealth,
    EngineHealth,
    FeedHealth,
    HealthResponse,
    ModelHealth,
    RedisHealth,
    SystemLoad,
    error_responses,
)
from flashmm.api._state import EngineView
from flashmm.state.schema import MarketSnapshot

__all__ = ["Assessment", "assess", "router"]

_MODEL_QUIET_S = 5.0
"""A model without a prediction for longer than this (and ten horizons) is degraded."""


class Assessment(msgspec.Struct, kw_only=True):
    view: EngineView
    snapshots: dict[str, MarketSnapshot]
    redis_latency_ms: float | None
    components: dict[str, ComponentHealth]
    status: ComponentHealth


def _engine_health(view: EngineView) -> ComponentHealth:
    if not view.available or view.state is None:
        return "unhealthy"
    return {
        "active": "healthy",
        "starting": "degraded",
        "reducing": "degraded",
        "paused": "degraded",
    }.get(view.state.status, "unhealthy")  # type: ignore[return-value]


def _feed_health(view: EngineView, snapshots: dict[str, MarketSnapshot]) -> ComponentHealth:
    if view.state is None or not view.available:
        return "unknown"
    live = sum(s.feed == "live" for s in snapshots.values())
    if snapshots and live == len(view.state.markets):
        return "healthy"
    return "degraded" if live else "unhealthy"


def _model_health(view: EngineView) -> ComponentHealth:
    if view.state is None or not view.available:
        return "unknown"
    model = view.state.model
    if model.last_prediction_ns is None:
        return "degraded"
    quiet_s = (now_ns() - model.last_prediction_ns) / 1e9
    limit = max(_MODEL_QUIET_S, 10 * model.horizon_ms / 1000)
    return "healthy" if quiet_s <= limit else "degraded"


async def assess(ctx: ApiContext) -> Assessment:
    """Judge Redis, the engine and its markets from the latest cached read; never raises
    for an outage. Redis's latency is that of the read (one round trip, under 0.1 s old)."""
    try:
        read = await ctx.state.current()
        latency: float | None = read.latency_ms
        view = ctx.state.view(read)
        snapshots = read.snapshots
    except redis.exceptions.RedisError as exc:
        latency = None
        view = EngineView(
            state=None,
            available=False,
            reason=f"Redis does not answer ({type(exc).__name__})",
            heartbeat_age_s=None,
        )
        snapshots = {}
    components: dict[str, ComponentHealth] = {
        "redis": "healthy" if latency is not None else "unhealthy",
        "websocket": _feed_health(view, snapshots),
        "ml_model": _model_health(view),
        "trading_engine": _engine_health(view),
    }
    if "unhealthy" in (components["redis"], components["trading_engine"]):
        status: ComponentHealth = "unhealthy"
    elif all(c == "healthy" for c in components.values()):
        status = "healthy"
    else:
        status = "degraded"
    return Assessment(
        view=view,
        snapshots=snapshots,
        redis_latency_ms=latency,
        components=components,
        status=status,
    )


router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={
        503: {"model": HealthResponse, "description": "Unhealthy: same body, status 503."},
        **error_responses(429),
    },
    dependencies=[Depends(guard("health", None))],
    summary="System health (no token needed)",
)
async def health(ctx: Ctx) -> JSONResponse | HealthResponse:
    """Healthy, degraded or unhealthy; 503 when unhealthy (Redis or the engine down, or
    the engine halted), so a load balancer can act on the status code alone."""
    a = await assess(ctx)
    state = a.view.state
    body = HealthResponse(
        status=a.status,
        timestamp=rfc3339_now(),
        version=__version__,
        components=a.components,
        uptime_seconds=(
            int((now_ns() - state.started_ns) / 1e9)
            if state is not None and a.view.available
            else None
        ),
    )
    if a.status == "unhealthy":
        return JSONResponse(body.model_dump(), status_code=503)
    return body


ReadAccess = Annotated[object, Depends(guard("health", "read"))]


@router.get(
    "/health/detailed",
    response_model=DetailedHealth,
    responses=error_responses(401, 403, 429, 503),
    summary="Component health with host load, feed, model and engine details",
)
async def health_detailed(ctx: Ctx, _: ReadAccess) -> DetailedHealth:
    a = await assess(ctx)
    view, state = a.view, a.view.state
    last_message = max((s.ts_ns for s in a.snapshots.values()), default=None)
    confidences = [s.inputs.confidence for s in a.snapshots.values() if s.inputs is not None]
    model = state.model if state is not None else None
    run_dir = ctx.config.state.run_dir
    return DetailedHealth(
        status=a.status,
        timestamp=rfc3339_now(),
        system=SystemLoad(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            disk_percent=psutil.disk_usage(run_dir if os.path.isdir(run_dir) else ".").percent,
            network_latency_ms=a.redis_latency_ms,
        ),
        components=DetailedComponents(
            redis=RedisHealth(status=a.components["redis"], latency_ms=a.redis_latency_ms),
            websocket=FeedHealth(
                status=a.components["websocket"],
                last_message=rfc3339(last_message),
                messages_per_second=None,
                latency_ms=None,
                markets={s: snap.feed for s, snap in a.snapshots.items()},
            ),
            ml_model=ModelHealth(
                status=a.components["ml_model"],
                last_prediction=rfc3339(model.last_prediction_ns) if model else None,
                predictions_per_second=model.predictions_per_second if model else None,
                inference_time_ms=model.inference_time_ms if model else None,
                model_confidence=sum(confidences) / len(confidences) if confidences else None,
                version=model.version if model else None,
                accuracy=model.accuracy if model else None,
            ),
            trading_engine=EngineHealth(
                status=state.status if state is not None and view.available else "unavailable",
                health=a.components["trading_engine"],
                reason=view.reason,
                orders_placed=state.counters.orders_placed if state else None,
                orders_filled=state.counters.orders_filled if state else None,
                last_order=rfc3339(state.counters.last_order_ns) if state else None,
                heartbeat_age_s=view.heartbeat_age_s,
                risk_state=state.risk.state if state else None,
                version=state.version if state else None,
            ),
        ),
    )
