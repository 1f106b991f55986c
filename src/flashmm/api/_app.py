"""``create_app``: the sidecar's FastAPI application, wired from the engine's settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.middleware.cors import CORSMiddleware

from flashmm import __version__
from flashmm.api import _admin, _dashboard, _health, _live, _metrics, _trading
from flashmm.api._context import ApiContext, get_context
from flashmm.api._errors import install_error_handlers
from flashmm.api._fastpath import CachedStatusMiddleware
from flashmm.api._middleware import RequestContextMiddleware
from flashmm.config import EngineConfig

__all__ = ["create_app"]

_DESCRIPTION = """\
The FlashMM sidecar: the engine's state, its metrics, and admin control.

Every endpoint but `/health` needs `Authorization: Bearer <JWT>` (`flashmm token`); admin
endpoints need the `admin` scope. Errors answer `{"error": {"code", "message", "details",
"timestamp", "request_id"}}`. Rate limits per client address: health, trading, metrics and
admin groups (429 with `Retry-After`).

WebSockets (token in `Authorization` or `?token=`): `/ws/live-metrics` (subscribe to
`trading`, `positions`, `predictions`, `orders`, `fills`, `alerts`, with sequence numbers
and resume) and `/ws/dashboard` (the dashboard's typed events).
"""


def create_app(config: EngineConfig, redis_url: str) -> FastAPI:
    """The app for ``config`` reading Redis at ``redis_url``.

    Raises :class:`~flashmm.api.InsecureSecret` without a usable JWT secret and
    :class:`~flashmm.api.InvalidRateLimit` for a rate limit ``limits`` cannot read.
    """
    ctx = ApiContext(config, redis_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        try:
            yield
        finally:
            await ctx.close()

    app = FastAPI(
        title="FlashMM API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.flashmm = ctx
    install_error_handlers(app, on_error=_admin.audit_error)
    for module in (_health, _trading, _metrics, _admin, _dashboard):
        app.include_router(module.router)

    @app.websocket("/ws/live-metrics")
    async def live_metrics(websocket: WebSocket) -> None:
        await _live.live_metrics(websocket, get_context(websocket))

    @app.websocket("/ws/dashboard")
    async def dashboard(websocket: WebSocket) -> None:
        await _dashboard.dashboard_ws(websocket, get_context(websocket))

    def openapi() -> dict[str, Any]:
        # validation errors answer 400 (declared per route), never FastAPI's default 422
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            # the markets are settings, known only now: the document names them
            for parameter in schema["paths"]["/trading/why"]["get"]["parameters"]:
                if parameter["name"] == "symbol":
                    parameter["schema"]["enum"] = [m.market_id for m in config.enabled_markets]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    # added last = runs first: ids and size limits wrap everything, CORS included
    app.add_middleware(
        CORSMiddleware,
        allow_origins=config.api.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
    # the polled status answered from memory, inside the request id, before CORS and routing
    app.add_middleware(CachedStatusMiddleware, ctx=ctx)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.api.max_body_bytes)
    return app
