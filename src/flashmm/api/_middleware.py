"""ASGI middleware: request ids, request size limit, and the last-resort 500 answer."""

from __future__ import annotations

import logging
import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashmm.api._errors import ApiError, error_response

__all__ = ["RequestContextMiddleware"]

log = logging.getLogger("flashmm.api")

_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _new_request_id() -> str:
    # unique, not secret: 128 bits of the fast PRNG instead of uuid4's system call
    return f"req_{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    """Gives each request an id (the client's ``X-Request-ID`` if sane), echoes it in
    ``X-Request-ID``, refuses bodies over ``max_body_bytes`` with 413, and answers an
    unexpected exception with a 500 in the API's error format instead of a bare page."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _CLIENT_ID.fullmatch(given) else _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # raised inside the route's body read, so the error handlers (and the
                    # audit of admin requests) see it like any other refusal
                    raise ApiError(
                        413,
                        "BODY_TOO_LARGE",
                        f"the request body exceeds {self.max_body_bytes} bytes "
                        "(api.max_body_bytes)",
                        {"max_body_bytes": self.max_body_bytes},
                    )
            return message

        try:
            await self.app(scope, counting_receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for an error body: the connection drops
            response = error_response(
                500,
                "INTERNAL_ERROR",
                "the API failed unexpectedly; the request id is in the log",
                request_id,
            )
            await response(scope, receive, send_with_id)
