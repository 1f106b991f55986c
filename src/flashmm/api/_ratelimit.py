"""Request rate limits and WebSocket connection slots, shared through Redis.

Counters live in Redis so that several sidecar processes behind one proxy enforce one
budget per client address. Requests count in fixed windows; to keep Redis off most
requests' path, a process takes a client's tokens from the shared count in leases (see
:func:`lease_size`). WebSocket slots are a sorted set per address whose members are leases
that the owning process keeps renewing, so a crashed process's slots free themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import Final, Literal

import limits
import redis.asyncio as aioredis

from flashmm.api._errors import ApiError
from flashmm.config import RateLimitSection

__all__ = [
    "LEASE_MAX",
    "LEASE_SHARE",
    "Group",
    "InvalidRateLimit",
    "RateLimiter",
    "WsSlots",
    "lease_size",
]

log = logging.getLogger("flashmm.api")

Group = Literal["health", "trading", "metrics", "admin"]
GROUPS: tuple[Group, ...] = ("health", "trading", "metrics", "admin")

LEASE_SHARE: Final = 100
"""A lease is at most this fraction (1/LEASE_SHARE) of a window's limit..."""
LEASE_MAX: Final = 100
"""...and at most this many tokens."""
_MAX_LEASES: Final = 10_000
"""Client leases a process keeps; beyond it, expired ones go, then all (never too many)."""

# KEYS[1]: one window's counter; ARGV: tokens wanted, limit, ms until the key may go.
# Returns the tokens granted: all wanted, what is left of the limit, or 0.
_LEASE = """
local wanted = tonumber(ARGV[1])
local used = redis.call('INCRBY', KEYS[1], wanted)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return math.max(0, math.min(wanted, tonumber(ARGV[2]) - used + wanted))
"""


class InvalidRateLimit(ValueError):
    """A rate limit setting that ``limits`` cannot parse."""


def lease_size(limit: int) -> int:
    """Tokens a process takes from Redis at a time for a limit of ``limit`` per window.

    Limits under ``2 * LEASE_SHARE`` lease one token at a time, so they are exact across
    processes; larger ones trade up to ``lease - 1`` unused tokens per process (refused
    early, never admitted beyond the limit) for one Redis round trip per lease.
    """
    return max(1, min(LEASE_MAX, limit // LEASE_SHARE))


class _Lease:
    """What this process holds of one client's budget in one window."""

    __slots__ = ("ends", "exhausted", "left", "lock", "window")

    def __init__(self, window: int, ends: float) -> None:
        self.window = window
        self.ends = ends
        self.left = 0
        self.exhausted = False
        """Redis has no tokens left in this window: refuse without asking it again."""
        self.lock = asyncio.Lock()


class RateLimiter:
    """One fixed-window limit per endpoint group and client address, counted in Redis."""

    def __init__(self, redis: aioredis.Redis, key_prefix: str, settings: RateLimitSection) -> None:
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
        self._prefix = key_prefix
        self._lease_script = redis.register_script(_LEASE)
        self._leases: dict[tuple[Group, str], _Lease] = {}

    def take_held(self, group: Group, client: str) -> bool:
        """Count one request if this process holds a token for it; False (nothing counted)
        when answering would need Redis or a refusal."""
        lease = self._current(group, client, time.time())
        if lease.left == 0:
            return False
        lease.left -= 1
        return True

    async def hit(self, group: Group, client: str) -> None:
        """Count one request; 429 with ``Retry-After`` once the group's budget is spent."""
        now = time.time()
        lease = self._current(group, client, now)
        if lease.left == 0 and not lease.exhausted:
            async with lease.lock:  # one lease at a time; the others wait and share it
                if lease.left == 0 and not lease.exhausted:
                    await self._take(group, client, lease, now)
        if lease.left > 0:
            lease.left -= 1
            return
        item = self._items[group]
        retry_after = max(1, math.ceil(lease.ends - now))
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"too many {group} requests from {client}: the limit is {item}; "
            f"retry in {retry_after} s",
            {"group": group, "limit": str(item), "retry_after_s": retry_after},
            headers={"Retry-After": str(retry_after)},
        )

    def _current(self, group: Group, client: str, now: float) -> _Lease:
        window_s = self._items[group].get_expiry()
        window = int(now // window_s)
        lease = self._leases.get((group, client))
        if lease is None or lease.window != window:
            if len(self._leases) >= _MAX_LEASES:
                self._prune(now)
            lease = self._leases[(group, client)] = _Lease(window, (window + 1) * window_s)
        return lease

    async def _take(self, group: Group, client: str, lease: _Lease, now: float) -> None:
        item = self._items[group]
        wanted = lease_size(item.amount)
        key = f"{self._prefix}:{group}:{client}:{lease.window}"
        keep_ms = math.ceil((lease.ends - now) * 1000) + 1000
        granted = int(await self._lease_script(keys=[key], args=[wanted, item.amount, keep_ms]))
        lease.left += granted
        lease.exhausted = granted < wanted

    def _prune(self, now: float) -> None:
        self._leases = {k: v for k, v in self._leases.items() if v.ends > now}
        if len(self._leases) >= _MAX_LEASES:
            self._leases.clear()  # unused tokens are lost: clients are refused early, not late


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
