"""The API's error body, and the handlers that turn every failure into it.

Every error answers ``{"error": {"code", "message", "details", "timestamp", "request_id"}}``
(the specification's format), whatever raised it: our own :class:`ApiError`, Starlette's
404/405, a request that fails validation (400, not FastAPI's 422), or a Redis outage (503).
A WebSocket cannot take an HTTP answer: an error there closes it with code 1011 and the
message as the reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocket

from flashmm.api._clock import rfc3339_now

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "REDIS_UNAVAILABLE",
    "ApiError",
    "ErrorHook",
    "close_websocket",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("flashmm.api")

_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
    504: "ENGINE_TIMEOUT",
}


CLOSE_INTERNAL_ERROR = 1011
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
REDIS_UNAVAILABLE = (
    "the state store (Redis) does not answer; the engine keeps trading without it, "
    "retry once it is back"
)


async def close_websocket(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with ``code`` and ``reason`` cut to what a close frame can carry."""
    reason_bytes = reason.encode()[:_MAX_REASON_BYTES]
    await websocket.close(code=code, reason=reason_bytes.decode(errors="ignore"))


class ApiError(StarletteHTTPException):
    """An error with a machine-readable code; raised anywhere, answered in the spec's format.

    A subclass of Starlette's HTTPException so that FastAPI lets it through body parsing
    untouched (it turns any other exception raised there into a generic 400).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, dict(headers) if headers else None)
        self.code = code
        self.message = message
        self.details = dict(details or {})


ErrorHook = Callable[[Request, int, str, str], Awaitable[None]]
"""Called after an error answer is built: ``(request, status, code, message)``."""


def error_response(
    status_code: int,
    code: str,
    message: str,
    request_id: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": dict(details or {}),
            "timestamp": rfc3339_now(),
            "request_id": request_id,
        }
    }
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def _field(loc: tuple[int | str, ...]) -> str:
    # ("query", "limit") -> "query.limit"; ("body", "duration_seconds") -> "body.duration_seconds"
    return ".".join(str(part) for part in loc)


async def _close_failed(websocket: WebSocket, reason: str) -> None:
    with contextlib.suppress(Exception):  # already closed, or the client is gone
        await close_websocket(websocket, CLOSE_INTERNAL_ERROR, reason)


def install_error_handlers(app: FastAPI, on_error: ErrorHook | None = None) -> None:
    """Answer every error of ``app`` in the spec's format; ``on_error`` sees each one."""

    async def respond(
        request: Request,
        status_code: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONResponse:
        if on_error is not None:
            await on_error(request, status_code, code, message)
        return error_response(status_code, code, message, _request_id(request), details, headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse | None:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(request, WebSocket):
            await _close_failed(request, f"{type(exc).__name__}: {exc.detail}")
            return None
        if isinstance(exc, ApiError):
            return await respond(
                request, exc.status_code, exc.code, exc.message, exc.details, exc.headers
            )
        code = _CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.url.path} does not accept {request.method}"
        return await respond(request, exc.status_code, code, message, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = [
            {
                "field": _field(tuple(e.get("loc", ()))),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        names = ", ".join(f["field"] for f in fields)
        return await respond(
            request, 400, "INVALID_REQUEST", f"invalid request: {names}", {"fields": fields}
        )

    async def redis_error(request: Request, exc: Exception) -> JSONResponse | None:
        log.warning("redis error on %s: %r", request.url.path, exc)
        if isinstance(request, WebSocket):
            await _close_failed(request, f"REDIS_UNAVAILABLE: {REDIS_UNAVAILABLE}")
            return None
        return await respond(
            request, 503, "REDIS_UNAVAILABLE", REDIS_UNAVAILABLE, {"reason": type(exc).__name__}
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(redis.exceptions.RedisError, redis_error)
