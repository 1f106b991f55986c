"""Request rate limits and WebSocket connection slots, shared through Redis.

Counters live in Redis so that several sidecar processes behind one proxy enforce one
budget per client address. Requests use ``limits``' moving window; WebSocket slots are a
sorted set per address whose members are leases that the owning process keeps renewing,
so a crashed process's slots free themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import Literal

import limits
import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from flashmm.api._errors import ApiError
from flashmm.config import RateLimitSection

__all__ = ["Group", "InvalidRateLimit", "RateLimiter", "WsSlots"]

log = logging.getLogger("flashmm.api")

Group = Literal["health", "trading", "metrics", "admin"]
GROUPS: tuple[Group, ...] = ("health", "trading", "metrics", "admin")


class InvalidRateLimit(ValueError):
    """A rate limit setting that ``limits`` cannot parse."""


def _async_storage_uri(redis_url: str) -> str:
    # limits picks its async Redis backend from the "async+" scheme prefix
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


class RateLimiter:
    """One moving-window limit per endpoint group and client address."""

    def __init__(self, redis_url: str, key_prefix: str, settings: RateLimitSection) -> None:
        self._items: dict[Group, limits.RateLimitItem] = {}
        for group in GROUPS:
            text = getattr(settings, group)
            try:
                self._items[group] = limits.parse(text)
            except ValueError:
                raise InvalidRateLimit(
                    f"api.rate_limits.{group}: {text!r} is not a rate limit; write it like "
                    "'60/minute' or '10 per second'"
                ) from None
        self._storage = RedisStorage(
            _async_storage_uri(redis_url), implementation="redispy", key_prefix=key_prefix
        )
        self._limiter = MovingWindowRateLimiter(self._storage)

    def describe(self, group: Group) -> str:
        return str(self._items[group])

    async def hit(self, group: Group, client: str) -> None:
        """Count one request; 429 with ``Retry-After`` once the group's budget is spent."""
        item = self._items[group]
        if await self._limiter.hit(item, group, client):
            return
        stats = await self._limiter.get_window_stats(item, group, client)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"too many {group} requests from {client}: the limit is {item}; "
            f"retry in {retry_after} s",
            {"group": group, "limit": str(item), "retry_after_s": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


# KEYS[1]: the address's sorted set; ARGV: now, lease expiry, max, member.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000))
return 1
"""


class WsSlots:
    """At most ``max_per_ip`` WebSocket connections per client address, across processes."""

    def __init__(
        self, redis: aioredis.Redis, key_prefix: str, max_per_ip: int, lease_s: float = 60.0
    ) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}:ws"
        self.max_per_ip = max_per_ip
        self._lease_s = lease_s
        self._acquire = redis.register_script(_ACQUIRE)
        self._held: dict[str, str] = {}  # member -> address
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, client: str) -> str:
        return f"{self._prefix}:{client}"

    async def acquire(self, client: str) -> str | None:
        """A slot id for ``client``, or None when it already has ``max_per_ip``."""
        member = uuid.uuid4().hex
        now = time.time()
        got = await self._acquire(
            keys=[self._key(client)], args=[now, now + self._lease_s, self.max_per_ip, member]
        )
        if not got:
            return None
        self._held[member] = client
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew(), name="flashmm-ws-slot-renewer")
        return member

    async def release(self, member: str) -> None:
        client = self._held.pop(member, None)
        if client is not None:
            await self._redis.zrem(self._key(client), member)

    async def _renew(self) -> None:
        # renew at a third of the lease so one slow round trip cannot let a live slot expire
        while self._held:
            await asyncio.sleep(self._lease_s / 3)
            expiry = time.time() + self._lease_s
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for member, client in list(self._held.items()):
                        pipe.zadd(self._key(client), {member: expiry}, xx=True)
                    await pipe.execute()
            except Exception as exc:  # Redis away: retry at the next round
                log.warning("could not renew WebSocket slots: %r", exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for member in list(self._held):
            with contextlib.suppress(Exception):
                await self.release(member)
