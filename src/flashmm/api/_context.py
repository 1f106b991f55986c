"""What every route shares (Redis, readers, limiters...) and the dependencies that guard them."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import redis.asyncio as aioredis
from fastapi import Depends, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.requests import HTTPConnection

from flashmm.api._audit import AuditLog
from flashmm.api._auth import Principal, Scope, TokenVerifier
from flashmm.api._cache import StateCache
from flashmm.api._clock import now_ns
from flashmm.api._commands import CommandSender
from flashmm.api._errors import ApiError
from flashmm.api._hub import Hub
from flashmm.api._ratelimit import Group, RateLimiter, WsSlots
from flashmm.api._state import StateReader
from flashmm.config import EngineConfig
from flashmm.state.keys import Keys

__all__ = [
    "ApiContext",
    "Ctx",
    "bearer",
    "client_address",
    "get_context",
    "guard",
    "request_id",
]

REDIS_MAX_CONNECTIONS: Final = 32
"""Connections to Redis per sidecar process; requests beyond wait for one (see below)."""
REDIS_POOL_TIMEOUT_S: Final = 5.0
"""How long a request waits for a free connection before it fails as a Redis error."""


def redis_client(redis_url: str) -> aioredis.Redis:
    """The process's one Redis client: a bounded pool that makes callers wait for a free
    connection instead of failing (a burst of WebSocket clients borrows them in turn)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_POOL_TIMEOUT_S,
        # a pool's connections get no retry by default: after a Redis restart each idle
        # one would fail its next command; one immediate retry reconnects it, and a server
        # that is really down still fails at once (connection refused twice)
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis(connection_pool=pool)


class ApiContext:
    """The sidecar's long-lived parts, built once per app."""

    def __init__(self, config: EngineConfig, redis_url: str) -> None:
        self.config = config
        self.redis_url = redis_url
        self.keys = Keys(prefix=config.state.prefix)
        api = config.api
        self.verifier = TokenVerifier(api.jwt_secret, api.jwt_algorithm)
        self.redis = redis_client(redis_url)
        self.limiter = RateLimiter(self.redis, self.keys.rate_limit_prefix(), api.rate_limits)
        self.reader = StateReader(self.redis, self.keys, config.state.heartbeat_timeout_s)
        self.state = StateCache(self.reader)
        self.commands = CommandSender(self.redis, self.keys, api.command_timeout_s)
        self.audit = AuditLog(self.redis, self.keys)
        self.ws_slots = WsSlots(self.redis, self.keys.rate_limit_prefix(), api.ws_max_per_ip)
        self.hub = Hub(self.redis, self.reader, self.state)
        self.started_ns = now_ns()

    async def start(self) -> None:
        """Read the engine state once, so the first request is served from memory."""
        await self.state.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.state.close()
        await self.ws_slots.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose(close_connection_pool=True)


def get_context(conn: HTTPConnection) -> ApiContext:
    return conn.app.state.flashmm  # type: ignore[no-any-return]


async def _context(conn: HTTPConnection) -> ApiContext:
    # async on purpose: FastAPI runs a plain def dependency in a thread, a hop per request
    return conn.app.state.flashmm  # type: ignore[no-any-return]


Ctx = Annotated[ApiContext, Depends(_context)]


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else "unknown"


def request_id(conn: HTTPConnection) -> str:
    return str(conn.scope.get("state", {}).get("request_id", ""))


bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A token from `flashmm token --scope read|admin` (HS256, one hour).",
)


def _query_names(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


def _refuse_unknown_query(request: Request) -> None:
    """400 for a query parameter the endpoint does not take: a typo must not go unnoticed."""
    if not request.scope.get("query_string"):
        return  # the common case, and nothing to check
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(
            400,
            "INVALID_REQUEST",
            f"unknown query parameter(s): {', '.join(unknown)}; this endpoint takes "
            f"{', '.join(sorted(known)) or 'none'}",
            {"fields": [{"field": f"query.{name}", "message": "unknown"} for name in unknown]},
        )


def guard(group: Group, scope: Scope | None) -> Callable[..., Awaitable[Principal | None]]:
    """A dependency: count the request in ``group``'s rate limit, then demand ``scope``.

    The rate limit comes first so that requests without a valid token are limited too.
    The principal is kept on ``request.state`` for the audit of refused admin requests.
    """

    if scope is None:

        async def open_dependency(request: Request) -> Principal | None:
            await get_context(request).limiter.hit(group, client_address(request))
            _refuse_unknown_query(request)
            return None

        return open_dependency

    async def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    ) -> Principal | None:
        # ``_credentials`` only declares the scheme in the OpenAPI document; the header is
        # read here so that a missing or malformed one gets the API's own 401
        ctx = get_context(request)
        await ctx.limiter.hit(group, client_address(request))
        principal = ctx.verifier.from_header(request.headers.get("authorization"))
        request.state.principal = principal
        ctx.verifier.require(principal, scope)
        _refuse_unknown_query(request)
        return principal

    return dependency
