"""Admission of a WebSocket client: token, origin, and the per-address connection cap.

The socket is accepted first so that a refusal can carry a close code and a reason a
browser can read (a refused handshake is only an opaque HTTP 403 to it).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis.exceptions
from fastapi import WebSocket

from flashmm.api._auth import Principal
from flashmm.api._context import ApiContext, client_address
from flashmm.api._errors import (
    CLOSE_INTERNAL_ERROR,
    REDIS_UNAVAILABLE,
    ApiError,
    close_websocket,
)

__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_UNAUTHORIZED",
    "admit",
    "failure_reason",
]

log = logging.getLogger("flashmm.api")

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


def failure_reason(exc: BaseException) -> str:
    """The close reason of a session that failed with ``exc``."""
    if isinstance(exc, redis.exceptions.RedisError):
        return f"REDIS_UNAVAILABLE: {REDIS_UNAVAILABLE}"
    return f"server error: {type(exc).__name__}; reconnect"


def _origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None or origin in allowed:
        return True  # not a browser, or a configured origin
    return urlsplit(origin).netloc == websocket.headers.get("host")


async def admit(websocket: WebSocket, ctx: ApiContext) -> tuple[Principal, str] | None:
    """``(principal, slot)`` of an admitted client, or None after closing it with why."""
    await websocket.accept()
    token = websocket.query_params.get("token")
    try:
        if token:
            principal = ctx.verifier.verify(token)
        else:
            principal = ctx.verifier.from_header(websocket.headers.get("authorization"))
        ctx.verifier.require(principal, "read")
    except ApiError as exc:
        code = CLOSE_UNAUTHORIZED if exc.status_code == 401 else CLOSE_FORBIDDEN
        await close_websocket(websocket, code, f"{exc.code}: {exc.message}")
        return None
    if not _origin_allowed(websocket, ctx.config.api.cors_origins):
        await close_websocket(
            websocket, CLOSE_FORBIDDEN, "ORIGIN_NOT_ALLOWED: add it to api.cors_origins"
        )
        return None
    client = client_address(websocket)
    try:
        slot = await ctx.ws_slots.acquire(client)
    except redis.exceptions.RedisError as exc:
        log.warning("WebSocket refused, Redis does not answer: %r", exc)
        await close_websocket(websocket, CLOSE_INTERNAL_ERROR, failure_reason(exc))
        return None
    if slot is None:
        await close_websocket(
            websocket,
            CLOSE_TRY_AGAIN_LATER,
            f"TOO_MANY_CONNECTIONS: at most {ctx.ws_slots.max_per_ip} per address",
        )
        return None
    return principal, slot
