"""``GET /trading/status`` answered from memory, before the framework, when nothing needs it.

The endpoint is what dashboards and load balancers poll. Its usual request needs no
routing, no dependency solving and no encoding: a token verified before, a rate-limit
token this process already holds, and the engine state in the cache, whose response body
is encoded once per engine flush. This middleware answers exactly those requests, with
the bytes and headers the route would send; every other request (first use of a token, a
query string, a browser's ``Origin``, a lease to renew, an unavailable engine, any error)
goes to the route unchanged, so there is one definition of every refusal.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from flashmm.api._context import ApiContext
from flashmm.api._trading import STATUS_BODY, status_body

__all__ = ["FAST_PATH", "CachedStatusMiddleware"]

FAST_PATH: Final = "/trading/status"


class CachedStatusMiddleware:
    """Serves the plain ``GET /trading/status`` from the state cache; passes all else on."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._body(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _body(self, scope: Scope) -> bytes | None:
        """The response body if this request can be answered here, else None."""
        if scope["path"] != FAST_PATH or scope["method"] != "GET" or scope["query_string"]:
            return None
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"origin":
                return None  # CORS answers browsers
            if name == b"authorization":
                authorization = value
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        ctx = self.ctx
        principal = ctx.verifier.known(token.strip())
        if principal is None or not principal.allows("read"):
            return None
        read = ctx.state.peek()
        if read is None or read.state is None:
            return None
        view = ctx.state.view(read)
        state = view.state
        if not view.available or state is None:
            return None
        client = scope["client"][0] if scope.get("client") else "unknown"
        # counted last, and only when this answer is certain: the route counts the others
        if not ctx.limiter.take_held("trading", client):
            return None
        return read.derived(STATUS_BODY, lambda: status_body(state, read.snapshots))
